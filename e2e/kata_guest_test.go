package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/e2e/harness"
	"github.com/cocoon-cc/cocoon/e2e/internal/kataapi/aapb"
	"github.com/cocoon-cc/cocoon/e2e/internal/kataapi/cdhpb"
)

// kataGuest is a cocoond in kata-guest mode with the services it reaches
// (registry, cocoon-kbs), and ttRPC clients generated from upstream's
// protos (e2e/internal/kataapi), as the kata-agent holds them.
type kataGuest struct {
	env    *harness.Env
	reg    *harness.Registry
	kbs    *harness.KBS
	cd     *harness.Cocoond
	signer *signer
	loop   *harness.LoopDevice

	pull   cdhpb.ImagePullServiceService
	mount  cdhpb.SecureMountServiceService
	unseal cdhpb.SealedSecretServiceService
	res    cdhpb.GetResourceServiceService
	aa     aapb.AttestationAgentServiceService
}

// Resources and keys the kata-guest test puts in cocoon-kbs.
const (
	kataKEK         = "kbs:///default/image-kek/kata"
	kataVolumeKey   = "kbs:///default/volume-key/kata"
	kataWrongKey    = "kbs:///default/volume-key/wrong"
	kataTokenProbe  = "default/token-probe/1"
	kataPolicyURI   = "kbs:///default/image-policy/kata"
	kataCosignKey   = "kbs:///default/cosign-key/kata"
	kataLoopSize    = 64 << 20
	upstreamPullErr = "[CDH] [ERROR]: Image Pull error"
	upstreamMntErr  = "[CDH] [ERROR]: Secure Mount failed"
	upstreamUnseal  = "[CDH] [ERROR]: Unseal Secret failed"
)

