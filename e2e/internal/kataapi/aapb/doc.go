// Package aapb is the Go code generated from
// protos/attestation-agent/attestation-agent.proto for the end-to-end suite
// (`make protos`): the Attestation Agent's ttRPC messages and client (proto
// package "attestation_agent"), as the kata-agent and api-server-rest call
// them.
package aapb
