// Package fusefs serves eStargz layers lazily: a read-only FUSE filesystem
// per layer over a blob read by range (from a registry, a local copy, or a
// decrypting reader), fetching only the chunks a container reads.
//
// Nothing unverified is ever served. Open checks the TOC against the digest
// named by the layer descriptor's containerd.io/snapshot/stargz/toc.digest
// annotation (from a manifest fetched by digest and accepted by the image
// policy: the caller's duty) before anything parses it, and bounds every
// size, count and offset the TOC gives. Each chunk is decompressed and
// checked against its TOC chunk digest before any byte of it is returned or
// cached; a mismatch fails that read only (EIO through FUSE), is logged with
// layer, file and offset, and is counted. Complete fetches the whole blob,
// checks the compressed digest and the diff ID, and only then serves reads
// from the local copy; a mismatch marks the layer bad.
//
// The format (footer, TOC, chunk verifiers) is
// github.com/containerd/stargz-snapshotter/estargz's: gzip eStargz and
// zstd:chunked, told apart by the footer.
package fusefs