// startKataGuest starts the registry, a cocoon-kbs holding the image
// security policy (cosign signatures required under HOST/coco), the cosign
// public key, a layer KEK, volume keys and the sealed-secret vectors'
// signing key and values, a loop device, and cocoond --mode kata-guest with
// upstream cdh.toml and aa.toml (AAEL enabled) and the sample TEE.
func startKataGuest(t *testing.T, ctx context.Context) *kataGuest {
	t.Helper()
	env := newEnv(t)
	if _, err := os.Stat(env.Tool("cosign")); err != nil {
		t.Fatalf("cosign missing (run `make e2e-tools`): %v", err)
	}
	for _, tool := range []string{"losetup", "cryptsetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: %v", tool, err)
		}
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := &kataGuest{env: env, reg: reg, signer: newSigner(t, ctx, env, reg)}
	cosignPub := g.signer.cosignKey("good")
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"sigstoreSigned","keyPath":%q}]}}}`, reg.Host+"/coco", kataCosignKey)
	resources := map[string][]byte{
		strings.TrimPrefix(kataPolicyURI, "kbs:///"): []byte(policy),
		strings.TrimPrefix(kataCosignKey, "kbs:///"): cosignPub,
		strings.TrimPrefix(kataKEK, "kbs:///"):       randomBytes(t, 32),
		strings.TrimPrefix(kataVolumeKey, "kbs:///"): randomBytes(t, 32),
		strings.TrimPrefix(kataWrongKey, "kbs:///"):  randomBytes(t, 32),
		kataTokenProbe: []byte("probe-" + randomToken(t)),
	}
	g.kbs, err = env.StartKBS(ctx, harness.KBSOptions{Policy: harness.AllowAllPolicy, Resources: resources})
	if err != nil {
		t.Fatal(err)
	}
	// Attached before cocoond starts, so that it is detached after cocoond
	// stopped (cleanups run last registered first).
	if g.loop, err = env.NewLoopDevice(ctx, "volume.img", kataLoopSize); err != nil {
		t.Fatal(err)
	}
	// cdh.toml names upstream's socket; --cdh-socket (the harness's, in
	// the work directory) must win, or the daemon never answers there.
	cdhToml := g.signer.write("cdh.toml", fmt.Sprintf("socket = \"unix:///run/confidential-containers/cdh.sock\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = %q\n", g.kbs.URL, kataPolicyURI))
	aaToml := g.signer.write("aa.toml", fmt.Sprintf("[token_configs.kbs]\nurl = %q\n\n[eventlog_config]\nenable_eventlog = true\n", g.kbs.URL))
	g.cd, err = env.StartCocoond(ctx, harness.CocoondOptions{
		KataGuest:          true,
		InsecureRegistries: []string{reg.Host},
		// Nothing under /run: the event log and the materialised policy
		// stay in the work directory.
		Config:    fmt.Sprintf("[attestation]\neventlog_dir = %q\nimage_security_dir = %q\n", env.Path("aael"), env.Path("image-security")),
		ExtraArgs: []string{"--tee", "sample", "--cdh-config", cdhToml, "--aa-config", aaToml},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.cd.Address); err == nil {
		t.Errorf("cocoond in kata-guest mode serves containerd's snapshots socket %s", g.cd.Address)
	}
	cdhc, err := env.DialTTRPC(ctx, g.cd.CDHSocket)
	if err != nil {
		t.Fatal(err)
	}
	aac, err := env.DialTTRPC(ctx, g.cd.AASocket)
	if err != nil {
		t.Fatal(err)
	}
	g.pull = cdhpb.NewImagePullServiceClient(cdhc)
	g.mount = cdhpb.NewSecureMountServiceClient(cdhc)
	g.unseal = cdhpb.NewSealedSecretServiceClient(cdhc)
	g.res = cdhpb.NewGetResourceServiceClient(cdhc)
	g.aa = aapb.NewAttestationAgentServiceClient(aac)
	return g
}

// TestKataGuest plays the kata-agent against cocoond --mode kata-guest over
// ttRPC, with client code generated from upstream's protos: PullImage of a
// signed, encrypted image into bundles that runc runs, a refused image,
// SecureMount of a LUKS2 block device (empty, then encrypted again),
// UnsealSecret on kata's sealed-secret vectors, GetResource, and the
// Attestation Agent through to a cocoon-kbs token.
func TestKataGuest(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	g := startKataGuest(t, ctx)
	t.Run("PullImage", func(t *testing.T) { g.testPullImage(t, ctx) })
	t.Run("PullImageRefused", func(t *testing.T) { g.testPullRefused(t, ctx) })
	t.Run("SecureMount", func(t *testing.T) { g.testSecureMount(t, ctx) })
	t.Run("UnsealSecret", func(t *testing.T) { g.testUnsealSecret(t, ctx) })
	t.Run("GetResource", func(t *testing.T) { g.testGetResource(t, ctx) })
	t.Run("AttestationAgent", func(t *testing.T) { g.testAttestationAgent(t, ctx) })
}

// testPullImage: a cosign-signed image encrypted by cocoonctl encrypt
// (layer keys wrapped for the attestation-agent key provider, the KEK in
// cocoon-kbs) is pulled into a bundle, as the kata-agent asks for it, and
// runs with runc; a second pull into another bundle fetches no layer again.
func (g *kataGuest) testPullImage(t *testing.T, ctx context.Context) {
	plain, msg := pushTwoLayerImage(t, ctx, g.env, g.reg, "plain/app", imageOptions{})
	kek, err := os.ReadFile(filepath.Join(g.kbs.Repository, filepath.FromSlash(strings.TrimPrefix(kataKEK, "kbs:///"))))
	if err != nil {
		t.Fatal(err)
	}
	encryptImage(t, ctx, g.env, kek, kataKEK, plain.Ref, g.reg.Ref("coco/app", "v1"))
	im, err := g.reg.Image(ctx, "coco/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(im.LayerDigests(), plain.LayerDigests()) {
		t.Fatal("cocoonctl encrypt left the layers as they were")
	}
	g.signer.cosign("cosign", "good", im)

	for i, name := range []string{"first", "second"} {
		bundle := g.env.Path("bundles", name)
		if err := os.MkdirAll(bundle, 0o755); err != nil { // the kata-agent makes the container's directory
			t.Fatal(err)
		}
		before := map[string]int{}
		for _, d := range im.LayerDigests() {
			before[d] = g.reg.BlobGets(im.Repo, d)
		}
		reply, err := g.pull.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: im.Ref, BundlePath: bundle})
		if err != nil {
			t.Fatalf("%s PullImage: %v", name, err)
		}
		if reply.GetManifestDigest() != im.ManifestDigest {
			t.Errorf("%s PullImage answered manifest digest %q, the registry has %s", name, reply.GetManifestDigest(), im.ManifestDigest)
		}
		for _, d := range im.LayerDigests() {
			got := g.reg.BlobGets(im.Repo, d) - before[d]
			if i == 0 && got < 1 {
				t.Errorf("first pull: the registry served layer %s %d times", d, got)
			}
			if i > 0 && got != 0 {
				t.Errorf("second pull into another bundle fetched layer %s %d times again, want 0 (layers shared)", d, got)
			}
		}
		rootfs := filepath.Join(bundle, "rootfs")
		if mps, err := harness.MountsUnder(rootfs); err != nil || len(mps) != 1 {
			t.Errorf("%s: mounts at the bundle's rootfs: %v %v, want one", name, mps, err)
		}
		var spec struct {
			Root     struct{ Path string }
			Hostname string
			Process  struct{ Args []string }
		}
		raw, err := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err == nil {
			err = json.Unmarshal(raw, &spec)
		}
		if err != nil {
			t.Fatalf("%s bundle's config.json: %v", name, err)
		}
		if spec.Root.Path != "rootfs" || spec.Hostname != "image-rs" || !slices.Equal(spec.Process.Args, []string{"/bin/cat", "/layer2/message"}) {
			t.Errorf("%s bundle's config.json: root %q, hostname %q, args %q", name, spec.Root.Path, spec.Hostname, spec.Process.Args)
		}
		out, err := g.env.RuncRun(ctx, bundle, containerID(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != msg {
			t.Errorf("%s bundle's container printed %q, want %q", name, out, msg)
		}
		// The kata-agent unmounts the rootfs when it removes the container.
		if err := unix.Unmount(rootfs, 0); err != nil {
			t.Errorf("umount %s: %v", rootfs, err)
		}
	}
}

// testPullRefused: an unsigned image under a policy that requires cosign
// signatures fails with upstream's error class and leaves neither a mount
// nor a file in the bundle directory.
func (g *kataGuest) testPullRefused(t *testing.T, ctx context.Context) {
	im, _ := pushTwoLayerImage(t, ctx, g.env, g.reg, "coco/unsigned", imageOptions{})
	bundle := g.env.Path("bundles", "refused")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := g.pull.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: im.Ref, BundlePath: bundle})
	msg := wantUpstreamStatus(t, err, upstreamPullErr)
	if !strings.Contains(msg, "Denied by policy") {
		t.Errorf("the refusal does not say the policy denied the image: %q", msg)
	}
	assertNoMountsUnder(t, bundle)
	ents, err := os.ReadDir(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("a refused pull left %v in the bundle directory", names)
	}
	for _, d := range im.LayerDigests() {
		if n := g.reg.BlobGets(im.Repo, d); n != 0 {
			t.Errorf("layer %s of the refused image was fetched %d times", d, n)
		}
	}
}

// testSecureMount: the confidential emptyDir path. A block device is
// secure-mounted "empty" with a kbs:/// key (LUKS2 + ext4), written and
// unmounted as the kata-agent does (umount of the mount point), then
// secure-mounted again as "encrypted" with the same key: the data is back,
// cryptsetup reads the LUKS2 header, the backing file holds no plaintext.
// A wrong key and an unknown volume type fail as upstream, leaving nothing
// mounted.
func (g *kataGuest) testSecureMount(t *testing.T, ctx context.Context) {
	mnt := g.env.Path("volumes", "emptydir")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	req := func(source, key string, byPath bool) *cdhpb.SecureMountRequest {
		opts := map[string]string{"sourceType": source, "targetType": "fileSystem", "encryptionType": "luks2", "key": key}
		if byPath {
			opts["devicePath"] = g.loop.Path
		} else {
			opts["deviceId"] = g.loop.DeviceID()
		}
		return &cdhpb.SecureMountRequest{VolumeType: "block-device", Options: opts, MountPoint: mnt}
	}
	marker := "emptydir-data-" + randomToken(t)
	if _, err := g.mount.SecureMount(ctx, req("empty", kataVolumeKey, false)); err != nil {
		t.Fatalf("SecureMount empty: %v", err)
	}
	assertMountedFS(t, mnt)
	if err := os.WriteFile(filepath.Join(mnt, "data"), []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("umount %s: %v", mnt, err)
	}

	if _, err := g.mount.SecureMount(ctx, req("encrypted", kataVolumeKey, true)); err != nil {
		t.Fatalf("SecureMount encrypted (same device, same key): %v", err)
	}
	assertMountedFS(t, mnt)
	if got, err := os.ReadFile(filepath.Join(mnt, "data")); err != nil || string(got) != marker {
		t.Errorf("read back %q, %v; want %q", got, err, marker)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("umount %s: %v", mnt, err)
	}
	out, err := exec.CommandContext(ctx, "cryptsetup", "luksDump", g.loop.Path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "LUKS header information") || !luks2Version.Match(out) {
		t.Errorf("cryptsetup luksDump %s: %v\n%s", g.loop.Path, err, out)
	}
	if raw, err := os.ReadFile(g.loop.File); err != nil || strings.Contains(string(raw), marker) {
		t.Errorf("the volume's backing file holds the plaintext (or cannot be read: %v)", err)
	}

	bad := req("encrypted", kataWrongKey, false)
	odd := req("empty", kataVolumeKey, false)
	odd.VolumeType = "no-such-volume-type"
	for name, r := range map[string]*cdhpb.SecureMountRequest{"wrong key": bad, "unknown volume type": odd} {
		// The userspace engine's FUSE mounts live under cocoond's root.
		// (SecureMount first releases the volume unmounted above.)
		before := mountsUnder(t, g.cd.Root)
		_, err := g.mount.SecureMount(ctx, r)
		wantUpstreamStatus(t, err, upstreamMntErr)
		assertNoMountsUnder(t, mnt)
		for _, m := range mountsUnder(t, g.cd.Root) {
			if !slices.Contains(before, m) {
				t.Errorf("%s: the refusal left %s mounted", name, m)
			}
		}
	}
}

// luks2Version is the version line of cryptsetup luksDump for LUKS2.
var luks2Version = regexp.MustCompile(`(?m)^Version:\s+2$`)

// testUnsealSecret unseals kata's published sealed secrets (real ES256
// JWS); their signing JWK and vault values are put in cocoon-kbs where the
// secrets name them.
func (g *kataGuest) testUnsealSecret(t *testing.T, ctx context.Context) {
	raw, err := os.ReadFile(filepath.Join("testdata", "kata-precreated-sealed-secrets.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		JWK     json.RawMessage   `json:"signing_public_jwk"`
		KidURI  string            `json:"signing_public_jwk_provisioned_at"`
		Secrets map[string]string `json:"secrets"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Secrets) == 0 {
		t.Fatal("no sealed-secret vectors")
	}
	if err := g.kbs.SetResource(strings.TrimPrefix(v.KidURI, "kbs:///"), v.JWK); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for name, s := range v.Secrets {
		// The payload (second JWS part) names the vault resource.
		parts := strings.Split(s, ".")
		if len(parts) != 4 || parts[0] != "sealed" {
			t.Fatalf("%s is not a sealed secret: %q", name, s)
		}
		b, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil {
			t.Fatal(err)
		}
		var payload struct{ Name string }
		if err := json.Unmarshal(b, &payload); err != nil {
			t.Fatal(err)
		}
		want[name] = "value of " + name + " " + randomToken(t)
		if err := g.kbs.SetResource(strings.TrimPrefix(payload.Name, "kbs:///"), []byte(want[name])); err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range v.Secrets {
		out, err := g.unseal.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(s)})
		if err != nil {
			t.Errorf("UnsealSecret %s: %v", name, err)
			continue
		}
		if string(out.GetPlaintext()) != want[name] {
			t.Errorf("UnsealSecret %s = %q, want %q", name, out.GetPlaintext(), want[name])
		}
	}
	// The signature of one secret over another's payload.
	var a, b string
	for _, s := range v.Secrets {
		if a == "" {
			a = s
		} else if b == "" {
			b = s
		}
	}
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	forged := strings.Join([]string{pa[0], pa[1], pb[2], pa[3]}, ".")
	_, err = g.unseal.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(forged)})
	if msg := wantUpstreamStatus(t, err, upstreamUnseal); strings.Contains(msg, "value of") {
		t.Errorf("the refusal leaks a secret: %q", msg)
	}
}

