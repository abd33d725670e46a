// Package tpmtest provides a TPM attester backed by go-tpm-tools' TPM 2.0
// simulator (cgo, needs gcc and libssl-dev) and a tpm verifier trusting the
// simulator's attestation key, so code using attest.Attester and
// attest.Verifier can be tested through real TPM quotes without hardware.
//
// It is for tests only. The simulator needs cgo (without cgo only
// ForgedAttester is built: a software "AK" signing hand-built quotes, which
// a verifier must not take for a TPM).
//
// Only one simulator can run per process at a time: a second New blocks
// until the first test's cleanup closes its simulator.
package tpmtest
