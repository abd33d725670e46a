package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	ocicryptconfig "github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// encTestKBS starts a development KBS holding kek at default/image-kek/1
// and returns its URL and a client using the sample attester.
func encTestKBS(t *testing.T, kek []byte) (string, *kbs.Client) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "default", "image-kek", "1")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { ts.Close(); srv.Close() })
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), HTTPTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ts.URL, c
}

// randomTar is an uncompressed layer blob (a tar archive of random files).
func randomTar(t *testing.T) []byte {
	t.Helper()
	l, err := random.Layer(60<<10, types.OCIUncompressedLayer)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// packetKeyOrder is the JSON key order of coco_keyprovider's annotation packet.
var packetKeyOrder = regexp.MustCompile(`^\{"kid":"[^"]+","wrapped_data":"[A-Za-z0-9+/=]+","iv":"[A-Za-z0-9+/=]{16}","wrap_type":"A256GCM"\}$`)

const kpPLBCO = `{"symkey":"MGXBeFJBl9jBFC+uaL62I4AB33asYz3WzYthKqbSfgA=","digest":"sha256:2e6cce81210ff9fcf4b092cbb319895821d0a3d9fd9c54a509366179a7018012","cipheroptions":{"nonce":"vnWpM/fZ4y5R+4MM9YFQ3A=="}}`

func kpIntArray(b []byte) string {
	s := make([]string, len(b))
	for i, v := range b {
		s[i] = fmt.Sprint(v)
	}
	return "[" + strings.Join(s, ",") + "]"
}

func kpRun(t *testing.T, args []string, stdin string) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	err := runKeyProvider(context.Background(), args, strings.NewReader(stdin), &out)
	return out.Bytes(), err
}

// checkKeyUnwrap unwraps annotation through the key provider, with the
// request and reply in the byte encoding enc, and expects kpPLBCO back.
func checkKeyUnwrap(t *testing.T, kekFile, enc string, wrapped []byte) {
	t.Helper()
	annotation := `"` + base64.StdEncoding.EncodeToString(wrapped) + `"`
	if enc == "array" {
		annotation = kpIntArray(wrapped)
	}
	out, err := kpRun(t, []string{"--key-file", kekFile, "--byte-encoding", enc},
		`{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":{}},"annotation":`+annotation+`}}`)
	if err != nil {
		t.Fatal(err)
	}
	var unwrapReply struct {
		R struct {
			OptsData json.RawMessage `json:"optsdata"`
		} `json:"keyunwrapresults"`
	}
	if err := json.Unmarshal(out, &unwrapReply); err != nil {
		t.Fatalf("reply %s: %v", out, err)
	}
	var got flexBytes
	if err := json.Unmarshal(unwrapReply.R.OptsData, &got); err != nil {
		t.Fatal(err)
	}
	if string(got) != kpPLBCO {
		t.Fatalf("%s: optsdata %s", enc, got)
	}
	if isArray := bytes.HasPrefix(unwrapReply.R.OptsData, []byte("[")); isArray != (enc == "array") {
		t.Fatalf("reply encoding %s for --byte-encoding %s", unwrapReply.R.OptsData, enc)
	}
}

func TestKeyProviderWrapUnwrap(t *testing.T) {
	_, kekFile := encTestKEK(t)
	const kid = "kbs:///default/image-kek/1"
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	params := "keyid=" + kid + "::keypath=" + kekFile
	tests := []struct {
		name, request string
		args          []string
	}{
		{"base64 fields (Go ocicrypt)",
			`{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` + b64(params) + `"]},"DecryptConfig":{"Parameters":{}}},"optsdata":"` + b64(kpPLBCO) + `"},"keyunwrapparams":{"dc":null,"annotation":null}}`,
			nil},
		{"integer-array fields (ocicrypt-rs)",
			`{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[` + kpIntArray([]byte(params)) + `]},"DecryptConfig":null},"optsdata":` + kpIntArray([]byte(kpPLBCO)) + `},"keyunwrapparams":{"dc":null,"annotation":null}}`,
			nil},
		{"kid and key from flags",
			`{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` + b64("Enabled") + `"]}},"optsdata":"` + b64(kpPLBCO) + `"}}`,
			[]string{"--kid", kid, "--key-file", kekFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := kpRun(t, tt.args, tt.request)
			if err != nil {
				t.Fatal(err)
			}
			var wrapReply struct {
				R struct {
					Annotation []byte `json:"annotation"`
				} `json:"keywrapresults"`
			}
			if err := json.Unmarshal(out, &wrapReply); err != nil {
				t.Fatalf("reply %s: %v", out, err)
			}
			if !packetKeyOrder.Match(wrapReply.R.Annotation) {
				t.Fatalf("annotation %s", wrapReply.R.Annotation)
			}
			for _, enc := range []string{"base64", "array"} {
				checkKeyUnwrap(t, kekFile, enc, wrapReply.R.Annotation)
			}
		})
	}
}

