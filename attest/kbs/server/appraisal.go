package server

import (
	"github.com/cocoon-cc/cocoon/attest"
)

// Trustworthiness claim values of AR4SI (draft-ietf-rats-ar4si), as the
// EAR library Trustee uses (veraison/rust-ear) names them. A claim's tier
// is none for -1..1, affirming up to |31|, warning up to |95| and
// contraindicated beyond; the appraisal status is the worst tier of the
// vector, so one warning claim makes the whole appraisal a warning.
const (
	trustNoClaim              = 0
	trustGenuineHardware      = 2  // hardware: genuine_hw
	trustRecognizedInstance   = 2  // instance-identity: recognized_instance
	trustApprovedConfig       = 2  // configuration: approved_config
	trustEncryptedRuntime     = 2  // runtime-opaque: encrypted_rt
	trustUnsafeHardware       = 32 // hardware: unsafe_hw (genuine, TCB not known to be current)
	trustUnsafeConfig         = 32 // configuration: unsafe_config (debug enabled)
	trustUnavailableConfig    = 36 // configuration: unavailable_config
	trustUnrecognizedHardware = 97 // hardware: unrecognized_hw
	trustUnrecognizedInstance = 97 // instance-identity: unrecognized_instance
)

// EAR statuses (trust tiers) as they appear in tokens.
const (
	StatusNone            = "none"
	StatusAffirming       = "affirming"
	StatusWarning         = "warning"
	StatusContraindicated = "contraindicated"
)

// TDXTCBUpToDate is the tcb_status of a TDX quote whose TCB level Intel's
// collateral lists as current.
const TDXTCBUpToDate = "UpToDate"

// initDataBinding says what the attestation established about init-data.
type initDataBinding int

const (
	// initDataAbsent: the client sent no init-data.
	initDataAbsent initDataBinding = iota
	// initDataMatched: the evidence binds a digest equal to the init-data's.
	initDataMatched
	// initDataUnbound: init-data was sent but the evidence binds none, so
	// its claims are not in the token.
	initDataUnbound
)

// trustVectorKeys are the eight AR4SI claims, all present in every token as
// Trustee writes them.
var trustVectorKeys = []string{
	"instance-identity", "configuration", "executables", "file-system",
	"hardware", "runtime-opaque", "storage-opaque", "sourced-data",
}

// appraise is cocoon-kbs's fixed attestation policy: the shape of
// Trustee's default EAR policy (ear_default_policy_cpu.rego), without
// reference values. Every claim comes from what the verifier checked:
//
//   - sample: no hardware behind it, hardware 32 (warning).
//   - tdx: the quote chains to a trusted root; hardware 2 only when its
//     tcb_status is UpToDate (known from Intel's collateral), else 32. A
//     debug TD has configuration 32. Memory is encrypted: runtime-opaque 2.
//   - snp: the report chains to AMD's roots through a VCEK bound to its
//     reported TCB: hardware 2. A debug-enabled guest policy gives
//     configuration 32. runtime-opaque 2.
//   - tpm: the quote signature only proves the AK signed it. Without a
//     trusted AK anyone can sign (a software key and a hand-built quote):
//     hardware and instance-identity 97 (contraindicated). A trusted AK
//     gives both 2.
//   - any other TEE: hardware 97.
//
// Init-data bound by the evidence and matching makes configuration 2
// (unless debug already made it 32); init-data the evidence cannot bind
// gives configuration 36 (warning): its claims are unverified. A mismatch
// never reaches here (the attestation fails).
//
// Executables, file system and the rest need reference values cocoon-kbs
// does not keep, so they make no claim (0), which does not lower the tier.
func appraise(tee string, claims attest.Claims, binding initDataBinding) (string, map[string]int) {
	v := make(map[string]int, len(trustVectorKeys))
	for _, k := range trustVectorKeys {
		v[k] = trustNoClaim
	}
	switch tee {
	case attest.TEESample:
		v["hardware"] = trustUnsafeHardware
	case attest.TEETDX:
		v["runtime-opaque"] = trustEncryptedRuntime
		v["hardware"] = trustUnsafeHardware
		if s, _ := claims["tcb_status"].(string); s == TDXTCBUpToDate {
			v["hardware"] = trustGenuineHardware
		}
		if attrs, _ := claims["td_attributes"].(map[string]any); attrs["debug"] == true {
			v["configuration"] = trustUnsafeConfig
		}
	case attest.TEESNP:
		v["runtime-opaque"] = trustEncryptedRuntime
		v["hardware"] = trustGenuineHardware
		if claims["policy_debug_allowed"] == true {
			v["configuration"] = trustUnsafeConfig
		}
	case attest.TEETPM:
		if claims["ak_trusted"] == true {
			v["hardware"] = trustGenuineHardware
			v["instance-identity"] = trustRecognizedInstance
		} else {
			v["hardware"] = trustUnrecognizedHardware
			v["instance-identity"] = trustUnrecognizedInstance
		}
	default:
		v["hardware"] = trustUnrecognizedHardware
	}
	switch binding {
	case initDataMatched:
		if v["configuration"] == trustNoClaim {
			v["configuration"] = trustApprovedConfig
		}
	case initDataUnbound:
		if v["configuration"] < trustUnavailableConfig {
			v["configuration"] = trustUnavailableConfig
		}
	}
	return statusOf(v), v
}

// tier maps a claim value to its trust tier, as rust-ear's TrustClaim::tier.
func tier(val int) int {
	switch {
	case val >= -1 && val <= 1:
		return 0
	case val >= -32 && val < 32:
		return 1
	case val >= -96 && val < 96:
		return 2
	default:
		return 3
	}
}

// statusOf is the worst tier of the vector (rust-ear's
// update_status_from_trust_vector).
func statusOf(v map[string]int) string {
	worst := 0
	for _, val := range v {
		worst = max(worst, tier(val))
	}
	return [...]string{StatusNone, StatusAffirming, StatusWarning, StatusContraindicated}[worst]
}