// testGetResource: a kbs:/// resource comes back byte for byte (as
// api-server-rest asks for it); a missing one fails as upstream's does.
func (g *kataGuest) testGetResource(t *testing.T, ctx context.Context) {
	want, err := os.ReadFile(filepath.Join(g.kbs.Repository, filepath.FromSlash(kataTokenProbe)))
	if err != nil {
		t.Fatal(err)
	}
	out, err := g.res.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///" + kataTokenProbe})
	if err != nil || string(out.GetResource()) != string(want) {
		t.Errorf("GetResource(kbs:///%s) = %q, %v; want %q", kataTokenProbe, out.GetResource(), err, want)
	}
	_, err = g.res.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/absent/1"})
	wantUpstreamStatus(t, err, "[CDH] [ERROR]: Get Resource failed")
}

// testAttestationAgent: evidence of the sample TEE carries the runtime
// data; a "kbs" token is one cocoon-kbs issued (it releases a resource for
// it, encrypted to the token's TEE key); a runtime measurement on a TEE
// without a measurement register answers upstream's NOT_SUPPORTED.
func (g *kataGuest) testAttestationAgent(t *testing.T, ctx context.Context) {
	nonce := []byte("kata-nonce-" + randomToken(t))
	ev, err := g.aa.GetEvidence(ctx, &aapb.GetEvidenceRequest{RuntimeData: nonce})
	if err != nil {
		t.Fatal(err)
	}
	var quote struct {
		SVN        string `json:"svn"`
		ReportData string `json:"report_data"`
	}
	if err := json.Unmarshal(ev.GetEvidence(), &quote); err != nil {
		t.Fatalf("evidence %q: %v", ev.GetEvidence(), err)
	}
	if rd, err := base64.StdEncoding.DecodeString(quote.ReportData); err != nil || string(rd) != string(nonce) || quote.SVN != "1" {
		t.Errorf("sample evidence %s does not carry the runtime data %q", ev.GetEvidence(), nonce)
	}
	if tee, err := g.aa.GetTeeType(ctx, &aapb.GetTeeTypeRequest{}); err != nil || tee.GetTee() != "sample" {
		t.Errorf("GetTeeType = %v, %v", tee, err)
	}

	tok, err := g.aa.GetToken(ctx, &aapb.GetTokenRequest{TokenType: "kbs"})
	if err != nil {
		t.Fatal(err)
	}
	var pair struct {
		Token      string `json:"token"`
		TEEKeypair string `json:"tee_keypair"`
	}
	if err := json.Unmarshal(tok.GetToken(), &pair); err != nil || strings.Count(pair.Token, ".") != 2 || pair.TEEKeypair == "" {
		t.Fatalf("GetToken(kbs) answered no token and TEE key pair: %v", err)
	}
	got := kbsResourceWithToken(t, ctx, g.kbs.URL, kataTokenProbe, pair.Token, pair.TEEKeypair)
	want, err := os.ReadFile(filepath.Join(g.kbs.Repository, filepath.FromSlash(kataTokenProbe)))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("cocoon-kbs released %q for the token, want %q", got, want)
	}

	res, err := g.aa.ExtendRuntimeMeasurement(ctx, &aapb.ExtendRuntimeMeasurementRequest{Domain: "github.com/confidential-containers", Operation: "PullImage", Content: `{"image":"coco/app:v1"}`})
	if err != nil {
		t.Fatal(err)
	}
	// Upstream AA with enable_eventlog on the sample attester (which has no
	// runtime measurement register): the event log is enabled, the
	// platform does not support the extension.
	if res.GetResult() != aapb.RuntimeMeasurementResult_NOT_SUPPORTED {
		t.Errorf("ExtendRuntimeMeasurement = %v (%d), want NOT_SUPPORTED (1)", res.GetResult(), res.GetResult())
	}
}