func TestKeyProviderRejects(t *testing.T) {
	_, kekFile := encTestKEK(t)
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	wrap := func(params string) string {
		return `{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` + b64(params) + `"]}},"optsdata":"` + b64(kpPLBCO) + `"}}`
	}
	tests := []struct {
		name, request, want string
		args                []string
	}{
		{"no kid", wrap("keypath=" + kekFile), "no keyid", nil},
		{"kid not a URI", wrap("keyid=/default/image-kek/1::keypath=" + kekFile), "not a kbs", nil},
		{"sample mode", wrap("sample=true"), "sample=true", nil},
		{"unknown parameter", wrap("keyid=kbs:///a/b/c::color=red"), "unknown key provider parameter", nil},
		{"no KEK source", wrap("keyid=kbs:///a/b/c"), "no --kbs-url", nil},
		{"unknown op", `{"op":"rewrap"}`, "unknown key provider op", nil},
		{"not JSON", `op=keywrap`, "parse key provider request", nil},
		{"byte out of range", `{"op":"keywrap","keywrapparams":{"optsdata":[1,256]}}`, "not a byte", nil},
		{"unwrap garbage", `{"op":"keyunwrap","keyunwrapparams":{"annotation":"` + b64("FEASWRAP:x") + `"}}`, "parse annotation packet", []string{"--key-file", kekFile}},
		{"unwrap wrong key", "", "wrong key", []string{"--key-file", kekFile}},
	}
	// A packet wrapped with another KEK for the last case.
	otherKEK, _ := encTestKEK(t)
	packet, err := decrypt.WrapKey(otherKEK, "kbs:///a/b/c", []byte(kpPLBCO))
	if err != nil {
		t.Fatal(err)
	}
	tests[len(tests)-1].request = `{"op":"keyunwrap","keyunwrapparams":{"annotation":"` + base64.StdEncoding.EncodeToString(packet) + `"}}`
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := kpRun(t, tt.args, tt.request)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v (out %s), want %q", err, out, tt.want)
			}
		})
	}
}

// TestKeyProviderCapturedRequests feeds the requests ocicrypt v1.3.2 was
// seen sending to a cmd key provider.
func TestKeyProviderCapturedRequests(t *testing.T) {
	_, kekFile := encTestKEK(t)
	for _, f := range []string{"keyprovider-keywrap-request.json", "keyprovider-keyunwrap-request.json"} {
		t.Run(f, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", f))
			if err != nil {
				t.Fatal(err)
			}
			var v struct {
				StdinRaw string `json:"stdin_raw"`
			}
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			in, err := parseKeyProviderInput([]byte(v.StdinRaw))
			if err != nil {
				t.Fatal(err)
			}
			switch in.Op {
			case "keywrap":
				if string(in.KeyWrapParams.OptsData) != kpPLBCO || string(in.KeyWrapParams.EC.Parameters["myprov"][0]) != "xyz" {
					t.Fatalf("parsed %+v", in.KeyWrapParams)
				}
				// Registered as "myprov", with the KEK and kid from flags.
				_, err := kpRun(t, []string{"--provider", "myprov", "--kid", "kbs:///a/b/c", "--key-file", kekFile}, v.StdinRaw)
				if err == nil || !strings.Contains(err.Error(), `"xyz" is not key=value`) {
					t.Fatalf("myprov params: %v", err)
				}
				out, err := kpRun(t, []string{"--provider", "attestation-agent", "--kid", "kbs:///a/b/c", "--key-file", kekFile}, v.StdinRaw)
				if err != nil || !bytes.HasPrefix(out, []byte(`{"keywrapresults":{"annotation":"`)) {
					t.Fatalf("wrap: %s, %v", out, err)
				}
			case "keyunwrap":
				if !bytes.HasPrefix(in.KeyUnwrapParams.Annotation, []byte("FEASWRAP:")) || string(in.KeyUnwrapParams.DC.Parameters["myprov"][0]) != "abc" {
					t.Fatalf("parsed %+v", in.KeyUnwrapParams)
				}
			default:
				t.Fatalf("op %s", in.Op)
			}
		})
	}
}

