package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

func TestSampleHandshakeAndResource(t *testing.T) {
	for _, alg := range []string{kbs.KeyAlgorithmP256, kbs.KeyAlgorithmP521, kbs.KeyAlgorithmRSAOAEP} {
		t.Run(alg, func(t *testing.T) {
			e := newEnv(t, server.Options{})
			secret := []byte("0123456789abcdef0123456789abcdef")
			e.writeResource(t, "default/key/1", secret)
			c := e.client(t, sample.NewAttester(), alg)

			got, err := c.GetResource(bg, "kbs:///default/key/1")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatalf("resource = %q", got)
			}
			// Host is ignored, bare form accepted, token is cached.
			for _, uri := range []string{"kbs://elsewhere:1/default/key/1", "default/key/1"} {
				if got, err := c.GetResource(bg, uri); err != nil || !bytes.Equal(got, secret) {
					t.Fatalf("%s: %q, %v", uri, got, err)
				}
			}
			if n := c.Handshakes(); n != 1 {
				t.Fatalf("%d handshakes for three fetches with a valid token", n)
			}

			tok, keyPEM, err := c.TokenAndKey(bg)
			if err != nil {
				t.Fatal(err)
			}
			key, err := kbs.ParseTEEKeyPEM(keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			claims := tokenClaims(t, tok)
			if claims["eat_profile"] != server.EATProfile {
				t.Fatalf("eat_profile %v", claims["eat_profile"])
			}
			ae := annotated(t, claims)
			if _, ok := ae["sample"].(map[string]any); !ok {
				t.Fatalf("no sample claims: %v", ae)
			}
			rdc, _ := ae["runtime_data_claims"].(map[string]any)
			pkJSON, _ := json.Marshal(rdc["tee-pubkey"])
			var pk kbs.TEEPubKey
			if err := json.Unmarshal(pkJSON, &pk); err != nil || pk != key.PublicJWK() {
				t.Fatalf("token tee-pubkey %s, client key %+v (%v)", pkJSON, key.PublicJWK(), err)
			}
			if _, ok := ae["init_data"]; ok {
				t.Fatal("sample evidence binds no init-data, token must not claim it")
			}
			exp, iat := claims["exp"].(float64), claims["iat"].(float64)
			if exp-iat != server.DefaultTokenLifetime.Seconds() {
				t.Fatalf("token lifetime %v s", exp-iat)
			}
		})
	}
}

func TestDefaultPolicyDeniesSample(t *testing.T) {
	e := newEnv(t, server.Options{Policy: server.DefaultPolicy})
	e.writeResource(t, "default/key/1", []byte("k"))
	c := e.client(t, sample.NewAttester(), "")
	_, err := c.GetResource(bg, "kbs:///default/key/1")
	if v := kbsVariant(err); v != server.VariantPolicyDeny {
		t.Fatalf("err = %v (variant %q), want PolicyDeny", err, v)
	}
	if n := e.auths.Load(); n != 3 {
		t.Fatalf("client handshook %d times on 401, want 3 attempts", n)
	}
}

