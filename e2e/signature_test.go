package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestImageSignatures signs images with the real tools (cosign v2, cosign
// v3, gpg + skopeo simple signing), serves the public keys from cocoon-kbs
// and checks `cocoonctl image verify` (image/signature) against image-rs'
// verdicts and messages.
func TestImageSignatures(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	for _, tool := range []string{env.Tool("cosign"), env.Tool("cosign3"), "/usr/bin/skopeo", "/usr/bin/gpg"} {
		if _, err := os.Stat(tool); err != nil {
			t.Fatalf("%s missing (run `make e2e-tools`): %v", tool, err)
		}
	}
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := newSigner(t, ctx, env, reg)

	// Keys made by the test.
	cosignPub := s.cosignKey("good")
	s.cosignKey("other")
	fpr, gpgPub := s.gpgKey()

	// Images.
	v2 := s.push("coco/signed-v2")
	s.cosign("cosign", "good", v2)
	v3 := s.push("coco/signed-v3")
	s.cosign("cosign3", "good", v3)
	wrong := s.push("coco/wrong-key")
	s.cosign("cosign", "other", wrong)
	unsigned := s.push("coco/unsigned")
	// Tampered: the signature of one image stored as the signature of
	// another image of the same repository.
	original := s.pushTag("coco/tampered", "v1")
	s.cosign("cosign", "good", original)
	tampered := s.pushTag("coco/tampered", "v2")
	if _, err := reg.Crane(ctx, "tag", reg.Host+"/coco/tampered:"+sigTag(original.ManifestDigest), sigTag(tampered.ManifestDigest)); err != nil {
		t.Fatal(err)
	}
	gpgSigned, lookaside := s.skopeoSign(fpr, "coco/gpg")

	// Public keys served by cocoon-kbs; the policies name them kbs:///.
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{"default/cosign-key/good": cosignPub, "default/gpg-key/pubring": gpgPub},
	})
	if err != nil {
		t.Fatal(err)
	}

	policies := map[string]string{
		"cosign": fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/good","signedIdentity":{"type":"matchRepository"}}]}}}`, reg.Host+"/coco"),
		"gpg":    fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/gpg-key/pubring"}]}}}`, reg.Host+"/coco"),
		"reject": `{"default":[{"type":"reject"}],"transports":{}}`,
		"accept": `{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}`,
	}
	sigstoreConfig := s.write("sigstore.yaml", fmt.Sprintf("docker:\n  %s:\n    sigstore: file://%s\n", reg.Host, lookaside))

	const deny = "Image policy rejected: Denied by policy: "
	tests := []struct {
		name   string
		policy string
		image  *harness.Image
		want   string
		reason string // in cocoonctl's stderr: the refusal is for the right cause
	}{
		{"cosign v2 signed", "cosign", v2, "allowed", ""},
		{"cosign v3 signed", "cosign", v3, "allowed", ""},
		{"gpg simple signing", "gpg", gpgSigned, "allowed", ""},
		{"unsigned", "cosign", unsigned, deny + "rejected by `sigstoreSigned` rule", "no signature exists"},
		{"other key", "cosign", wrong, deny + "rejected by `sigstoreSigned` rule", "signature verification failed"},
		{"tampered", "cosign", tampered, deny + "rejected by `sigstoreSigned` rule", "Signature for digest " + original.ManifestDigest + " does not match"},
		{"gpg policy, cosign signature", "gpg", v2, deny + "rejected by `signedBy` rule", ""},
		{"reject default", "reject", unsigned, deny + "Policy `reject` rejects image " + unsigned.Ref, ""},
		{"insecureAcceptAnything", "accept", unsigned, "allowed", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			policy := s.write("policy-"+tt.policy+".json", policies[tt.policy])
			args := []string{"image", "verify", "--policy", policy, "--sigstore-config", sigstoreConfig,
				"--insecure-registry", reg.Host, "--kbs-url", kbs.URL, "--tee", "sample",
				tt.image.Ref + "@" + tt.image.ManifestDigest}
			cmd := exec.CommandContext(ctx, cocoonctl, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			got := strings.TrimSpace(stdout.String())
			if got != tt.want {
				t.Fatalf("cocoonctl image verify %s: stdout %q, want %q (err %v)\nstderr: %s", tt.image.Ref, got, tt.want, err, stderr.String())
			}
			if (tt.want == "allowed") != (err == nil) {
				t.Fatalf("exit status %v does not match verdict %q\nstderr: %s", err, got, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.reason) {
				t.Fatalf("stderr does not give the cause %q:\n%s", tt.reason, stderr.String())
			}
		})
	}
}

func sigTag(manifestDigest string) string {
	return strings.Replace(manifestDigest, ":", "-", 1) + ".sig"
}

// signer runs the signing tools inside the test's work directory.
type signer struct {
	t   *testing.T
	ctx context.Context
	env *harness.Env
	reg *harness.Registry
	dir string
}