func FuzzKeyProviderInput(f *testing.F) {
	f.Add([]byte(`{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["a2V5aWQ9a2JzOi8vL2EvYi9j"]},"DecryptConfig":{"Parameters":{}}},"optsdata":"e30="},"keyunwrapparams":{"dc":null,"annotation":null}}`))
	f.Add([]byte(`{"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"x":[[1,2,3]]}},"annotation":[123,125]}}`))
	f.Add([]byte(`{"op":"keyunwrap","keyunwrapparams":{"annotation":"eyJraWQiOiJrYnM6Ly8vYS9iL2MiLCJ3cmFwcGVkX2RhdGEiOiJBQT09IiwiaXYiOiJBQUFBQUFBQUFBQUFBQUFBIiwid3JhcF90eXBlIjoiQTI1NkdDTSJ9"}}`))
	kek := bytes.Repeat([]byte{1}, 32)
	kekFile := filepath.Join(f.TempDir(), "kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := parseKeyProviderInput(b)
		if err != nil {
			return
		}
		if in.Op != "keywrap" && in.Op != "keyunwrap" {
			t.Fatalf("accepted op %q", in.Op)
		}
		if in.KeyWrapParams.EC != nil {
			for _, v := range in.KeyWrapParams.EC.Parameters["attestation-agent"] {
				_, _ = parseWrapParams(string(v))
			}
		}
		c := keyProviderConfig{provider: "attestation-agent", keyFile: kekFile, kid: "kbs:///a/b/c",
			kbsClient: func() (decrypt.ResourceGetter, error) { return nil, fmt.Errorf("no KBS in fuzzing") }}
		_, _ = c.handle(context.Background(), in)
	})
}

var registerKeyProviderOnce sync.Once