func TestResourceErrors(t *testing.T) {
	e := newEnv(t, server.Options{})
	c := e.client(t, sample.NewAttester(), "")
	_, err := c.GetResource(bg, "kbs:///default/key/missing")
	if v := kbsVariant(err); v != server.VariantPluginInternal {
		t.Fatalf("missing resource: %v (variant %q)", err, v)
	}
	// Written while the server runs: served without restart.
	e.writeResource(t, "default/key/missing", []byte("now here"))
	got, err := c.GetResource(bg, "kbs:///default/key/missing")
	if err != nil || string(got) != "now here" {
		t.Fatalf("resource written at runtime: %q, %v", got, err)
	}
	// Replaced content is read at request time too.
	e.writeResource(t, "default/key/missing", []byte("changed"))
	if got, err := c.GetResource(bg, "kbs:///default/key/missing"); err != nil || string(got) != "changed" {
		t.Fatalf("replaced resource: %q, %v", got, err)
	}
	// A symlink out of the repository is refused.
	outside := filepath.Join(t.TempDir(), "secret")
	_ = os.WriteFile(outside, []byte("outside"), 0o600)
	_ = os.MkdirAll(filepath.Join(e.dir, "default", "link"), 0o700)
	if err := os.Symlink(outside, filepath.Join(e.dir, "default", "link", "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetResource(bg, "kbs:///default/link/x"); kbsVariant(err) != server.VariantPluginInternal {
		t.Fatalf("symlink escape: %v", err)
	}
}

// rawPost posts body as JSON and returns the response's status, header and
// body.
func rawPost(t *testing.T, hc *http.Client, url string, body any) (int, http.Header, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := hc.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out
}

func decodeError(t *testing.T, body []byte) kbs.ErrorInformation {
	t.Helper()
	var ei kbs.ErrorInformation
	if err := json.Unmarshal(body, &ei); err != nil || !strings.HasPrefix(ei.Type, kbs.ErrorTypePrefix) {
		t.Fatalf("error body %s is not a KBS error (%v)", body, err)
	}
	return ei
}

// handshake drives /auth and /attest by hand so tests can tamper.
type handshake struct {
	t     *testing.T
	e     *env
	hc    *http.Client
	key   *kbs.TEEKey
	nonce string
}

func startHandshake(t *testing.T, e *env, tee string) *handshake {
	jar, _ := cookiejar.New(nil)
	h := &handshake{t: t, e: e, hc: &http.Client{Jar: jar}}
	h.key, _ = kbs.GenerateTEEKey("")
	status, header, body := rawPost(t, h.hc, e.url()+"/kbs/v0/auth", kbs.Request{Version: "0.4.0", TEE: tee, ExtraParams: json.RawMessage(`{"supported-hash-algorithms":["sha384"]}`)})
	if status != 200 {
		t.Fatalf("auth: %d %s", status, body)
	}
	if !strings.Contains(header.Get("Set-Cookie"), "kbs-session-id=") || !strings.Contains(header.Get("Set-Cookie"), "Expires=") {
		t.Fatalf("auth cookie %q", header.Get("Set-Cookie"))
	}
	var raw map[string]any
	_ = json.Unmarshal(body, &raw)
	if raw["extra-params"] != "" {
		t.Fatalf("challenge extra-params %#v, want empty string", raw["extra-params"])
	}
	ch, err := kbs.ParseChallenge(body)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := base64.StdEncoding.DecodeString(ch.Nonce); len(n) != 32 {
		t.Fatalf("nonce %q is not 32 bytes of base64", ch.Nonce)
	}
	h.nonce = ch.Nonce
	return h
}

func (h *handshake) attestation(a attest.Attester) kbs.Attestation {
	pub := h.key.PublicJWK()
	rd, _ := kbs.ReportData(kbs.SHA384, pub, h.nonce, "")
	ev, err := a.Evidence(bg, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	return kbs.Attestation{RuntimeData: kbs.RuntimeData{Nonce: h.nonce, TEEPubKey: pub}, TEEEvidence: kbs.CompositeEvidence{PrimaryEvidence: ev}}
}

func (h *handshake) attest(att any) (int, []byte) {
	status, _, body := rawPost(h.t, h.hc, h.e.url()+"/kbs/v0/attest", att)
	return status, body
}

func TestAttestNegative(t *testing.T) {
	e := newEnv(t, server.Options{SessionTimeout: time.Minute})
	tests := []struct {
		name   string
		mutate func(h *handshake, a *kbs.Attestation) any
		detail string
	}{
		{"nonce mismatch", func(h *handshake, a *kbs.Attestation) any {
			a.RuntimeData.Nonce = base64.StdEncoding.EncodeToString(make([]byte, 32))
			return a
		}, "nonce"},
		{"tampered evidence", func(h *handshake, a *kbs.Attestation) any {
			var ev sample.Evidence
			_ = json.Unmarshal(a.TEEEvidence.PrimaryEvidence, &ev)
			rd, _ := base64.StdEncoding.DecodeString(ev.ReportData)
			rd[0] ^= 1
			ev.ReportData = base64.StdEncoding.EncodeToString(rd)
			a.TEEEvidence.PrimaryEvidence, _ = json.Marshal(ev)
			return a
		}, "REPORT_DATA"},
		{"substituted tee key", func(h *handshake, a *kbs.Attestation) any {
			other, _ := kbs.GenerateTEEKey("")
			a.RuntimeData.TEEPubKey = other.PublicJWK()
			return a
		}, "REPORT_DATA"},
		{"additional evidence", func(h *handshake, a *kbs.Attestation) any {
			a.TEEEvidence.AdditionalEvidence = `{"sampledevice":{}}`
			return a
		}, "additional"},
		{"init-data format", func(h *handshake, a *kbs.Attestation) any {
			a.InitData = &kbs.InitData{Format: "json", Body: "{}"}
			return a
		}, "Unsupported initdata format"},
		{"expired session", func(h *handshake, a *kbs.Attestation) any {
			h.e.clock.Advance(2 * time.Minute)
			return a
		}, "session expired"},
		{"no cookie", func(h *handshake, a *kbs.Attestation) any {
			h.hc.Jar, _ = cookiejar.New(nil)
			return a
		}, "cookie not found"},
		{"garbage", func(h *handshake, a *kbs.Attestation) any {
			return map[string]any{"runtime-data": 5}
		}, "decode Attestation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startHandshake(t, e, "sample")
			a := h.attestation(sample.NewAttester())
			status, body := h.attest(tc.mutate(h, &a))
			if status != http.StatusUnauthorized {
				t.Fatalf("status %d: %s", status, body)
			}
			ei := decodeError(t, body)
			if ei.Variant() != server.VariantAttestation || !strings.Contains(ei.Detail, tc.detail) {
				t.Fatalf("error %+v, want AttestationError mentioning %q", ei, tc.detail)
			}
		})
	}
}

func TestAuthNegative(t *testing.T) {
	e := newEnv(t, server.Options{})
	hc := &http.Client{}
	for _, tc := range []struct {
		name string
		req  any
		want string
	}{
		{"version", kbs.Request{Version: "0.3.0", TEE: "sample", ExtraParams: json.RawMessage(`{}`)}, "KBS Client Protocol Version Mismatch"},
		{"unknown tee", kbs.Request{Version: "0.4.0", TEE: "cca", ExtraParams: json.RawMessage(`{}`)}, "no verifier"},
		{"malformed", map[string]int{"version": 4}, "decode Request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := rawPost(t, hc, e.url()+"/kbs/v0/auth", tc.req)
			if status != 401 {
				t.Fatalf("status %d", status)
			}
			if ei := decodeError(t, body); !strings.Contains(ei.Detail, tc.want) {
				t.Fatalf("detail %q, want %q", ei.Detail, tc.want)
			}
		})
	}
}

