// Package sealed is the codec and resolver of Confidential Containers sealed
// secrets, byte-compatible with guest-components' confidential-data-hub:
//
//	sealed.<b64url(JWS protected header)>.<b64url(payload JSON)>.<b64url(ES256 signature)>
//
// Parse reads the string, (*JWS).Verify checks the ES256 signature, Sign
// produces one, ParsePayload and (*Secret).MarshalJSON read and write the
// vault and envelope payloads with every field upstream requires. An
// Unsealer ties them together: it resolves the verification key named by
// kid (a kbs:/// resource holding a JWK, or a locally configured
// credential), verifies, and resolves the payload: a vault secret through
// the KBS, an envelope secret through an EnvelopeProvider ("kbs" unwraps the
// data key with a key-encryption key fetched from the KBS inside the TEE,
// "local" with a key file) and AES-256-GCM (or A256CTR, as upstream).
//
// Unsigned (legacy "sealed.fakejwsheader.<payload>.fakesignature") strings
// are refused unless SkipVerification is set, which mirrors cdh.toml's
// skip_sealed_secret_verification.
//
// Plaintext and key material leave this package only as return values. The
// package must never log, persist or put into an error message a plaintext,
// a data key or a key-encryption key; errors name the failing part (header,
// payload, signature, kid fetch, verification key, provider) instead.
package sealed
