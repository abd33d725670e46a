// Package initdata reads, digests, transports and binds Confidential
// Containers init-data: the TOML document (version, algorithm, [data] map
// holding aa.toml, cdh.toml, policy.rego, ...) that the host hands to a pod
// sandbox and whose digest the TEE measures.
//
// # Format and transports
//
//   - Document: TOML with `version = "0.1.0"`, `algorithm` (sha256, sha384
//     or sha512) and a `[data]` table of strings. Parse validates it as the
//     Kata agent does (version must be 0.1.0). sm3 is refused: no SM3
//     implementation is pinned in go.mod.
//   - Digest: H(exact document bytes). The document is never re-serialised
//     or canonicalised before hashing; whitespace and comments matter.
//   - Pod annotation io.katacontainers.config.hypervisor.cc_init_data:
//     standard (padded) base64 of gzip(TOML). See EncodeAnnotation and
//     DecodeAnnotation.
//   - Kata block device: "initdata" (8-byte magic), u64 little-endian length
//     N, N bytes of gzip(TOML), zero padding to a multiple of 512. See
//     EncodeDevice and DecodeDevice.
//
// # Binding (COCO_SPEC 2.6, 3.3)
//
// ExpectedRegister gives the value a TEE field holds when the digest is
// bound: TDX MR_CONFIG_ID (digest zero-padded or truncated to 48 bytes), SNP
// HOST_DATA (32 bytes), vTPM PCR8 (SHA-256 bank) after extending the
// sha256 digest into an all-zero PCR. Check compares it with what the
// platform reports and fails with upstream's exact message.
//
// This package must never evaluate, log or persist the document's data
// values (they can carry credentials); it hands them to their consumers.
// Decoding is bounded (MaxDocumentSize) because the input comes from the
// untrusted host.
package initdata
