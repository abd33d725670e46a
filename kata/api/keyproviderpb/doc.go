// Package keyproviderpb is the Go code generated from
// protos/confidential-data-hub/keyprovider.proto (`make protos`): the
// ocicrypt key provider service the Confidential Data Hub serves over ttRPC
// (proto package "keyprovider"), wire-compatible with guest-components.
// kata/cdh implements it.
//
// A binary must not link it together with
// github.com/containers/ocicrypt/utils/keyprovider (imported by ocicrypt's
// root package and keywrap/keyprovider): both register the protobuf service
// keyprovider.KeyProviderService, and the protobuf runtime panics at start-up
// on the conflict.
package keyproviderpb
