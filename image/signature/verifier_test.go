package signature

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	imgregistry "github.com/cocoon-cc/cocoon/image/registry"
)

type fakeResources map[string][]byte

func (f fakeResources) GetResource(_ context.Context, uri string) ([]byte, error) {
	b, ok := f[uri]
	if !ok {
		return nil, fmt.Errorf("resource %s: %w", uri, errdefs.ErrNotFound)
	}
	return b, nil
}

func TestNoPolicyAllowsEverything(t *testing.T) {
	for _, p := range [][]byte{nil, []byte("  \n")} {
		v, err := New(context.Background(), Options{Policy: p})
		if err != nil {
			t.Fatal(err)
		}
		if v.Enabled() {
			t.Fatal("Enabled() with no policy")
		}
		// Not even a valid reference is needed: nothing is evaluated.
		if err := v.Check(context.Background(), "%%%", "sha256:x"); err != nil {
			t.Fatalf("Check without policy: %v", err)
		}
	}
}

// Rules that need no signature are decided without contacting the registry
// (127.0.0.1:1 refuses connections), and scopes are looked up the image-rs
// way: full reference, namespaces, wildcard domains, "", default.
func TestScopeSelectionWithoutRegistry(t *testing.T) {
	policy := `{
	  "default": [{"type":"reject"}],
	  "transports": {"docker": {
	    "127.0.0.1:1/team/app:v1": [{"type":"insecureAcceptAnything"}],
	    "127.0.0.1:1/team": [{"type":"reject"}],
	    "127.0.0.1:1/open": [],
	    "*.example.com": [{"type":"insecureAcceptAnything"}],
	    "docker.io/library/busybox": [{"type":"insecureAcceptAnything"}],
	    "quay.io/x": [{"type":"sigstoreSigned","keyData":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWT07eR1HNK3D2iqHotE0c389aSTh\nLj0B39PXTBcJzJpkXPO82lLGQdc47V5HPWaPZ2Fc3DWyRoz1oWbnLlvQ5Q==\n-----END PUBLIC KEY-----\n","signedIdentity":{"type":"matchExact"}}]
	  }}
	}`
	v, err := New(context.Background(), Options{Policy: []byte(policy), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("manifest")
	tests := []struct {
		ref  string
		want string // "" allowed, else the exact error
	}{
		{"127.0.0.1:1/team/app:v1", ""},
		{"127.0.0.1:1/team/app:v2", "Image policy rejected: Denied by policy: Policy `reject` rejects image 127.0.0.1:1/team/app:v2"},
		{"127.0.0.1:1/open/x", ""},
		{"registry.example.com/a/b:c", ""},
		{"busybox", ""},
		{"docker.io/library/alpine", "Image policy rejected: Denied by policy: Policy `reject` rejects image docker.io/library/alpine:latest"},
		{"quay.io/x:1", "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			err := v.Check(context.Background(), tt.ref, d)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			var rej *RejectedError
			if !errors.As(err, &rej) || err.Error() != tt.want {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrPermissionDenied) {
				t.Fatal("rejection is not ErrPermissionDenied")
			}
		})
	}
	if w := v.Warnings(); len(w) != 2 || !strings.Contains(w[0], "names a tag") || !strings.Contains(w[1], "matchExact") {
		t.Fatalf("warnings = %q", v.Warnings())
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"invalid policy", Options{Policy: []byte(`{"default":[]}`), WorkDir: t.TempDir()}, "Invalid image policy file"},
		{"no workdir", Options{Policy: []byte(`{"default":[],"transports":{}}`)}, "WorkDir is required"},
		{"kbs key without kbs", Options{Policy: []byte(`{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///a/b/c"}],"transports":{}}`), WorkDir: t.TempDir()}, "needs a KBS"},
		{"kbs key missing", Options{Policy: []byte(`{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///a/b/c"}],"transports":{}}`), WorkDir: t.TempDir(), Resources: fakeResources{}}, "fetch key kbs:///a/b/c"},
		{"kbs key not a key", Options{Policy: []byte(`{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///a/b/c"}],"transports":{}}`), WorkDir: t.TempDir(), Resources: fakeResources{"kbs:///a/b/c": []byte("nope")}}, "sigstoreSigned key"},
		{"http key path", Options{Policy: []byte(`{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"https://x/k"}],"transports":{}}`), WorkDir: t.TempDir()}, "not supported"},
		{"bad sigstore config", Options{Policy: []byte(`{"default":[],"transports":{}}`), WorkDir: t.TempDir(), SigstoreConfig: []byte("docker: [")}, "parse sigstore config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRegistriesD(t *testing.T) {
	out, err := registriesD(readVector(t, "sigstore_config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{"default-docker:\n    use-sigstore-attachments: true", "sigstore: file:///etc/containers/quay_verification/signatures", "quay.io/kata-containers/confidential-containers:"} {
		if !strings.Contains(s, want) {
			t.Errorf("registries.d %q lacks %q", s, want)
		}
	}
	off, err := registriesD([]byte("default-docker:\n  use-sigstore-attachments: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(off), "use-sigstore-attachments: false") {
		t.Errorf("an explicit false was overridden: %s", off)
	}
}

// testRegistry is an in-process registry holding one unsigned image.
type testRegistry struct {
	srv    *httptest.Server
	host   string
	repo   name.Repository
	digest digest.Digest
	opts   []remote.Option // to push to it (auth, TLS)
}

func startRegistry(t *testing.T, referrers bool) testRegistry {
	t.Helper()
	var opts []registry.Option
	if referrers {
		opts = append(opts, registry.WithReferrersSupport(true))
	}
	opts = append(opts, registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(registry.New(opts...))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo, err := name.NewRepository(host+"/coco/img", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(repo.Tag("v1"), img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return testRegistry{srv: srv, host: host, repo: repo, digest: digest.Digest(d.String())}
}

// signV2 stores a cosign v2 style signature (tag sha256-<hex>.sig) of the
// image, claiming manifest claimed and identity identity.
func (r testRegistry) signV2(t *testing.T, k *ecdsa.PrivateKey, claimed digest.Digest, identity string) {
	t.Helper()
	payload := []byte(fmt.Sprintf(`{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, identity, claimed))
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, k, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json"),
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := r.repo.Tag(strings.Replace(r.digest.String(), ":", "-", 1) + ".sig")
	if err := remote.Write(tag, img, r.opts...); err != nil {
		t.Fatal(err)
	}
}

// signV3 stores a cosign v3 style bundle referring to the image.
func (r testRegistry) signV3(t *testing.T, k *ecdsa.PrivateKey, claimed digest.Digest) {
	t.Helper()
	bundle := makeBundle(t, k, inTotoPayloadType, statementFor(claimed, cosignSignPredicate))
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, "application/vnd.dev.sigstore.bundle.v0.3+json")
	img, err := mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(bundle, "application/vnd.dev.sigstore.bundle.v0.3+json")})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := remote.Head(r.repo.Digest(r.digest.String()), r.opts...)
	if err != nil {
		t.Fatal(err)
	}
	withSubject := mutate.Subject(img, v1.Descriptor{MediaType: subject.MediaType, Size: subject.Size, Digest: subject.Digest}).(v1.Image)
	d, err := withSubject.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r.repo.Digest(d.String()), withSubject, r.opts...); err != nil {
		t.Fatal(err)
	}
}

func TestCheckAgainstRegistry(t *testing.T) {
	good, goodPEM := newECKey(t)
	bad, _ := newECKey(t)
	keyURI := "kbs:///default/cosign/pub"
	tests := []struct {
		name      string
		referrers bool
		sign      func(t *testing.T, r testRegistry)
		want      string // "" allowed
	}{
		{name: "unsigned", want: "rejected by `sigstoreSigned` rule"},
		{name: "cosign v2", sign: func(t *testing.T, r testRegistry) { r.signV2(t, good, r.digest, r.host+"/coco/img") }},
		{name: "cosign v2 other key", sign: func(t *testing.T, r testRegistry) { r.signV2(t, bad, r.digest, r.host+"/coco/img") }, want: "rejected by `sigstoreSigned` rule"},
		{name: "cosign v2 other digest", sign: func(t *testing.T, r testRegistry) { r.signV2(t, good, digest.FromString("x"), r.host+"/coco/img") }, want: "rejected by `sigstoreSigned` rule"},
		{name: "cosign v2 other repository", sign: func(t *testing.T, r testRegistry) { r.signV2(t, good, r.digest, r.host+"/coco/other") }, want: "rejected by `sigstoreSigned` rule"},
		{name: "cosign v3 tag fallback", sign: func(t *testing.T, r testRegistry) { r.signV3(t, good, r.digest) }},
		{name: "cosign v3 referrers API", referrers: true, sign: func(t *testing.T, r testRegistry) { r.signV3(t, good, r.digest) }},
		{name: "cosign v3 other key", sign: func(t *testing.T, r testRegistry) { r.signV3(t, bad, r.digest) }, want: "rejected by `sigstoreSigned` rule"},
		{name: "cosign v3 other digest", referrers: true, sign: func(t *testing.T, r testRegistry) { r.signV3(t, good, digest.FromString("x")) }, want: "rejected by `sigstoreSigned` rule"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRegistry(t, tt.referrers)
			if tt.sign != nil {
				tt.sign(t, r)
			}
			policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"sigstoreSigned","keyPath":%q}]}}}`, r.host+"/coco", keyURI)
			work := t.TempDir()
			v, err := New(context.Background(), Options{
				Policy:    []byte(policy),
				Resources: fakeResources{keyURI: goodPEM},
				Registry:  imgregistry.New(imgregistry.Options{Insecure: []string{r.host}}),
				WorkDir:   work,
			})
			if err != nil {
				t.Fatal(err)
			}
			err = v.Check(context.Background(), r.host+"/coco/img:v1", r.digest)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v (reason: %s)", err, reason(err))
				}
			} else if err == nil || !strings.HasSuffix(err.Error(), tt.want) {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
			// The kbs key landed in the work dir, as a public key file.
			keys, _ := os.ReadDir(filepath.Join(work, "keys"))
			if len(keys) != 1 {
				t.Fatalf("materialised keys = %d, want 1", len(keys))
			}
		})
	}
}

// The verdict is cached: a second Check gives the same answer without the
// registry.
func TestVerdictCached(t *testing.T) {
	k, pemKey := newECKey(t)
	r := startRegistry(t, false)
	r.signV2(t, k, r.digest, r.host+"/coco/img")
	srvPolicy := fmt.Sprintf(`{"default":[{"type":"sigstoreSigned","keyData":%q}],"transports":{}}`, pemKey)
	v, err := New(context.Background(), Options{Policy: []byte(srvPolicy), Registry: imgregistry.New(imgregistry.Options{Insecure: []string{r.host}}), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ref := r.host + "/coco/img:v1"
	if err := v.Check(context.Background(), ref, r.digest); err != nil {
		t.Fatalf("first Check: %v (%s)", err, reason(err))
	}
	// Remove the image: only the cache can answer now.
	if err := remote.Delete(r.repo.Digest(r.digest.String())); err != nil {
		t.Fatal(err)
	}
	if err := v.Check(context.Background(), ref, r.digest); err != nil {
		t.Fatalf("cached Check: %v", err)
	}
	other := digest.FromString("other manifest")
	var rej *RejectedError
	if err := v.Check(context.Background(), ref, other); !errors.As(err, &rej) || rej.transient {
		t.Fatalf("Check of an unsigned manifest = %v, want a final rejection", err)
	}
	// With the registry gone the image is refused (fail closed) or the
	// check fails, and nothing is cached.
	r.srv.Close()
	third := digest.FromString("third manifest")
	err = v.Check(context.Background(), ref, third)
	if err == nil {
		t.Fatal("Check passed with the registry down")
	}
	if errors.As(err, &rej) && !rej.transient {
		t.Fatalf("registry down gave a final verdict: %v", rej.Reason)
	}
	if _, cached := v.verdicts.Peek(ref + "\x00" + third.String()); cached {
		t.Fatal("a failed evaluation was cached")
	}
}

func reason(err error) string {
	var rej *RejectedError
	if errors.As(err, &rej) {
		return rej.Reason
	}
	return ""
}

// TestPolicyUnknownFieldsIgnored: image-rs reads containers-policy.json with
// serde structs that ignore unknown fields, at every level. Such a policy
// loads here too (each key named in a warning) and decides exactly as the
// same policy without them: a signed image passes, an unsigned one and one
// signed by another key do not, a reject scope rejects. Keys that
// go.podman.io/image/v5 would apply but image-rs ignores (rekorPublicKeyPath,
// keyPaths on sigstoreSigned) change nothing.
func TestPolicyUnknownFieldsIgnored(t *testing.T) {
	good, goodPEM := newECKey(t)
	bad, _ := newECKey(t)
	keyURI := "kbs:///default/cosign/pub"
	for _, tc := range []struct {
		name string
		sign *ecdsa.PrivateKey
		want string // "" allowed
	}{
		{"signed", good, ""},
		{"unsigned", nil, "rejected by `sigstoreSigned` rule"},
		{"other key", bad, "rejected by `sigstoreSigned` rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRegistry(t, false)
			if tc.sign != nil {
				r.signV2(t, tc.sign, r.digest, r.host+"/coco/img")
			}
			policy := fmt.Sprintf(`{
			  "default": [{"type": "reject", "comment": "deny the rest"}],
			  "transports": {"docker": {
			    %q: [{"type": "sigstoreSigned", "keyPath": %q,
			          "rekorPublicKeyPath": "/nonexistent/rekor.pub", "keyPaths": ["/nonexistent"], "x-note": 1,
			          "signedIdentity": {"type": "matchRepository", "dockerRepository": "other.example/x"}}],
			    %q: [{"type": "insecureAcceptAnything", "owner": "ops"}]
			  }},
			  "x-generated-by": "tool"
			}`, r.host+"/coco", keyURI, r.host+"/open")
			v, err := New(context.Background(), Options{
				Policy:    []byte(policy),
				Resources: fakeResources{keyURI: goodPEM},
				Registry:  imgregistry.New(imgregistry.Options{Insecure: []string{r.host}}),
				WorkDir:   t.TempDir(),
			})
			if err != nil {
				t.Fatal(err)
			}
			warned := strings.Join(v.Warnings(), "\n")
			for _, k := range []string{`"x-generated-by"`, `"comment"`, `"rekorPublicKeyPath"`, `"keyPaths"`, `"x-note"`, `"signedIdentity.dockerRepository"`, `"owner"`} {
				if !strings.Contains(warned, k) {
					t.Errorf("no warning names %s: %q", k, v.Warnings())
				}
			}
			err = v.Check(context.Background(), r.host+"/coco/img:v1", r.digest)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check: %v (reason: %s)", err, reason(err))
				}
			} else if err == nil || !strings.HasSuffix(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want %q", err, tc.want)
			}
			if err := v.Check(context.Background(), r.host+"/open/img:v1", r.digest); err != nil {
				t.Errorf("accept scope: %v", err)
			}
			if err := v.Check(context.Background(), r.host+"/elsewhere/img:v1", r.digest); err == nil {
				t.Error("default reject with an unknown field accepted an image")
			}
		})
	}
}
