// Package keyproviderpb is the Go code generated from
// protos/confidential-data-hub/keyprovider.proto (`make protos`): the
// ocicrypt key provider service the Confidential Data Hub serves over ttRPC
// (proto package "keyprovider"), wire-compatible with guest-components.
// kata/cdh implements it.
package keyproviderpb