func TestSessionReplay(t *testing.T) {
	e := newEnv(t, server.Options{SessionTimeout: time.Minute, TokenLifetime: time.Hour})
	e.writeResource(t, "r/t/x", []byte("v"))
	h := startHandshake(t, e, "sample")
	a := h.attestation(sample.NewAttester())
	status, body := h.attest(a)
	if status != 200 {
		t.Fatalf("attest %d %s", status, body)
	}
	var first kbs.AttestationResponse
	_ = json.Unmarshal(body, &first)
	// Re-posting to an attested session returns the stored token (Trustee).
	if status, body = h.attest(a); status != 200 || !strings.Contains(string(body), first.Token) {
		t.Fatalf("re-attest on attested session: %d %s", status, body)
	}
	get := func() (int, []byte) {
		resp, err := h.hc.Get(e.url() + "/kbs/v0/resource/r/t/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if status, body = get(); status != 200 {
		t.Fatalf("cookie fetch %d %s", status, body)
	}
	// After the session expires the cookie is worthless, even replayed.
	e.clock.Advance(2 * time.Minute)
	if status, body = get(); status != 401 || decodeError(t, body).Variant() != server.VariantTokenNotFound {
		t.Fatalf("replayed expired cookie: %d %s", status, body)
	}
	if status, body = h.attest(a); status != 401 || !strings.Contains(string(body), "session") {
		t.Fatalf("attest on expired session: %d %s", status, body)
	}
	// The bearer token is still within its lifetime and works alone.
	req, _ := http.NewRequest(http.MethodGet, e.url()+"/kbs/v0/resource/r/t/x", nil)
	req.Header.Set("Authorization", "Bearer "+first.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("bearer fetch %d %s", resp.StatusCode, b)
	}
	pt, err := h.key.DecryptResponse(b)
	if err != nil || string(pt) != "v" {
		t.Fatalf("bearer resource %q, %v", pt, err)
	}
	// And an expired bearer token is refused.
	e.clock.Advance(2 * time.Hour)
	req, _ = http.NewRequest(http.MethodGet, e.url()+"/kbs/v0/resource/r/t/x", nil)
	req.Header.Set("Authorization", "Bearer "+first.Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || decodeError(t, b).Variant() != server.VariantTokenVerifier {
		t.Fatalf("expired bearer: %d %s", resp.StatusCode, b)
	}
}

func TestForeignTokenRejected(t *testing.T) {
	e := newEnv(t, server.Options{})
	other := newEnv(t, server.Options{})
	e.writeResource(t, "r/t/x", []byte("v"))
	c := other.client(t, sample.NewAttester(), "")
	tok, err := c.Token(bg)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, e.url()+"/kbs/v0/resource/r/t/x", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || decodeError(t, b).Variant() != server.VariantTokenVerifier {
		t.Fatalf("token of another KBS: %d %s", resp.StatusCode, b)
	}
}

func TestExpiredTokenReattests(t *testing.T) {
	t.Run("client sees exp", func(t *testing.T) {
		e := newEnv(t, server.Options{TokenLifetime: time.Minute, SessionTimeout: time.Minute})
		e.writeResource(t, "r/t/x", []byte("v"))
		c := e.client(t, sample.NewAttester(), "")
		if _, err := c.GetResource(bg, "r/t/x"); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(90 * time.Second)
		if _, err := c.GetResource(bg, "r/t/x"); err != nil {
			t.Fatal(err)
		}
		if c.Handshakes() != 2 || e.auths.Load() != 2 {
			t.Fatalf("handshakes client %d server %d, want 2", c.Handshakes(), e.auths.Load())
		}
	})
	t.Run("server rejects with 401", func(t *testing.T) {
		e := newEnv(t, server.Options{TokenLifetime: time.Minute, SessionTimeout: time.Minute})
		e.writeResource(t, "r/t/x", []byte("v"))
		// The client's clock lags: it still believes its token valid.
		c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: sample.NewAttester(), Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetResource(bg, "r/t/x"); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(90 * time.Second)
		// The server's new token is issued at its (advanced) time, so the
		// lagging client accepts it and the retry succeeds.
		if got, err := c.GetResource(bg, "r/t/x"); err != nil || string(got) != "v" {
			t.Fatalf("after 401: %q %v", got, err)
		}
		if c.Handshakes() != 2 {
			t.Fatalf("%d handshakes, want 2", c.Handshakes())
		}
	})
}

func TestRoutingErrors(t *testing.T) {
	e := newEnv(t, server.Options{})
	for _, tc := range []struct {
		method, path string
		status       int
		variant      string
	}{
		{"GET", "/kbs/v0/nope/a", 404, server.VariantPluginNotFound},
		{"GET", "/other", 404, server.VariantInvalidRequestPath},
		{"GET", "/kbs/v0/resource/a/b", 404, server.VariantInvalidRequestPath},
		{"GET", "/kbs/v0/resource/a/b/c/d", 404, server.VariantInvalidRequestPath},
		{"GET", "/kbs/v0/resource/a/%2e%2e/c", 404, server.VariantInvalidRequestPath},
		{"GET", "/kbs/v0/resource/a/b%2Fc/d", 404, server.VariantInvalidRequestPath},
		{"GET", "/kbs/v0/resource/a/b/c", 401, server.VariantTokenNotFound},
		{"GET", "/kbs/v0/auth", 404, server.VariantPluginNotFound},
		{"GET", "/kbs/v0/resource-policy", 401, server.VariantAdminAuthAccess},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, e.url()+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || decodeError(t, b).Variant() != tc.variant {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
		})
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1.
func testCA(t *testing.T) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cocoon test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kbs"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}
}

func TestHTTPSWithConfiguredCA(t *testing.T) {
	dir := t.TempDir()
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_ = os.MkdirAll(filepath.Join(dir, "r", "t"), 0o700)
	_ = os.WriteFile(filepath.Join(dir, "r", "t", "x"), []byte("tls"), 0o600)
	caPEM, cert := testCA(t)
	ts := httptest.NewUnstartedServer(srv)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	defer ts.Close()

	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), CertPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetResource(bg, "r/t/x"); err != nil || string(got) != "tls" {
		t.Fatalf("with kbs_cert: %q %v", got, err)
	}
	otherCA, _ := testCA(t)
	for name, pemBytes := range map[string][]byte{"no CA": nil, "wrong CA": otherCA} {
		t.Run(name, func(t *testing.T) {
			c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), CertPEM: pemBytes})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Token(bg)
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("untrusted server accepted: %v", err)
			}
		})
	}
	if _, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), CertPEM: []byte("junk")}); err == nil {
		t.Fatal("junk kbs_cert accepted")
	}
}

