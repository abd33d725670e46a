package kbs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func readJSON(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestRuntimeDataBindingVector(t *testing.T) {
	var v struct {
		Upstream struct {
			Structured map[string]any `json:"structured"`
			SHA384     string         `json:"sha384_of_jcs_hex"`
		} `json:"upstream_vector"`
		Derived struct {
			RuntimeData struct {
				TEEPubKey  TEEPubKey `json:"tee-pubkey"`
				Nonce      string    `json:"nonce"`
				Additional string    `json:"additional-evidence"`
			} `json:"runtime_data"`
			JCS       string `json:"jcs_bytes"`
			SHA384    string `json:"sha384_hex"`
			TDX64     string `json:"tdx_report_data_64_hex"`
			SampleB64 string `json:"sample_evidence_report_data_b64"`
		} `json:"derived_kbs_vector"`
	}
	readJSON(t, "runtime-data-binding.json", &v)

	t.Run("upstream JCS", func(t *testing.T) {
		c, err := CanonicalJSON(v.Upstream.Structured)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha512.Sum384(c)
		if got := hex.EncodeToString(sum[:]); got != v.Upstream.SHA384 {
			t.Fatalf("sha384(JCS) = %s, want %s", got, v.Upstream.SHA384)
		}
	})
	t.Run("KBS binding", func(t *testing.T) {
		rd := v.Derived.RuntimeData
		if err := rd.TEEPubKey.Validate(); err != nil {
			t.Fatalf("vector JWK rejected: %v", err)
		}
		b, err := RuntimeDataBinding(rd.TEEPubKey, rd.Nonce, rd.Additional)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != v.Derived.JCS {
			t.Fatalf("JCS\n got %s\nwant %s", b, v.Derived.JCS)
		}
		sum, err := ReportData(SHA384, rd.TEEPubKey, rd.Nonce, rd.Additional)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(sum); got != v.Derived.SHA384 {
			t.Fatalf("report data %s, want %s", got, v.Derived.SHA384)
		}
		padded := make([]byte, 64)
		copy(padded, sum)
		if got := hex.EncodeToString(padded); got != v.Derived.TDX64 {
			t.Fatalf("TDX report data %s, want %s", got, v.Derived.TDX64)
		}
		if got := base64.StdEncoding.EncodeToString(sum); got != v.Derived.SampleB64 {
			t.Fatalf("sample report data %s, want %s", got, v.Derived.SampleB64)
		}
	})
}

func TestDecryptGeneratedVector(t *testing.T) {
	var v struct {
		Priv     jose.JSONWebKey `json:"tee_private_key_jwk"`
		Header   string          `json:"protected_header_json"`
		Expected string          `json:"expected_plaintext"`
		Response json.RawMessage `json:"kbs_response"`
	}
	readJSON(t, "jwe-ecdh-es-a256kw-p256.generated.json", &v)
	ec, ok := v.Priv.Key.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("vector key is %T", v.Priv.Key)
	}
	k := &TEEKey{algorithm: KeyAlgorithmP256, ec: ec}
	pt, err := k.DecryptResponse(v.Response)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != v.Expected {
		t.Fatalf("plaintext %q, want %q", pt, v.Expected)
	}
	// Our encoder writes the header in the same shape as the vector's.
	resp, err := EncryptResponse(k.PublicJWK(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	hdr := protectedJSON(t, resp)
	if !strings.HasPrefix(hdr, `{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"`) {
		t.Fatalf("header %s does not follow the vector's member order %s", hdr, v.Header)
	}
	// Tampering with the AAD (the protected header) must fail.
	var r Response
	_ = json.Unmarshal(v.Response, &r)
	h, _ := base64.RawURLEncoding.DecodeString(r.Protected)
	r.Protected = base64.RawURLEncoding.EncodeToString(bytes.Replace(h, []byte(`"enc":"A256GCM",`), []byte(`"enc":"A256GCM", `), 1))
	tampered, _ := json.Marshal(r)
	if _, err := k.DecryptResponse(tampered); err == nil {
		t.Fatal("decrypted a response whose protected header was altered")
	}
}

func protectedJSON(t *testing.T, resp []byte) string {
	t.Helper()
	var r Response
	if err := json.Unmarshal(resp, &r); err != nil {
		t.Fatal(err)
	}
	h, err := base64.RawURLEncoding.DecodeString(r.Protected)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// rustAAD rebuilds the protected header as guest-components does before
// using it as AAD: alg, enc, then the other members through a serde_json
// Map (a BTreeMap: keys sorted at every level), compact.
func rustAAD(t *testing.T, header string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(header), &m); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	alg, _ := json.Marshal(m["alg"])
	enc, _ := json.Marshal(m["enc"])
	b.WriteString(`{"alg":` + string(alg) + `,"enc":` + string(enc))
	delete(m, "alg")
	delete(m, "enc")
	if len(m) > 0 {
		rest, _ := json.Marshal(m) // encoding/json sorts map keys
		b.WriteString("," + string(rest[1:len(rest)-1]))
	}
	b.WriteString("}")
	return base64.RawURLEncoding.EncodeToString([]byte(b.String()))
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	for _, alg := range []string{KeyAlgorithmP256, KeyAlgorithmP521, KeyAlgorithmRSAOAEP} {
		t.Run(alg, func(t *testing.T) {
			k, err := GenerateTEEKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			plain := []byte("secret resource \x00\xff")
			resp, err := EncryptResponse(k.PublicJWK(), plain)
			if err != nil {
				t.Fatal(err)
			}
			var r Response
			_ = json.Unmarshal(resp, &r)
			if got := rustAAD(t, protectedJSON(t, resp)); got != r.Protected {
				t.Fatalf("Rust client would rebuild the AAD as %s, server sent %s", got, r.Protected)
			}
			if r.AAD != "" || strings.Contains(string(resp), `"aad"`) {
				t.Fatal("server must leave aad unset")
			}
			iv, _ := base64.RawURLEncoding.DecodeString(r.IV)
			tag, _ := base64.RawURLEncoding.DecodeString(r.Tag)
			if len(iv) != 12 || len(tag) != 16 {
				t.Fatalf("iv %d bytes, tag %d bytes", len(iv), len(tag))
			}
			got, err := k.DecryptResponse(resp)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("round trip gave %q", got)
			}
			other, _ := GenerateTEEKey(alg)
			if _, err := other.DecryptResponse(resp); err == nil {
				t.Fatal("another key decrypted the response")
			}
			// PEM export and re-import keep the key usable.
			p, err := k.PrivatePEM()
			if err != nil {
				t.Fatal(err)
			}
			k2, err := ParseTEEKeyPEM(p)
			if err != nil {
				t.Fatal(err)
			}
			if k2.Algorithm() != alg {
				t.Fatalf("re-imported key algorithm %s", k2.Algorithm())
			}
			if got, err := k2.DecryptResponse(resp); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("re-imported key: %v", err)
			}
		})
	}
}

