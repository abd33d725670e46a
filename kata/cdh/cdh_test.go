package cdh_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/api/keyproviderpb"
	"github.com/cocoon-cc/cocoon/kata/cdh"
	"github.com/cocoon-cc/cocoon/kata/securemount"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// devKBS is cocoon's development KBS on loopback with the sample verifier;
// put stores a resource (repo/type/tag) as an operator would.
type devKBS struct {
	url, dir string
}

func startKBS(t *testing.T) *devKBS {
	t.Helper()
	dir := t.TempDir()
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		ts.Close()
		_ = srv.Close()
	})
	return &devKBS{url: ts.URL, dir: dir}
}

func (k *devKBS) put(t *testing.T, path string, b []byte) {
	t.Helper()
	p := filepath.Join(k.dir, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (k *devKBS) client(t *testing.T) *kbs.Client {
	t.Helper()
	c, err := kbs.NewClient(kbs.Config{URL: k.url, Attester: sample.NewAttester(), HTTPTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve starts the CDH services on a unix socket in a temporary directory
// and returns a ttRPC client connected to it.
func serve(t *testing.T, o cdh.Options) *ttrpc.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "cdh.sock")
	srv, err := ttrpcsock.Listen(context.Background(), "unix://"+sock, cdh.New(o).Register)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	c, err := ttrpcsock.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// wantStatus checks the error class and message prefix upstream's clients
// see.
func wantStatus(t *testing.T, err error, code codes.Code, prefix string) string {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v %q", code, prefix)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v carries no status", err)
	}
	if st.Code() != code || !strings.HasPrefix(st.Message(), prefix) {
		t.Fatalf("status %v %q, want %v %q...", st.Code(), st.Message(), code, prefix)
	}
	t.Logf("%v: %s", st.Code(), st.Message())
	return st.Message()
}

// TestUnsealSecretKataVectors unseals kata's published sealed secrets over
// ttRPC: their JWK and the vault values live in a development KBS that the
// Unsealer reaches with the sample attester.
func TestUnsealSecretKataVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "kata-precreated-sealed-secrets.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		JWK     json.RawMessage   `json:"signing_public_jwk"`
		KidURI  string            `json:"signing_public_jwk_provisioned_at"`
		Secrets map[string]string `json:"secrets"`
		Decoded map[string]struct {
			Payload struct {
				Name string `json:"name"`
			} `json:"payload"`
		} `json:"decoded_(derived)"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	k := startKBS(t)
	k.put(t, strings.TrimPrefix(v.KidURI, "kbs:///"), v.JWK)
	for name := range v.Secrets {
		k.put(t, strings.TrimPrefix(v.Decoded[name].Payload.Name, "kbs:///"), []byte("value of "+name))
	}
	c := cdhpb.NewSealedSecretServiceClient(serve(t, cdh.Options{Unsealer: &sealed.Unsealer{Resources: k.client(t)}}))
	ctx := context.Background()
	if len(v.Secrets) == 0 {
		t.Fatal("no vectors")
	}
	for name, s := range v.Secrets {
		t.Run(name, func(t *testing.T) {
			out, err := c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(s)})
			if err != nil {
				t.Fatal(err)
			}
			if string(out.GetPlaintext()) != "value of "+name {
				t.Fatalf("plaintext %q", out.GetPlaintext())
			}
		})
	}
	t.Run("tampered signature", func(t *testing.T) {
		s := v.Secrets["SEALED_SECRET_PRECREATED_TEST"]
		last := s[len(s)-2:]
		forged := s[:len(s)-2] + map[bool]string{true: "AA", false: "AQ"}[last == "AQ"]
		_, err := c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(forged)})
		msg := wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Unseal Secret failed")
		if strings.Contains(msg, "value of") {
			t.Fatalf("message leaks the secret: %q", msg)
		}
	})
	t.Run("not sealed", func(t *testing.T) {
		_, err := c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("plain text")})
		wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Unseal Secret failed")
	})
}

func TestGetResource(t *testing.T) {
	k := startKBS(t)
	k.put(t, "default/db/password", []byte("s3cret"))
	c := cdhpb.NewGetResourceServiceClient(serve(t, cdh.Options{Resources: k.client(t)}))
	ctx := context.Background()
	for _, uri := range []string{"kbs:///default/db/password", "kbs://kbs.example:8080/default/db/password"} {
		out, err := c.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: uri})
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if string(out.GetResource()) != "s3cret" {
			t.Fatalf("%s: resource %q", uri, out.GetResource())
		}
	}
	for _, tc := range []struct{ uri, detail string }{
		{"kbs:///default/db/missing", "default/db/missing"},
		{"default/db", "illegal kbs resource uri"},
		{"https://example/default/db/password", "illegal kbs resource uri"},
		{"kbs:///default/../password", "illegal kbs resource uri"},
		{"", "illegal kbs resource uri"},
	} {
		_, err := c.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: tc.uri})
		msg := wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Get Resource failed: ")
		if !strings.Contains(msg, tc.detail) {
			t.Errorf("%q: message %q does not name %q", tc.uri, msg, tc.detail)
		}
	}
}

// encryptLayer encrypts plain as `cocoonctl encrypt` does, with the KEK at
// kid, and returns the ciphertext and the descriptor annotations.
func encryptLayer(t *testing.T, plain, kek []byte, kid string) ([]byte, map[string]string) {
	t.Helper()
	e, err := decrypt.NewEncrypter(bytes.NewReader(plain), digest.FromBytes(plain))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := e.Annotations(kek, kid)
	if err != nil {
		t.Fatal(err)
	}
	return ct, ann
}

// TestUnWrapKeyRoundTrip plays ocicrypt's keyprovider client: the request
// is ocicrypt's KeyProviderKeyWrapProtocolInput JSON carrying the
// attestation-agent annotation packet, and the answer, decoded as ocicrypt
// decodes KeyProviderKeyWrapProtocolOutput, must decrypt the layer.
func TestUnWrapKeyRoundTrip(t *testing.T) {
	kek := bytes.Repeat([]byte{0x42}, decrypt.KEKSize)
	const kid = "kbs:///default/image-kek/1"
	k := startKBS(t)
	k.put(t, "default/image-kek/1", kek)
	c := keyproviderpb.NewKeyProviderServiceClient(serve(t, cdh.Options{Resources: k.client(t)}))
	ctx := context.Background()

	plain := bytes.Repeat([]byte("layer bytes "), 1000)
	ct, ann := encryptLayer(t, plain, kek, kid)
	packet, err := base64Decode(ann[decrypt.AnnotationAttestationAgent])
	if err != nil {
		t.Fatal(err)
	}
	in := unwrapRequest(t, packet)
	resp, err := c.UnWrapKey(ctx, &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
	if err != nil {
		t.Fatal(err)
	}
	raw := resp.GetKeyProviderKeyWrapProtocolOutput()
	// Upstream's serde writes optsdata as an array of byte values.
	if !bytes.HasPrefix(raw, []byte(`{"keyunwrapresults":{"optsdata":[`)) || !bytes.HasSuffix(raw, []byte(`]}}`)) {
		t.Fatalf("output is not shaped as upstream's: %.60s...", raw)
	}
	var out ocicryptOutput
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	priv, err := decrypt.ParsePrivateOptions(out.KeyUnwrapResults.OptsData)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := decrypt.ParsePublicOptions(ann[decrypt.AnnotationPubOpts])
	if err != nil {
		t.Fatal(err)
	}
	lbch, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := lbch.Decrypt(bytes.NewReader(ct), blockcipher.LayerBlockCipherOptions{Public: *pub, Private: *priv})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("unwrapped key does not decrypt the layer")
	}

	t.Run("wrong KEK", func(t *testing.T) {
		_, ann := encryptLayer(t, plain, bytes.Repeat([]byte{7}, decrypt.KEKSize), kid)
		packet, _ := base64Decode(ann[decrypt.AnnotationAttestationAgent])
		_, err := c.UnWrapKey(ctx, &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: unwrapRequest(t, packet)})
		msg := wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Decrypt Image (UnwrapKey) failed: ")
		if !strings.Contains(msg, kid) {
			t.Fatalf("message %q does not name the KEK", msg)
		}
	})
	t.Run("unparsable requests", func(t *testing.T) {
		for _, in := range []string{
			``,
			`not json`,
			`{"keywrapparams":{},"keyunwrapparams":{"annotation":"e30="}}`,
			`{"op":"keyunwrap","keyunwrapparams":{"annotation":"e30="}}`,
			`{"op":"keyunwrap","keywrapparams":{}}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{}}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"annotation":"not base64!"}}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"annotation":7}}`,
			`{"op":null,"keywrapparams":{},"keyunwrapparams":{"annotation":"e30="}}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":null}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"Annotation":"e30="}}`,
			`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"annotation":"e30"}}`,
		} {
			_, err := c.UnWrapKey(ctx, &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte(in)})
			if msg := wantStatus(t, err, codes.Internal, "[ERROR] UnwrapKey Parse request failed"); msg != "[ERROR] UnwrapKey Parse request failed" {
				t.Errorf("%s: message %q", in, msg)
			}
		}
	})
	t.Run("bad packet", func(t *testing.T) {
		in := `{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"annotation":"e30="}}` // "{}"
		_, err := c.UnWrapKey(ctx, &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte(in)})
		wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Decrypt Image (UnwrapKey) failed: ")
	})
	t.Run("WrapKey", func(t *testing.T) {
		_, err := c.WrapKey(ctx, &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
		if msg := wantStatus(t, err, codes.NotFound, "/keyprovider.KeyProviderService/WrapKey is not supported"); msg != "/keyprovider.KeyProviderService/WrapKey is not supported" {
			t.Fatalf("message %q", msg)
		}
	})
}