func adminToken(t *testing.T, key ed25519.PrivateKey, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	obj, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func adminDo(t *testing.T, method, url, token string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/octet-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestAdminAPI(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	e := newEnv(t, server.Options{AdminPublicKey: pub})
	now := e.clock.Now().Unix()
	good := adminToken(t, priv, map[string]any{"iss": "TrusteeInDocker", "sub": "admin", "aud": []string{"KBS"}, "role": "admin", "iat": now, "exp": now + 300})
	url := e.url() + "/kbs/v0/resource/default/key/admin"

	for name, tok := range map[string]string{
		"no token":     "",
		"wrong key":    adminToken(t, otherPriv, map[string]any{"role": "admin", "exp": now + 300}),
		"expired":      adminToken(t, priv, map[string]any{"role": "admin", "exp": now - 1}),
		"no exp":       adminToken(t, priv, map[string]any{"role": "admin"}),
		"wrong role":   adminToken(t, priv, map[string]any{"role": "reader", "exp": now + 300}),
		"not yet":      adminToken(t, priv, map[string]any{"role": "admin", "exp": now + 300, "nbf": now + 100}),
		"attest token": func() string { tok, _ := e.client(t, sample.NewAttester(), "").Token(bg); return tok }(),
	} {
		t.Run(name, func(t *testing.T) {
			status, b := adminDo(t, http.MethodPost, url, tok, []byte("x"))
			if status != 401 || decodeError(t, b).Variant() != server.VariantAdminAuthAccess {
				t.Fatalf("%d %s", status, b)
			}
			if _, err := os.Stat(filepath.Join(e.dir, "default", "key", "admin")); err == nil {
				t.Fatal("denied write reached the repository")
			}
		})
	}

	if status, b := adminDo(t, http.MethodPost, url, good, []byte("admin-set")); status != 200 {
		t.Fatalf("POST: %d %s", status, b)
	}
	c := e.client(t, sample.NewAttester(), "")
	if got, err := c.GetResource(bg, "kbs:///default/key/admin"); err != nil || string(got) != "admin-set" {
		t.Fatalf("after POST: %q %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "default", "key"))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if status, b := adminDo(t, http.MethodPost, e.url()+"/kbs/v0/resource/default/%2e%2e/x", good, []byte("x")); status != 404 {
		t.Fatalf("traversal POST: %d %s", status, b)
	}
	if status, b := adminDo(t, http.MethodDelete, url, good, nil); status != 200 {
		t.Fatalf("DELETE: %d %s", status, b)
	}
	if _, err := c.GetResource(bg, "kbs:///default/key/admin"); kbsVariant(err) != server.VariantPluginInternal {
		t.Fatalf("after DELETE: %v", err)
	}
	if status, _ := adminDo(t, http.MethodDelete, url, good, nil); status != 401 {
		t.Fatalf("DELETE of missing resource: %d", status)
	}

	// Resource policy: replace with the default policy, which denies sample.
	body, _ := json.Marshal(map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte(server.DefaultPolicy))})
	if status, b := adminDo(t, http.MethodPost, e.url()+"/kbs/v0/resource-policy", good, body); status != 200 {
		t.Fatalf("set policy: %d %s", status, b)
	}
	if status, b := adminDo(t, http.MethodGet, e.url()+"/kbs/v0/resource-policy", good, nil); status != 200 || string(b) != `["resource-policy"]` {
		t.Fatalf("get policy: %d %s", status, b)
	}
	e.writeResource(t, "default/key/p", []byte("p"))
	if _, err := c.GetResource(bg, "default/key/p"); kbsVariant(err) != server.VariantPolicyDeny {
		t.Fatalf("after policy change: %v", err)
	}
	bad, _ := json.Marshal(map[string]string{"policy": base64.RawURLEncoding.EncodeToString([]byte("package other\nallow := true"))})
	if status, b := adminDo(t, http.MethodPost, e.url()+"/kbs/v0/resource-policy", good, bad); status != 401 || decodeError(t, b).Variant() != server.VariantPolicyEngine {
		t.Fatalf("bad policy: %d %s", status, b)
	}
}

func TestAdminWithoutKey(t *testing.T) {
	for _, insecure := range []bool{false, true} {
		e := newEnv(t, server.Options{InsecureAdmin: insecure})
		status, _ := adminDo(t, http.MethodPost, e.url()+"/kbs/v0/resource/a/b/c", "", []byte("x"))
		if want := map[bool]int{false: 401, true: 200}[insecure]; status != want {
			t.Fatalf("insecure=%v: status %d, want %d", insecure, status, want)
		}
	}
}

func TestClientContextCancel(t *testing.T) {
	e := newEnv(t, server.Options{})
	c := e.client(t, sample.NewAttester(), "")
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := c.GetResource(ctx, "a/b/c"); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestClientWireFormat(t *testing.T) {
	dir := t.TempDir()
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	bodies := map[string]string{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies[r.URL.Path] = string(b)
		if ct := r.Header.Get("Content-Type"); r.Method == http.MethodPost && ct != "application/json" {
			t.Errorf("%s Content-Type %q", r.URL.Path, ct)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		srv.ServeHTTP(w, r)
	}))
	defer ts.Close()
	initData := []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n")
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL + "/", Attester: sample.NewAttester(), InitDataTOML: initData})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(bg); err != nil {
		t.Fatal(err)
	}
	if want := `{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512"]}}`; bodies["/kbs/v0/auth"] != want {
		t.Fatalf("auth body\n got %s\nwant %s", bodies["/kbs/v0/auth"], want)
	}
	att := bodies["/kbs/v0/attest"]
	for _, prefix := range []string{`{"init-data":{"format":"toml","body":"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"},"runtime-data":{"nonce":"`} {
		if !strings.HasPrefix(att, prefix) {
			t.Fatalf("attest body %s", att)
		}
	}
	if !strings.Contains(att, `,"tee-evidence":{"primary_evidence":{"svn":"1","report_data":"`) || !strings.HasSuffix(att, `"},"additional_evidence":""}}`) {
		t.Fatalf("attest body %s", att)
	}
	// A plugin the KBS lacks answers 404, which maps to errdefs.ErrNotFound.
	if _, err := c.GetResource(bg, "kbs+nebula-ca:///credential"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown plugin: %v", err)
	}
}

