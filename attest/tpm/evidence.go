package tpm

// Quote is guest-components' TpmQuote: base64 of the marshalled
// TPMT_SIGNATURE and TPMS_ATTEST, and the quoted SHA-256 PCR values as hex,
// in selection order (PCR 0..23 for upstream).
type Quote struct {
	Signature string   `json:"signature"`
	Message   string   `json:"message"`
	PCRs      []string `json:"pcrs"`
}

// Evidence is the tpm attester's evidence: the quote and the AK public key
// as base64 of its DER SubjectPublicKeyInfo, and optionally the Attestation
// Agent event log.
//
// AAEventLog is a cocoon extension: upstream's tpm attester (guest-components
// attestation-agent/attester/src/tpm) sends no event log and Trustee's tpm
// verifier does not read one (it ignores unknown fields, so evidence with
// the field still verifies there, without the runtime measurements). It is
// base64 (standard alphabet) of the raw AAEL file written by attest/eventlog
// (TCG2 crypto-agile records, no header, no terminator), omitted when there
// is no log, like the AAEL part of TDX's cc_eventlog.
type Evidence struct {
	TPMQuote   Quote  `json:"tpm_quote"`
	AKPublic   string `json:"ak_public"`
	AAEventLog string `json:"aa_eventlog,omitempty"`
}
