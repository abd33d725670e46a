package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestSecretsFilesystem: a sealed secret delivered as an ordinary file (as a
// Kubernetes Secret volume would be) is unsealed by cocoond through the KBS
// and read by a container that bind-mounts the secrets directory; KBS
// resources are files too; forged and unknown-key secrets give EIO; and the
// plaintext never reaches cocoond's log or its root directory.
func TestSecretsFilesystem(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	secret := "db-password-" + randomToken(t)
	resource := "api-token-" + randomToken(t)
	signKID := "kbs:///default/signing/jwk"
	priv, pub, err := harness.NewSigningJWK(signKID)
	if err != nil {
		t.Fatal(err)
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy: harness.AllowAllPolicy,
		Resources: map[string][]byte{
			"default/signing/jwk": pub,
			"default/secret/db":   []byte(secret),
			"default/token/api":   []byte(resource),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	jwkPath := env.Path("signing.jwk")
	if err := os.WriteFile(jwkPath, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	seal := func(uri string) string {
		out, err := exec.CommandContext(ctx, cocoonctl, "secret", "seal", "vault", "--resource-uri", uri,
			"--signing-kid", signKID, "--signing-jwk-path", jwkPath).Output()
		if err != nil {
			t.Fatalf("cocoonctl secret seal: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	sealed := seal("kbs:///default/secret/db")
	if !strings.HasPrefix(sealed, "sealed.") || strings.Contains(sealed, secret) {
		t.Fatalf("sealed secret %q", sealed)
	}
	// A forged one: the payload names another resource, the signature is
	// the original's.
	parts := strings.Split(sealed, ".")
	other := strings.Split(seal("kbs:///default/token/api"), ".")
	forged := strings.Join([]string{parts[0], parts[1], other[2], parts[3]}, ".")
	unknownKID := strings.Split(seal("kbs:///default/secret/db"), ".")
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": "kbs:///default/signing/absent"})
	unknown := strings.Join([]string{"sealed", base64.RawURLEncoding.EncodeToString(hdr), unknownKID[2], unknownKID[3]}, ".")

	src := env.Path("secret-volume")
	if err := os.MkdirAll(src, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"password": sealed, "forged": forged, "unknown-kid": unknown, "plain.txt": "not a secret\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mnt := env.Path("secrets")
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		LogLevel:           "debug",
		ExtraArgs:          []string{"--kbs-url", kbs.URL, "--tee", "sample", "--secrets-mount", mnt, "--secrets-source", "app=" + src},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { _, err := os.Stat(filepath.Join(mnt, "app", "plain.txt")); return err == nil })

	// From the host side of the TEE (the workload's view comes next).
	if b, err := os.ReadFile(filepath.Join(mnt, "kbs", "default", "token", "api")); err != nil || string(b) != resource {
		t.Errorf("kbs/default/token/api = %q, %v", b, err)
	}
	for _, name := range []string{"forged", "unknown-kid"} {
		_, err := os.ReadFile(filepath.Join(mnt, "app", name))
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: error %v, want EIO", name, err)
		}
	}

	ctrd := startContainerdFor(t, ctx, env, cd)
	im, _ := pushTwoLayerImage(t, ctx, env, reg, "e2e/secrets", imageOptions{})
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref); err != nil {
		t.Fatal(err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon",
		"--mount", "type=bind,src="+filepath.Join(mnt, "app")+",dst=/secrets,options=rbind:ro",
		im.Ref, containerID(t, "secrets"), "/bin/sh", "-c", "cat /secrets/password; echo; cat /secrets/plain.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, secret) || !strings.Contains(out, "not a secret") {
		t.Errorf("container read %q, want the unsealed secret and the plain file", out)
	}

	// No plaintext in cocoond's log or under its root.
	for _, p := range []string{secret, resource} {
		if strings.Contains(cd.Proc.Log(), p) {
			t.Errorf("cocoond's log contains a secret value")
		}
		err := filepath.WalkDir(cd.Root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			b, _ := os.ReadFile(path)
			if bytes.Contains(b, []byte(p)) {
				t.Errorf("%s under cocoond's root holds a secret value", path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, limit time.Duration, ok func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
