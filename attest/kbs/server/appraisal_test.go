package server

import (
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
)

// The appraisal comes from what the verifier established; only evidence
// it vouched for on every point is affirming.
func TestAppraise(t *testing.T) {
	tdx := func(tcb string, debug bool) attest.Claims {
		c := attest.Claims{"td_attributes": map[string]any{"debug": debug}}
		if tcb != "" {
			c["tcb_status"] = tcb
		}
		return c
	}
	for _, tc := range []struct {
		name    string
		tee     string
		claims  attest.Claims
		binding initDataBinding
		status  string
		vector  map[string]int
	}{
		{"sample", attest.TEESample, attest.Claims{"svn": "1"}, initDataAbsent, StatusWarning, map[string]int{"hardware": 32}},
		{"sample with init-data", attest.TEESample, attest.Claims{"svn": "1"}, initDataMatched, StatusWarning, map[string]int{"hardware": 32, "configuration": 2}},
		{"tpm untrusted AK", attest.TEETPM, attest.Claims{"ak_trusted": false}, initDataAbsent, StatusContraindicated, map[string]int{"hardware": 97, "instance-identity": 97}},
		{"tpm no ak_trusted claim", attest.TEETPM, attest.Claims{}, initDataAbsent, StatusContraindicated, map[string]int{"hardware": 97}},
		{"tpm trusted AK", attest.TEETPM, attest.Claims{"ak_trusted": true}, initDataAbsent, StatusAffirming, map[string]int{"hardware": 2, "instance-identity": 2, "configuration": 0}},
		{"tpm trusted AK, init-data bound", attest.TEETPM, attest.Claims{"ak_trusted": true}, initDataMatched, StatusAffirming, map[string]int{"configuration": 2}},
		{"tdx up to date", attest.TEETDX, tdx(TDXTCBUpToDate, false), initDataAbsent, StatusAffirming, map[string]int{"hardware": 2, "runtime-opaque": 2}},
		{"tdx out of date", attest.TEETDX, tdx("OutOfDate", false), initDataAbsent, StatusWarning, map[string]int{"hardware": 32}},
		{"tdx TCB unknown", attest.TEETDX, tdx("", false), initDataAbsent, StatusWarning, map[string]int{"hardware": 32}},
		{"tdx debug", attest.TEETDX, tdx(TDXTCBUpToDate, true), initDataMatched, StatusWarning, map[string]int{"configuration": 32}},
		{"snp", attest.TEESNP, attest.Claims{"policy_debug_allowed": false}, initDataAbsent, StatusAffirming, map[string]int{"hardware": 2}},
		{"snp debug", attest.TEESNP, attest.Claims{"policy_debug_allowed": true}, initDataAbsent, StatusWarning, map[string]int{"configuration": 32}},
		{"snp init-data unbound", attest.TEESNP, attest.Claims{}, initDataUnbound, StatusWarning, map[string]int{"configuration": 36}},
		{"unknown tee", "cca", attest.Claims{}, initDataAbsent, StatusContraindicated, map[string]int{"hardware": 97}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, vector := appraise(tc.tee, tc.claims, tc.binding)
			if status != tc.status {
				t.Errorf("status %s, want %s (vector %v)", status, tc.status, vector)
			}
			if len(vector) != len(trustVectorKeys) {
				t.Errorf("vector has %d claims, want %d", len(vector), len(trustVectorKeys))
			}
			for k, want := range tc.vector {
				if vector[k] != want {
					t.Errorf("%s = %d, want %d", k, vector[k], want)
				}
			}
		})
	}
}

func TestTrustTier(t *testing.T) {
	for _, tc := range []struct {
		vals []int
		want string
	}{
		{[]int{0, 0, -1, 1}, StatusNone},
		{[]int{2, 3, 31, -2, -32, 0}, StatusAffirming},
		{[]int{2, 32}, StatusWarning},
		{[]int{95, -33, -96}, StatusWarning},
		{[]int{2, 96}, StatusContraindicated},
		{[]int{-97}, StatusContraindicated},
	} {
		v := map[string]int{}
		for i, x := range tc.vals {
			v[string(rune('a'+i))] = x
		}
		if got := statusOf(v); got != tc.want {
			t.Errorf("statusOf(%v) = %s, want %s", tc.vals, got, tc.want)
		}
	}
}
