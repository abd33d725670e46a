// Package cdhpb is the Go code generated from
// protos/confidential-data-hub/api.proto for the end-to-end suite (`make
// protos`): the Confidential Data Hub's ttRPC messages and clients (proto
// package "api"), as the kata-agent calls them.
package cdhpb
