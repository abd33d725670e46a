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
// as base64 of its DER SubjectPublicKeyInfo.
type Evidence struct {
	TPMQuote Quote  `json:"tpm_quote"`
	AKPublic string `json:"ak_public"`
}