func TestJWKFixedLength(t *testing.T) {
	for _, tc := range []struct {
		alg  string
		size int
	}{{KeyAlgorithmP256, 32}, {KeyAlgorithmP521, 66}} {
		t.Run(tc.alg, func(t *testing.T) {
			// Generate enough keys that some coordinates have leading zeros.
			for range 300 {
				k, err := GenerateTEEKey(tc.alg)
				if err != nil {
					t.Fatal(err)
				}
				j := k.PublicJWK()
				x, _ := base64.RawURLEncoding.DecodeString(j.X)
				y, _ := base64.RawURLEncoding.DecodeString(j.Y)
				if len(x) != tc.size || len(y) != tc.size {
					t.Fatalf("coordinates of %d and %d bytes, want %d", len(x), len(y), tc.size)
				}
			}
		})
	}
}

func TestTEEPubKeyValidate(t *testing.T) {
	k, _ := GenerateTEEKey(KeyAlgorithmP256)
	good := k.PublicJWK()
	short := good
	xb, _ := base64.RawURLEncoding.DecodeString(good.X)
	short.X = base64.RawURLEncoding.EncodeToString(xb[1:])
	offCurve := good
	offCurve.Y = good.X
	wrongAlg := good
	wrongAlg.Alg = "RSA-OAEP-256"
	r, _ := GenerateTEEKey(KeyAlgorithmRSAOAEP)
	rsaGood := r.PublicJWK()
	rsaSmall := rsaGood
	rsaSmall.N = base64.RawURLEncoding.EncodeToString([]byte{0xff, 0xff})
	tests := []struct {
		name string
		key  TEEPubKey
		ok   bool
	}{
		{"p256", good, true},
		{"rsa", rsaGood, true},
		{"short coordinate", short, false},
		{"off curve", offCurve, false},
		{"wrong alg", wrongAlg, false},
		{"small rsa", rsaSmall, false},
		{"no kty", TEEPubKey{}, false},
		{"akp", TEEPubKey{Kty: "AKP", Alg: "ML-KEM-768+A192KW"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.key.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMessageWireShapes(t *testing.T) {
	k, _ := GenerateTEEKey(KeyAlgorithmRSAOAEP)
	rsaJWK, _ := json.Marshal(k.PublicJWK())
	if !strings.HasPrefix(string(rsaJWK), `{"kty":"RSA","alg":"RSA-OAEP-256","n":"`) {
		t.Fatalf("RSA JWK %s", rsaJWK)
	}
	ek, _ := GenerateTEEKey("")
	ecJWK, _ := json.Marshal(ek.PublicJWK())
	if !strings.HasPrefix(string(ecJWK), `{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"`) {
		t.Fatalf("EC JWK %s", ecJWK)
	}
	req, _ := json.Marshal(Request{Version: ProtocolVersion, TEE: "sample",
		ExtraParams: json.RawMessage(`{"supported-hash-algorithms":["sha256","sha384","sha512"]}`)})
	if want := `{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512"]}}`; string(req) != want {
		t.Fatalf("Request %s", req)
	}
	att, _ := json.Marshal(Attestation{RuntimeData: RuntimeData{Nonce: "n", TEEPubKey: TEEPubKey{Kty: "EC"}},
		TEEEvidence: CompositeEvidence{PrimaryEvidence: json.RawMessage(`{}`)}})
	if want := `{"init-data":null,"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC","alg":""}},"tee-evidence":{"primary_evidence":{},"additional_evidence":""}}`; string(att) != want {
		t.Fatalf("Attestation\n got %s\nwant %s", att, want)
	}
}

func TestKbsTypesResponseVector(t *testing.T) {
	var v struct {
		AAD      string          `json:"aad"`
		Example  json.RawMessage `json:"response_example"`
		Protocol struct {
			Alg string `json:"alg"`
			Enc string `json:"enc"`
		} `json:"protected_header"`
	}
	readJSON(t, "kbs-types-jwe-serialization.json", &v)
	r, err := ParseResponse(v.Example)
	if err != nil {
		t.Fatal(err)
	}
	if r.AAD != "fakeaad" {
		t.Fatalf("aad = %q, want the raw string", r.AAD)
	}
	if got := rustAAD(t, `{"alg":"fakealg","enc":"fakeenc"}`); got != v.AAD {
		t.Fatalf("AAD %s, want %s", got, v.AAD)
	}
}

func TestSelectedHashAlgorithm(t *testing.T) {
	tests := []struct {
		extra string
		want  HashAlgorithm
		err   bool
	}{
		{`""`, SHA384, false},
		{``, SHA384, false},
		{`{}`, SHA384, false},
		{`{"selected-hash-algorithm":"SHA512"}`, SHA512, false},
		{`{"selected-hash-algorithm":"sha256"}`, SHA256, false},
		{`{"selected-hash-algorithm":"sm3"}`, "", true},
		{`{"selected-hash-algorithm":5}`, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.extra, func(t *testing.T) {
			c := Challenge{Nonce: "n", ExtraParams: json.RawMessage(tc.extra)}
			got, err := c.SelectedHashAlgorithm()
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}

func TestParseResourceURI(t *testing.T) {
	tests := []struct {
		in, path, host string
		err            bool
	}{
		{"kbs:///default/key/1", "resource/default/key/1", "", false},
		{"kbs://kbs.example:8080/repo/type/tag", "resource/repo/type/tag", "kbs.example:8080", false},
		{"default/key/1", "resource/default/key/1", "", false},
		{"kbs:///a/b/c?x=1", "resource/a/b/c?x=1", "", false},
		{"kbs+plugin:///p/q", "plugin/p/q", "", false},
		// The scheme is case-insensitive, as URL parsing makes it upstream.
		{"KBS:///default/key/1", "resource/default/key/1", "", false},
		{"Kbs+Plugin:///p/q", "plugin/p/q", "", false},
		{"\u212abs:///default/key/1", "", "", true}, // Kelvin sign: no Unicode folding
		{"kbs:///a/b", "", "", true},
		{"kbs:///a/../c", "", "", true},
		{"kbs:///a/b/.c", "", "", true},
		{"kbs:///a/b/c/d", "", "", true},
		{"http://x/a/b/c", "", "", true},
		{"a/b/%2e%2e", "", "", true},
		{"", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			u, err := ParseResourceURI(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (u.RequestPath() != tc.path || u.Host != tc.host) {
				t.Fatalf("path %q host %q", u.RequestPath(), u.Host)
			}
		})
	}
}

func TestParseTokenTimes(t *testing.T) {
	enc := func(s string) string { return "e30." + base64.RawURLEncoding.EncodeToString([]byte(s)) + ".c2ln" }
	now := time.Unix(1000, 0)
	tests := []struct {
		name  string
		token string
		valid bool
		err   bool
	}{
		{"valid", enc(`{"exp":2000,"nbf":500}`), true, false},
		{"expired", enc(`{"exp":999}`), false, false},
		{"not yet", enc(`{"exp":2000,"nbf":1001}`), false, false},
		{"no times", enc(`{}`), true, false},
		{"float exp", enc(`{"exp":2000.5}`), true, false},
		{"string exp", enc(`{"exp":"2000"}`), false, true},
		{"negative", enc(`{"exp":-1}`), false, true},
		{"two parts", "a.b", false, true},
		{"bad b64", "a.*.c", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tt, err := ParseTokenTimes(tc.token)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v", err)
			}
			if err == nil && tt.ValidAt(now) != tc.valid {
				t.Fatalf("ValidAt = %v", !tc.valid)
			}
		})
	}
}

// TestGoJoseHeaderBreaksRustAAD is why EncryptResponse writes its protected
// header by hand: the header go-jose writes for the same JWE is not the one
// the Rust client rebuilds as AAD, so that client could not decrypt it.
func TestGoJoseHeaderBreaksRustAAD(t *testing.T) {
	k, err := GenerateTEEKey(KeyAlgorithmP256)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &k.ec.PublicKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	var r Response
	if err := json.Unmarshal([]byte(obj.FullSerialize()), &r); err != nil {
		t.Fatal(err)
	}
	h, err := base64.RawURLEncoding.DecodeString(r.Protected)
	if err != nil {
		t.Fatal(err)
	}
	if got := rustAAD(t, string(h)); got == r.Protected {
		t.Fatalf("go-jose header %s now survives the Rust rebuild; EncryptResponse could use go-jose", h)
	}
	// Ours does (the same check as TestEncryptDecryptRoundTrip).
	ours, err := EncryptResponse(k.PublicJWK(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(ours, &r)
	if rustAAD(t, protectedJSON(t, ours)) != r.Protected {
		t.Fatal("our header does not survive the Rust rebuild")
	}
}

// TestPublicJWKWireBytes: the tee-pubkey go-jose encodes is byte for byte
// the kbs-types JWK (members in kbs-types order, EC coordinates padded to
// the curve size, RSA n and e minimal big-endian).
func TestPublicJWKWireBytes(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	for _, alg := range []string{KeyAlgorithmP256, KeyAlgorithmP521, KeyAlgorithmRSAOAEP} {
		t.Run(alg, func(t *testing.T) {
			k, err := GenerateTEEKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			var want string
			if k.rsa != nil {
				e := big.NewInt(int64(k.rsa.E)).Bytes()
				want = `{"kty":"RSA","alg":"RSA-OAEP-256","n":"` + b64(k.rsa.N.Bytes()) + `","e":"` + b64(e) + `"}`
			} else {
				pt, err := k.ec.PublicKey.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				size, crv := (len(pt)-1)/2, "P-256"
				if alg == KeyAlgorithmP521 {
					crv = "P-521"
				}
				want = `{"kty":"EC","crv":"` + crv + `","alg":"ECDH-ES+A256KW","x":"` + b64(pt[1:1+size]) + `","y":"` + b64(pt[1+size:]) + `"}`
			}
			got, err := json.Marshal(k.PublicJWK())
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Fatalf("tee-pubkey\n got %s\nwant %s", got, want)
			}
		})
	}
}

// TestTEEPubKeyDecoding covers what moving JWK decoding to go-jose could
// change: extra members, other key types and curves, and RSA sizes beyond
// go-jose's own 4096-bit cap.
func TestTEEPubKeyDecoding(t *testing.T) {
	k, _ := GenerateTEEKey(KeyAlgorithmP256)
	good, _ := json.Marshal(k.PublicJWK())
	var m map[string]any
	_ = json.Unmarshal(good, &m)
	with := func(extra map[string]any) []byte {
		c := map[string]any{}
		for a, b := range m {
			c[a] = b
		}
		for a, b := range extra {
			if b == nil {
				delete(c, a)
			} else {
				c[a] = b
			}
		}
		b, _ := json.Marshal(c)
		return b
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384JWK, _ := json.Marshal(jose.JSONWebKey{Key: &p384.PublicKey, Algorithm: jweAlgECDHESA256KW})
	// A modulus of n bits: odd, top bit set. Only its size is checked.
	modulus := func(bits int) string {
		n := make([]byte, (bits+7)/8)
		_, _ = rand.Read(n)
		n[0] |= 0x80
		n[len(n)-1] |= 1
		return base64.RawURLEncoding.EncodeToString(n)
	}
	rsaJWK := func(n string) []byte {
		return []byte(`{"kty":"RSA","alg":"RSA-OAEP-256","n":"` + n + `","e":"AQAB"}`)
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"p256", good, true},
		{"extra members", with(map[string]any{"kid": "k1", "use": "enc", "ext": true, "key_ops": []string{"wrapKey"}}), true},
		{"private member d is not read", with(map[string]any{"d": "AAAA"}), true},
		{"oct", with(map[string]any{"kty": "oct", "k": "AAAA"}), false},
		{"OKP", []byte(`{"kty":"OKP","crv":"X25519","alg":"ECDH-ES+A256KW","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}`), false},
		{"P-384", p384JWK, false},
		{"missing y", with(map[string]any{"y": nil}), false},
		{"padded base64", with(map[string]any{"x": m["x"].(string) + "="}), false},
		{"EC with RSA members", with(map[string]any{"n": "AQAB"}), false},
		{"rsa 6144 bits", rsaJWK(modulus(6144)), true},
		{"rsa 8192 bits", rsaJWK(modulus(8192)), true},
		{"rsa 8200 bits", rsaJWK(modulus(8200)), false},
		{"rsa 1024 bits", rsaJWK(modulus(1024)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pk TEEPubKey
			err := json.Unmarshal(tc.in, &pk)
			if err == nil {
				err = pk.Validate()
			}
			if (err == nil) != tc.ok {
				t.Fatalf("%s: err = %v, want ok=%v", tc.in, err, tc.ok)
			}
		})
	}
}
