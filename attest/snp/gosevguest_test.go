package snp_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/snp"
)

// go-sev-guest's own fake quote provider appends a platform-info entry to
// the certificate table, as its configfs and ioctl providers do. The
// attester must drop it (it is not firmware output) and the evidence must
// still verify.
func TestGoSevGuestQuoteProvider(t *testing.T) {
	product := abi.DefaultSevProduct()
	signer, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(product), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := signer.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	rd := teetest.RandomBytes(t, 64)
	raw := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: rd, Version: 3, FMS: abi.MaskedCpuid1EaxFromSevProduct(product)})
	dev := &sevtest.Device{
		ReportDataRsp: map[string]any{hex.EncodeToString(rd): &sevtest.GetReportResponse{Resp: labi.SnpReportRespABI{Data: raw}}},
		Certs:         certs,
		Signer:        signer,
		SevProduct:    product,
	}
	a, err := snp.NewAttester(snp.AttesterOptions{QuoteProvider: &sevtest.QuoteProvider{Device: dev}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	var parsed snp.Evidence
	if err := json.Unmarshal(ev, &parsed); err != nil {
		t.Fatal(err)
	}
	for _, c := range parsed.CertChain {
		if c.CertType.Name == "OTHER" && c.CertType.GUID.String() == abi.ExtraPlatformInfoGUID {
			t.Fatal("go-sev-guest's platform-info entry leaked into cert_chain")
		}
	}
	line := kds.ProductLine(product)
	// AMD KDS serves cert_chain as the ASK then the ARK, in PEM.
	kdsChain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ark.Raw})...)
	for name, opts := range map[string]snp.VerifierOptions{
		"TrustedRoots": {
			TrustedRoots: map[string][]*trust.AMDRootCerts{line: {{
				Product: line, ProductLine: line,
				ProductCerts: &trust.ProductCerts{Ark: signer.Ark, Ask: signer.Ask, Asvk: signer.Asvk},
			}}},
			DisableCertFetching: true,
		},
		"TrustedRootsPEM": {TrustedRootsPEM: map[string][]byte{line: kdsChain}, DisableCertFetching: true},
	} {
		t.Run(name, func(t *testing.T) {
			v, err := snp.NewVerifier(opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(context.Background(), ev, rd); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
	if _, err := snp.NewVerifier(snp.VerifierOptions{TrustedRootsPEM: map[string][]byte{line: []byte("not PEM")}}); err == nil {
		t.Error("NewVerifier accepted a root bundle that is not PEM")
	}
}

func TestNewAttesterWithoutDevice(t *testing.T) {
	if snp.Available() {
		t.Skip("this machine is an SEV-SNP guest")
	}
	if _, err := snp.NewAttester(snp.AttesterOptions{}); err == nil {
		t.Fatal("NewAttester found a quote provider on a machine without SEV-SNP")
	}
}
