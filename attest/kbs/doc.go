// Package kbs speaks Trustee's Key Broker Service protocol (RCAR, protocol
// version 0.4.0) byte for byte: the wire messages shared by the client and
// the development server (attest/kbs/server), the TEE key pair and its JWK,
// the runtime-data binding that goes into hardware report data, the JWE
// envelope resources travel in, and the client that attests and fetches
// resources.
//
// The client holds an ephemeral TEE private key and attestation tokens. It
// must never log, persist or return them except through TokenAndKey, and it
// must never log resource bytes.
package kbs
