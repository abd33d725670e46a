package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Error variants, named as Trustee's kbs::Error so clients matching on the
// "type" URL see the same values.
const (
	VariantAttestation        = "AttestationError"
	VariantInvalidRequestPath = "InvalidRequestPath"
	VariantPluginNotFound     = "PluginNotFound"
	VariantPluginInternal     = "PluginInternalError"
	VariantPolicyDeny         = "PolicyDeny"
	VariantParsePolicy        = "ParsePolicyError"
	VariantPolicyEngine       = "PolicyEngineError"
	VariantJWE                = "JweError"
	VariantTokenNotFound      = "TokenNotFound"
	VariantTokenVerifier      = "TokenVerifierError" //nolint:gosec // an error variant name, not a credential
	VariantAdminAuthAccess    = "AdminAuthAccess"
	VariantSerde              = "SerdeError"
)

// kbsError is an error with the Trustee variant it is reported as.
type kbsError struct {
	variant string
	detail  string
	err     error
}

func (e *kbsError) Error() string {
	if e.err != nil {
		return e.detail + ": " + e.err.Error()
	}
	return e.detail
}

func (e *kbsError) Unwrap() error { return e.err }

func newError(variant string, err error, format string, args ...any) *kbsError {
	return &kbsError{variant: variant, detail: fmt.Sprintf(format, args...), err: err}
}

// status mirrors Trustee: 404 for bad paths and unknown plugins, 401 for
// everything else.
func (e *kbsError) status() int {
	switch e.variant {
	case VariantInvalidRequestPath, VariantPluginNotFound:
		return http.StatusNotFound
	default:
		return http.StatusUnauthorized
	}
}

// writeError writes the KBS JSON error body. The detail carries the cause
// so a client can tell which step failed and why; it never contains key
// material or resource bytes because no error in this package wraps them.
func writeError(w http.ResponseWriter, err error) *kbsError {
	var ke *kbsError
	if !errors.As(err, &ke) {
		ke = newError(VariantPluginInternal, err, "Plugin internal error")
	}
	body, _ := json.Marshal(kbs.ErrorInformation{Type: kbs.ErrorTypePrefix + ke.variant, Detail: ke.Error()})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ke.status())
	_, _ = w.Write(body)
	return ke
}
