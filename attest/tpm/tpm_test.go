package tpm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/tpm"
)

// otherKey is an RSA key that is not the simulator's AK.
var otherKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func otherAKPublic(t testing.TB) string {
	der, err := x509.MarshalPKIXPublicKey(&otherKey().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

func mustVerifierTrustingOther(t testing.TB) attest.Verifier {
	v, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: []crypto.PublicKey{&otherKey().PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Trustee's TPM evidence fixture (real TPM, RSA AK as DER SPKI): its
// signature, PCR digest and nonce must check.
func TestTrusteeEvidence(t *testing.T) {
	ev, err := os.ReadFile("testdata/trustee-tpm_evidence.json")
	if err != nil {
		t.Fatal(err)
	}
	var e tpm.Evidence
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	msg, _ := base64.StdEncoding.DecodeString(e.TPMQuote.Message)
	// extraData follows magic(4) type(2) qualifiedSigner(2+n).
	n := int(msg[6])<<8 | int(msg[7])
	m := int(msg[8+n])<<8 | int(msg[9+n])
	nonce := msg[10+n : 10+n+m]
	der, _ := base64.StdEncoding.DecodeString(e.AKPublic)
	ak, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: []crypto.PublicKey{ak}})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("Verify(trustee fixture): %v", err)
	}
	if got := claims["report_data"]; got != hex.EncodeToString(nonce) {
		t.Errorf("report_data = %v, want %x", got, nonce)
	}
	if got := claims["init_data"]; got != strings.Repeat("0", 64) {
		t.Errorf("init_data = %v, want the fixture's zero PCR8", got)
	}
	if got := claims["pcr17"]; got != strings.Repeat("f", 64) {
		t.Errorf("pcr17 = %v", got)
	}
	wrong := append([]byte(nil), nonce...)
	wrong[0] ^= 1
	if _, err := v.Verify(context.Background(), ev, wrong); err == nil {
		t.Error("fixture verified with a wrong nonce")
	}
}

func TestExpectedInitDataPCR(t *testing.T) {
	digest := sha256.Sum256([]byte("x"))
	got, err := tpm.ExpectedInitDataPCR(digest[:])
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	if hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Errorf("ExpectedInitDataPCR = %x, want %x", got, want)
	}
	if _, err := tpm.ExpectedInitDataPCR(make([]byte, 48)); err == nil {
		t.Error("48-byte digest accepted")
	}
}

func TestNewVerifierRejectsKeyType(t *testing.T) {
	if _, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: []crypto.PublicKey{"not a key"}}); err == nil {
		t.Fatal("string accepted as a trusted AK")
	}
}

func FuzzVerifyEvidence(f *testing.F) {
	ev, err := os.ReadFile("testdata/trustee-tpm_evidence.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev, []byte{})
	f.Add([]byte(`{"tpm_quote":{"signature":"","message":"","pcrs":[]},"ak_public":""}`), []byte{1})
	v, err := tpm.NewVerifier(tpm.VerifierOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data, rd []byte) {
		claims, err := v.Verify(context.Background(), data, rd)
		if err == nil && claims["ak_trusted"] != false {
			t.Fatalf("any-AK verifier claimed a trusted AK: %v", claims)
		}
	})
}

func TestNewAttesterWithoutDevice(t *testing.T) {
	if tpm.Available() {
		t.Skip("this machine has a TPM")
	}
	if _, err := tpm.NewAttester(tpm.AttesterOptions{}); err == nil {
		t.Fatal("NewAttester opened a TPM on a machine without one")
	}
}

func TestNewAttesterRejectsPCRs(t *testing.T) {
	for _, pcrs := range [][]int{{}, {24}, {-1, 3}} {
		if _, err := tpm.NewAttester(tpm.AttesterOptions{TPM: nopTPM{}, PCRs: pcrs}); err == nil {
			t.Errorf("NewAttester(PCRs %v) succeeded", pcrs)
		}
	}
}

type nopTPM struct{}

func (nopTPM) Read([]byte) (int, error)  { return 0, nil }
func (nopTPM) Write([]byte) (int, error) { return 0, nil }
func (nopTPM) Close() error              { return nil }
