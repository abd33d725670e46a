// Package cdhpb is the Go code generated from protos/confidential-data-hub/api.proto
// (`make protos`): the Confidential Data Hub's ttRPC messages, services and
// clients (proto package "api"), wire-compatible with guest-components.
// kata/cdh implements the services.
package cdhpb