// fakePuller and fakeMounter record what the services pass through.
type fakePuller struct {
	url, bundle string
	err         error
}

func (f *fakePuller) PullImage(_ context.Context, url, bundle string) (string, error) {
	f.url, f.bundle = url, bundle
	return "sha256:" + strings.Repeat("ab", 32), f.err
}

type fakeMounter struct {
	req *cdhpb.SecureMountRequest
	err error
}

func (f *fakeMounter) SecureMount(_ context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error) {
	f.req = &cdhpb.SecureMountRequest{VolumeType: volumeType, Options: options, Flags: flags, MountPoint: mountPoint}
	return mountPoint, f.err
}

func TestPullImageAndSecureMountDelegate(t *testing.T) {
	p, m := &fakePuller{}, &fakeMounter{}
	conn := serve(t, cdh.Options{Images: p, Mounter: m})
	pull, mount := cdhpb.NewImagePullServiceClient(conn), cdhpb.NewSecureMountServiceClient(conn)
	ctx := context.Background()

	out, err := pull.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: "registry.example/app:1", BundlePath: "/run/kata-containers/c1"})
	if err != nil {
		t.Fatal(err)
	}
	if out.GetManifestDigest() != "sha256:"+strings.Repeat("ab", 32) || p.url != "registry.example/app:1" || p.bundle != "/run/kata-containers/c1" {
		t.Fatalf("reply %q, puller saw %q %q", out.GetManifestDigest(), p.url, p.bundle)
	}
	p.err = errors.New("Image policy rejected: Denied by policy")
	_, err = pull.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: "registry.example/bad:1", BundlePath: "/b"})
	if msg := wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Image Pull error: "); msg != "[CDH] [ERROR]: Image Pull error: Image policy rejected: Denied by policy" {
		t.Fatalf("message %q", msg)
	}

	req := &cdhpb.SecureMountRequest{
		VolumeType: "block-device",
		Options:    map[string]string{"deviceId": "7:0", "sourceType": "empty", "targetType": "fileSystem"},
		Flags:      []string{"nosuid"},
		MountPoint: "/run/vol",
	}
	if _, err := mount.SecureMount(ctx, req); err != nil {
		t.Fatal(err)
	}
	if m.req.GetVolumeType() != req.VolumeType || m.req.GetMountPoint() != req.MountPoint || len(m.req.GetOptions()) != 3 || m.req.GetOptions()["deviceId"] != "7:0" || len(m.req.GetFlags()) != 1 || m.req.GetFlags()[0] != "nosuid" {
		t.Fatalf("mounter saw %v", m.req)
	}
	m.err = errors.New("unknown volume type")
	_, err = mount.SecureMount(ctx, req)
	wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Secure Mount failed: unknown volume type")
}

