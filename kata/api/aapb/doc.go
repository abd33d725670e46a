// Package aapb is the Go code generated from
// protos/attestation-agent/attestation-agent.proto (`make protos`): the
// Attestation Agent's ttRPC messages, service and client (proto package
// "attestation_agent"), wire-compatible with guest-components. kata/aa
// implements the service.
package aapb
