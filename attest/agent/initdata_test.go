package agent

import (
	"context"
	"crypto/sha512"
	"errors"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/snp/snptest"
	"github.com/cocoon-cc/cocoon/attest/tdx"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
)

func TestBindInitDataWithFakeHardware(t *testing.T) {
	doc := []byte("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = ''\n")
	sum := sha512.Sum384(doc)
	digest := sum[:]
	other := sha512.Sum384([]byte("another document"))
	ctx := context.Background()

	good, _ := snptest.New(t, snptest.WithHostData(snp.HostDataForInitData(digest)))
	if err := BindInitData(ctx, good, digest); err != nil {
		t.Errorf("snp with matching HOST_DATA: %v", err)
	}
	bad, _ := snptest.New(t, snptest.WithHostData(snp.HostDataForInitData(other[:])))
	if err := BindInitData(ctx, bad, digest); !errors.Is(err, initdata.ErrInconsistent) ||
		err.Error() != "The initdata supplied by the parameter is inconsistent with that of the current platform." {
		t.Errorf("snp with other HOST_DATA: %v", err)
	}

	goodTD, _ := tdxtest.New(t, tdxtest.WithMRConfigID(tdx.MRConfigIDForInitData(digest)))
	if err := BindInitData(ctx, goodTD, digest); err != nil {
		t.Errorf("tdx with matching MR_CONFIG_ID: %v", err)
	}
	badTD, _ := tdxtest.New(t, tdxtest.WithMRConfigID(tdx.MRConfigIDForInitData(other[:])))
	if err := BindInitData(ctx, badTD, digest); !errors.Is(err, initdata.ErrInconsistent) {
		t.Errorf("tdx with other MR_CONFIG_ID: %v", err)
	}

	if err := BindInitData(ctx, sample.NewAttester(), digest); !errors.Is(err, initdata.ErrUnsupportedTEE) {
		t.Errorf("sample: %v", err)
	}
}