// kbsResourceWithToken fetches a resource from the KBS with an attestation
// token as the bearer, as Trustee's clients may, and decrypts the JWE it
// answers with the TEE private key (PEM) the token was issued for.
func kbsResourceWithToken(t *testing.T, ctx context.Context, kbsURL, path, token, keyPEM string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, kbsURL+"/kbs/v0/resource/"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cocoon-kbs refused the AA's token: %s: %s", resp.Status, body)
	}
	key, err := parsePKCS8PEM(keyPEM)
	if err != nil {
		t.Fatalf("tee_keypair: %v", err)
	}
	jwe, err := jose.ParseEncryptedJSON(string(body),
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatalf("cocoon-kbs's answer is not a JWE: %v", err)
	}
	plain, err := jwe.Decrypt(key)
	if err != nil {
		t.Fatalf("the resource does not decrypt with the token's TEE key: %v", err)
	}
	return plain
}

// wantUpstreamStatus checks that err is what upstream's CDH answers: ttRPC
// status INTERNAL with a message starting with prefix; it returns the
// message.
func wantUpstreamStatus(t *testing.T, err error, prefix string) string {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want INTERNAL %q...", prefix)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v carries no ttRPC status", err)
	}
	if st.Code() != codes.Internal || !strings.HasPrefix(st.Message(), prefix) {
		t.Fatalf("status %v %q, want INTERNAL %q...", st.Code(), st.Message(), prefix)
	}
	t.Logf("%v: %s", st.Code(), st.Message())
	return st.Message()
}

func assertNoMountsUnder(t *testing.T, dir string) {
	t.Helper()
	if mps, err := harness.MountsUnder(dir); err != nil || len(mps) > 0 {
		t.Errorf("mounts left under %s: %v %v", dir, mps, err)
	}
}

// assertMountedFS checks that an ext4 file system is mounted at dir.
func assertMountedFS(t *testing.T, dir string) {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(ms) != 1 || ms[0].FSType != "ext4" {
		t.Fatalf("at %s: mounts %+v, %v; want one ext4", dir, ms, err)
	}
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := harness.MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// parsePKCS8PEM reads the TEE key pair of a "kbs" token (PKCS#8 PEM).
func parsePKCS8PEM(s string) (any, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PKCS#8 PEM private key")
	}
	return x509.ParsePKCS8PrivateKey(block.Bytes)
}