// newSigner returns a signer working in the test's "sign" directory.
func newSigner(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry) *signer {
	t.Helper()
	s := &signer{t: t, ctx: ctx, env: env, reg: reg, dir: env.Path("sign")}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *signer) write(name, content string) string {
	s.t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// run runs a tool in s.dir with cosign's offline settings and GNUPGHOME.
func (s *signer) run(name string, args ...string) string {
	s.t.Helper()
	cmd := exec.CommandContext(s.ctx, name, args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(),
		"COSIGN_PASSWORD=",
		"TUF_ROOT="+filepath.Join(s.dir, "tuf"),
		"GNUPGHOME="+filepath.Join(s.dir, "gnupg"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// push pushes a one-layer image with unique content as repo:v1.
func (s *signer) push(repo string) *harness.Image { return s.pushTag(repo, "v1") }

func (s *signer) pushTag(repo, tag string) *harness.Image {
	s.t.Helper()
	layer := filepath.Join(s.dir, strings.ReplaceAll(repo, "/", "_")+"-"+tag+".tar")
	content := []byte(repo + ":" + tag + " " + randomToken(s.t) + "\n")
	if err := harness.NewLayer().File("hello", content, 0o644).WriteFile(layer, harness.Uncompressed); err != nil {
		s.t.Fatal(err)
	}
	im, err := s.reg.Push(s.ctx, harness.ImageSpec{Repo: repo, Tag: tag, Layers: []string{layer}})
	if err != nil {
		s.t.Fatal(err)
	}
	return im
}

// cosignKey makes <name>.key / <name>.pub with an empty password.
func (s *signer) cosignKey(name string) (pub []byte) {
	s.t.Helper()
	s.run(s.env.Tool("cosign"), "generate-key-pair", "--output-key-prefix", name)
	pub, err := os.ReadFile(filepath.Join(s.dir, name+".pub"))
	if err != nil {
		s.t.Fatal(err)
	}
	return pub
}

// cosign signs im by digest with key, offline (no transparency log).
func (s *signer) cosign(tool, key string, im *harness.Image) {
	s.t.Helper()
	args := []string{"sign", "--key", key + ".key", "--tlog-upload=false", "-y",
		"--allow-insecure-registry", "--allow-http-registry"}
	if tool == "cosign3" {
		args = append(args, "--use-signing-config=false")
	}
	s.run(s.env.Tool(tool), append(args, s.reg.Host+"/"+im.Repo+"@"+im.ManifestDigest)...)
}

// gpgKey makes a signing key (primary signs, subkey encrypts: otherwise
// gpg signs with a subkey) and returns its fingerprint and public keyring.
func (s *signer) gpgKey() (string, []byte) {
	s.t.Helper()
	home := filepath.Join(s.dir, "gnupg")
	if err := os.MkdirAll(home, 0o700); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = cmd.Run()
	})
	batch := s.write("gpg-batch", "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nKey-Usage: sign\nSubkey-Type: RSA\nSubkey-Length: 2048\nSubkey-Usage: encrypt\nName-Real: cocoon e2e\nName-Email: e2e@cocoon.invalid\nExpire-Date: 0\n%commit\n")
	s.run("/usr/bin/gpg", "--batch", "--gen-key", batch)
	var fpr string
	for _, line := range strings.Split(s.run("/usr/bin/gpg", "--batch", "--with-colons", "--list-keys"), "\n") {
		if f, ok := strings.CutPrefix(line, "fpr:"); ok {
			fpr = strings.Trim(f, ":")
			break
		}
	}
	if fpr == "" {
		s.t.Fatal("no fingerprint in gpg --list-keys")
	}
	return fpr, []byte(s.run("/usr/bin/gpg", "--batch", "--export", fpr))
}

// skopeoSign copies a fresh image to repo:v1 signing it with fpr into a
// lookaside directory, and returns the signed image and the directory.
func (s *signer) skopeoSign(fpr, repo string) (*harness.Image, string) {
	s.t.Helper()
	src := s.push(repo + "-src")
	lookaside := filepath.Join(s.dir, "lookaside")
	regd := filepath.Join(s.dir, "registries.d")
	if err := os.MkdirAll(regd, 0o700); err != nil {
		s.t.Fatal(err)
	}
	cfg := map[string]any{"docker": map[string]any{s.reg.Host: map[string]string{"lookaside": "file://" + lookaside, "lookaside-staging": "file://" + lookaside}}}
	b, err := json.Marshal(cfg) // JSON is YAML
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(regd, "e2e.yaml"), b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	s.run("/usr/bin/skopeo", "--insecure-policy", "--registries.d", regd, "copy",
		"--src-tls-verify=false", "--dest-tls-verify=false", "--sign-by", fpr,
		"docker://"+src.Ref, "docker://"+s.reg.Ref(repo, "v1"))
	im, err := s.reg.Image(s.ctx, repo, "v1")
	if err != nil {
		s.t.Fatal(err)
	}
	return im, lookaside
}