// TestKeyProviderWithOcicrypt builds cocoonctl and registers it as the
// attestation-agent cmd key provider of ocicrypt v1.3.2 (through
// OCICRYPT_KEYPROVIDER_CONFIG), then encrypts and decrypts a layer with
// ocicrypt as a library: wrap with the KEK file, unwrap through the KBS
// after sample attestation. It also checks that layers encrypted by
// image/decrypt and by ocicrypt decrypt with the other side.
// useCocoonctlKeyProvider builds cocoonctl and registers it with ocicrypt
// as the attestation-agent key provider, talking to the KBS at kbsURL.
func useCocoonctlKeyProvider(t *testing.T, kbsURL string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cocoonctl")
	build := exec.Command("go", "build", "-tags", "containers_image_openpgp", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cocoonctl: %v\n%s", err, out)
	}
	cfg, _ := json.Marshal(map[string]any{"key-providers": map[string]any{
		"attestation-agent": map[string]any{"cmd": map[string]any{
			"path": bin,
			"args": []string{"keyprovider", "--kbs-url", kbsURL, "--tee", "sample"},
		}},
	}})
	cfgFile := filepath.Join(t.TempDir(), "ocicrypt_keyprovider.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(keyproviderconfig.ENVVARNAME, cfgFile)
	ic, err := keyproviderconfig.GetConfiguration()
	if err != nil || ic == nil {
		t.Fatalf("ocicrypt config: %v", err)
	}
	// ocicrypt reads the variable in its init; this process set it later,
	// so register what it would have registered.
	registerKeyProviderOnce.Do(func() {
		for p, attrs := range ic.KeyProviderConfig {
			ocicrypt.RegisterKeyWrapper("provider."+p, keyprovider.NewKeyWrapper(p, attrs))
		}
	})
}

// encryptedLayer is a layer blob's ciphertext and its descriptor.
type encryptedLayer struct {
	name string
	ct   []byte
	desc ocispec.Descriptor
}

// ocicryptEncrypt encrypts blob with ocicrypt, wrapping through `cocoonctl
// keyprovider` keywrap.
func ocicryptEncrypt(t *testing.T, blob []byte, desc ocispec.Descriptor, kid, kekFile string) encryptedLayer {
	t.Helper()
	cc, err := ocicryptconfig.EncryptWithKeyProvider([][]byte{[]byte("attestation-agent:keyid=" + kid + "::keypath=" + kekFile)})
	if err != nil {
		t.Fatal(err)
	}
	encReader, fin, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(blob), desc)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := io.ReadAll(encReader)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := fin()
	if err != nil {
		t.Fatalf("ocicrypt encrypt through cocoonctl keyprovider: %v", err)
	}
	if len(ann) != 2 || ann[decrypt.AnnotationAttestationAgent] == "" || ann[decrypt.AnnotationPubOpts] == "" {
		t.Fatalf("annotations %v", ann)
	}
	return encryptedLayer{"encrypted by ocicrypt", ct, ocispec.Descriptor{MediaType: desc.MediaType + "+encrypted", Digest: digest.FromBytes(ct), Size: int64(len(ct)), Annotations: ann}}
}

// ourEncrypt encrypts blob with our own layer encryption, as `cocoonctl
// encrypt` does it.
func ourEncrypt(t *testing.T, blob []byte, desc ocispec.Descriptor, kid string, kek []byte) encryptedLayer {
	t.Helper()
	e, err := decrypt.NewEncrypter(bytes.NewReader(blob), desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	ourCT, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	ourAnn, err := e.Annotations(kek, kid)
	if err != nil {
		t.Fatal(err)
	}
	return encryptedLayer{"encrypted by image/decrypt", ourCT, ocispec.Descriptor{MediaType: desc.MediaType + "+encrypted", Digest: digest.FromBytes(ourCT), Size: int64(len(ourCT)), Annotations: ourAnn}}
}

func TestKeyProviderWithOcicrypt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cocoonctl")
	}
	saved := newAttester
	t.Cleanup(func() { newAttester = saved })
	newAttester = func(string) (attest.Attester, error) { return sample.NewAttester(), nil }

	kek, kekFile := encTestKEK(t)
	kbsURL, client := encTestKBS(t, kek)
	useCocoonctlKeyProvider(t, kbsURL)

	const kid = "kbs:///default/image-kek/1"
	blob := randomTar(t)
	desc := ocispec.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	layers := []encryptedLayer{ocicryptEncrypt(t, blob, desc, kid, kekFile), ourEncrypt(t, blob, desc, kid, kek)}

	dc, err := ocicryptconfig.DecryptWithKeyProvider([][]byte{[]byte("attestation-agent")})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		t.Run(l.name+"/ocicrypt decrypts via cocoonctl keyunwrap", func(t *testing.T) {
			// ocicrypt v1.3.2 returns an empty digest here (its blockcipher
			// drops it), so only the bytes are compared.
			plain, _, err := ocicrypt.DecryptLayer(dc.DecryptConfig, bytes.NewReader(l.ct), l.desc, false)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(plain)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob) {
				t.Fatalf("plaintext differs (%d bytes)", len(got))
			}
		})
		t.Run(l.name+"/image/decrypt decrypts through the KBS", func(t *testing.T) {
			r, err := decrypt.NewReader(context.Background(), bytes.NewReader(l.ct), l.desc, decrypt.Options{Resources: client})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Verify(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob) || r.PlainDigest() != desc.Digest {
				t.Fatal("plaintext differs")
			}
		})
	}
}