func TestClientHTTPTimeout(t *testing.T) {
	release := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer ts.Close()
	defer close(release)
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), HTTPTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The context outlives one attempt but not the retries: the error must
	// come from the client's own per-request timeout, step named.
	ctx, cancel := context.WithTimeout(bg, 1500*time.Millisecond)
	defer cancel()
	_, err = c.Token(ctx)
	if err == nil || !strings.Contains(err.Error(), "auth: ") || !strings.Contains(err.Error(), "Client.Timeout exceeded") {
		t.Fatalf("err = %v, want the auth step's HTTP timeout", err)
	}
}

func TestConcurrentFetchesShareOneHandshake(t *testing.T) {
	e := newEnv(t, server.Options{})
	e.writeResource(t, "r/t/x", []byte("v"))
	c := e.client(t, sample.NewAttester(), "")
	errc := make(chan error, 16)
	for range cap(errc) {
		go func() {
			got, err := c.GetResource(bg, "r/t/x")
			if err == nil && string(got) != "v" {
				err = io.ErrUnexpectedEOF
			}
			errc <- err
		}()
	}
	for range cap(errc) {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if n := e.auths.Load(); n != 1 {
		t.Fatalf("%d handshakes for concurrent fetches, want 1", n)
	}
}

func TestHealthz(t *testing.T) {
	srv, err := server.New(server.Options{Repository: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz = %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/kbs/v0/healthz", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("/kbs/v0/healthz = %d, want 404 (PluginNotFound)", rec.Code)
	}
}

// Like Trustee's sample verifier, the sample TEE's token carries the digest
// of the init-data the client sent (base64) and its claims; nothing binds
// them, so configuration is appraised as unavailable.
func TestSampleTokenCarriesInitData(t *testing.T) {
	e := newEnv(t, server.Options{})
	c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: sample.NewAttester(), InitDataTOML: []byte(testInitData), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(bg)
	if err != nil {
		t.Fatal(err)
	}
	claims := tokenClaims(t, tok)
	ae := annotated(t, claims)
	digest := sha256.Sum256([]byte(testInitData))
	if ae["init_data"] != base64.StdEncoding.EncodeToString(digest[:]) {
		t.Fatalf("init_data = %v, want base64 of the init-data's sha256", ae["init_data"])
	}
	if idc, _ := ae["init_data_claims"].(map[string]any); idc["note"] != "bound" {
		t.Fatalf("init_data_claims = %v", ae["init_data_claims"])
	}
	cpu := claims["submods"].(map[string]any)["cpu0"].(map[string]any)
	if tv := cpu["ear.trustworthiness-vector"].(map[string]any); cpu["ear.status"] != server.StatusWarning || tv["configuration"] != float64(36) {
		t.Fatalf("status %v, vector %v; want warning, configuration 36", cpu["ear.status"], tv)
	}
}
