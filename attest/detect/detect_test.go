package detect

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
)

type fakeAttester string

func (f fakeAttester) TEE() string { return string(f) }
func (f fakeAttester) Evidence(context.Context, []byte) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

func TestAttester(t *testing.T) {
	saved := probes
	t.Cleanup(func() { probes = saved })
	mk := func(tee string, present bool, err error) probe {
		return probe{tee, func() bool { return present }, func(Options) (attest.Attester, error) {
			if err != nil {
				return nil, err
			}
			return fakeAttester(tee), nil
		}}
	}
	tests := []struct {
		name    string
		probes  []probe
		force   string
		want    string
		wantErr bool
	}{
		{"nothing present", []probe{mk("tdx", false, nil), mk("snp", false, nil)}, "", "sample", false},
		{"first present wins", []probe{mk("tdx", true, nil), mk("snp", true, nil)}, "", "tdx", false},
		{"order skips absent", []probe{mk("tdx", false, nil), mk("snp", true, nil), mk("tpm", true, nil)}, "", "snp", false},
		{"forced present", []probe{mk("tdx", true, nil), mk("tpm", true, nil)}, "tpm", "tpm", false},
		{"forced absent", []probe{mk("tdx", true, nil), mk("tpm", false, nil)}, "tpm", "", true},
		{"forced sample", []probe{mk("tdx", true, nil)}, "sample", "sample", false},
		{"forced unknown", []probe{mk("tdx", true, nil)}, "cca", "", true},
		{"open fails", []probe{mk("tdx", true, errors.New("boom"))}, "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			probes = tc.probes
			a, err := Attester(tc.force)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && a.TEE() != tc.want {
				t.Fatalf("TEE %s, want %s", a.TEE(), tc.want)
			}
		})
	}
}

func TestProbeOrder(t *testing.T) {
	want := []string{attest.TEETDX, attest.TEESNP, attest.TEETPM}
	i := 0
	for _, p := range probes {
		for i < len(want) && want[i] != p.tee {
			i++
		}
		if i == len(want) {
			t.Fatalf("probe %s out of upstream order tdx, snp, tpm", p.tee)
		}
	}
}
