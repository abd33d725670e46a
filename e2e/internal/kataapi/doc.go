// Package kataapi holds the end-to-end suite's ttRPC client stubs for the
// Confidential Data Hub (cdhpb) and the Attestation Agent (aapb), generated
// by `make protos` (protos/buf.gen.e2e.yaml) from the same upstream-identical
// .proto files as cocoon's kata/api, under this module's import paths. The
// suite plays the kata-agent with them: a client that shares no code with
// cocoon's services, as the agent's Rust client does not.
package kataapi