// TestNotConfigured: a service without its backend answers with upstream's
// error class instead of failing the connection.
func TestNotConfigured(t *testing.T) {
	conn := serve(t, cdh.Options{})
	ctx := context.Background()
	_, err := cdhpb.NewSealedSecretServiceClient(conn).UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("sealed.a.b.c")})
	wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Unseal Secret failed: ")
	_, err = cdhpb.NewGetResourceServiceClient(conn).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///a/b/c"})
	wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Get Resource failed: ")
	_, err = cdhpb.NewImagePullServiceClient(conn).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: "x", BundlePath: "/b"})
	wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Image Pull error: ")
	_, err = cdhpb.NewSecureMountServiceClient(conn).SecureMount(ctx, &cdhpb.SecureMountRequest{VolumeType: "block-device"})
	wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Secure Mount failed: ")
}

// TestUpstreamMethodPaths calls every method by the names upstream's
// clients put on the wire ("/<package>.<Service>/<Method>").
func TestUpstreamMethodPaths(t *testing.T) {
	c := serve(t, cdh.Options{})
	ctx := context.Background()
	for _, m := range []struct {
		service, method string
		req, resp       proto.Message
	}{
		{"api.SealedSecretService", "UnsealSecret", &cdhpb.UnsealSecretInput{}, &cdhpb.UnsealSecretOutput{}},
		{"api.GetResourceService", "GetResource", &cdhpb.GetResourceRequest{}, &cdhpb.GetResourceResponse{}},
		{"api.SecureMountService", "SecureMount", &cdhpb.SecureMountRequest{}, &cdhpb.SecureMountResponse{}},
		{"api.ImagePullService", "PullImage", &cdhpb.ImagePullRequest{}, &cdhpb.ImagePullResponse{}},
		{"keyprovider.KeyProviderService", "UnWrapKey", &keyproviderpb.KeyProviderKeyWrapProtocolInput{}, &keyproviderpb.KeyProviderKeyWrapProtocolOutput{}},
		{"keyprovider.KeyProviderService", "WrapKey", &keyproviderpb.KeyProviderKeyWrapProtocolInput{}, &keyproviderpb.KeyProviderKeyWrapProtocolOutput{}},
	} {
		err := c.Call(ctx, m.service, m.method, m.req, m.resp)
		if code := status.Code(err); code == codes.Unimplemented || code == codes.OK {
			t.Errorf("/%s/%s: %v (want the service's own answer, an error without its backend)", m.service, m.method, err)
		}
	}
	// The check above can tell: a name upstream does not use is unknown.
	err := c.Call(ctx, "cdh.SealedSecretService", "UnsealSecret", &cdhpb.UnsealSecretInput{}, &cdhpb.UnsealSecretOutput{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown service answered %v", err)
	}
}

// kata/securemount's Mounter is what the CDH's SecureMount will call.
var _ cdh.SecureMounter = (*securemount.Mounter)(nil)

// TestSecureMountRefusals goes through the real kata/securemount: requests
// it refuses before touching any device reach the client as upstream's
// error class, with its reason.
func TestSecureMountRefusals(t *testing.T) {
	m := securemount.New(securemount.Options{RuntimeDir: t.TempDir(), SysfsDir: t.TempDir()})
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	c := cdhpb.NewSecureMountServiceClient(serve(t, cdh.Options{Mounter: m}))
	mp := filepath.Join(t.TempDir(), "mnt")
	for _, req := range []*cdhpb.SecureMountRequest{
		{VolumeType: "nfs", MountPoint: mp},
		{VolumeType: "block-device", Options: map[string]string{"devicePath": "/dev/null", "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem", "dataIntegrity": "true"}, MountPoint: mp},
	} {
		_, err := c.SecureMount(context.Background(), req)
		wantStatus(t, err, codes.Internal, "[CDH] [ERROR]: Secure Mount failed: ")
	}
	if _, err := os.Stat(mp); err == nil {
		if ents, _ := os.ReadDir(mp); len(ents) != 0 {
			t.Fatalf("mount point holds %v", ents)
		}
	}
}
