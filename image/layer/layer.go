// Package layer turns a compressed image layer blob, as fetched from a
// registry, into its uncompressed tar stream while hashing both sides, so
// that the caller can prove the bytes it consumed are exactly the blob named
// by the manifest (blob digest) and the tar named by the image config
// (diff ID).
//
// The package streams: memory use is bounded by the decompressor windows and
// never grows with the size of the layer. It never interprets the tar stream
// and never declares data trustworthy by itself: a caller must not commit
// anything derived from a Reader until Verify has returned nil.
package layer

import (
	_ "crypto/sha256" // register sha256 for digest.Algorithm
	_ "crypto/sha512" // register sha512 for digest.Algorithm
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/cocoon-cc/cocoon/internal/hashio"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Media types of layer blobs understood by NewReader.
const (
	MediaTypeOCILayer                     = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeOCILayerGzip                 = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeOCILayerZstd                 = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeOCILayerNondistributable     = "application/vnd.oci.image.layer.nondistributable.v1.tar"
	MediaTypeOCILayerNondistributableGzip = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
	MediaTypeOCILayerNondistributableZstd = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
	MediaTypeDockerLayerGzip              = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerForeignLayerGzip       = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// Digest kinds reported in DigestMismatchError.Kind.
const (
	KindCompressed = "compressed"
	KindDiffID     = "diff-id"
)

// MaxZstdWindow bounds the zstd window a layer may ask for (128 MiB, the
// size produced by `zstd --long=27`). Larger windows are refused rather than
// allocated.
const MaxZstdWindow = 1 << 27

type compression int

const (
	compressionNone compression = iota
	compressionGzip
	compressionZstd
)

func (c compression) String() string {
	switch c {
	case compressionGzip:
		return "gzip"
	case compressionZstd:
		return "zstd"
	default:
		return "none"
	}
}

func compressionOf(mediaType string) (compression, bool) {
	switch mediaType {
	case MediaTypeOCILayer, MediaTypeOCILayerNondistributable:
		return compressionNone, true
	case MediaTypeOCILayerGzip, MediaTypeOCILayerNondistributableGzip,
		MediaTypeDockerLayerGzip, MediaTypeDockerForeignLayerGzip:
		return compressionGzip, true
	case MediaTypeOCILayerZstd, MediaTypeOCILayerNondistributableZstd:
		return compressionZstd, true
	}
	return compressionNone, false
}

// DigestMismatchError reports that the bytes read do not match the digest
// the image metadata promised. It wraps errdefs.ErrFailedPrecondition.
type DigestMismatchError struct {
	Layer    digest.Digest // blob digest naming the layer
	Kind     string        // KindCompressed or KindDiffID
	Expected digest.Digest
	Actual   digest.Digest
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("layer %s: %s digest mismatch: expected %s, got %s", e.Layer, e.Kind, e.Expected, e.Actual)
}

// Unwrap lets errors.Is(err, errdefs.ErrFailedPrecondition) match.
func (e *DigestMismatchError) Unwrap() error { return errdefs.ErrFailedPrecondition }

// Reader is the uncompressed tar stream of one layer blob. It is not safe
// for concurrent use.
type Reader struct {
	blobDigest digest.Digest
	diffID     digest.Digest
	comp       compression
	sameStream bool // uncompressed blob hashed once for both digests

	compressed   *hashio.Reader // raw blob bytes
	uncompressed *hashio.Reader // decompressed bytes; reads from decomp

	// auth, when set, replaces the blob digest check (AuthenticateWith).
	auth Authenticator

	decomp    io.Reader // lazily initialised decompressor output
	gz        *gzip.Reader
	zd        *zstd.Decoder
	verified  bool
	verifyErr error
	closed    bool

	maxUncompressed int64 // 0: unbounded
}

// ErrTooLarge marks a layer whose decompressed stream is longer than
// SetMaxUncompressed allows.
var ErrTooLarge = fmt.Errorf("decompressed layer too large: %w", errdefs.ErrResourceExhausted)

// SetMaxUncompressed bounds the decompressed stream, tar padding and
// anything after the end of the archive included: a longer stream (such
// as a gzip bomb after the tar) fails with ErrTooLarge once n bytes have
// been produced, instead of being drained. Call it before the first Read.
func (r *Reader) SetMaxUncompressed(n int64) { r.maxUncompressed = n }

// boundedReader fails once more than max bytes came from r.
type boundedReader struct {
	r      io.Reader
	n, max int64
	layer  digest.Digest
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if rest := b.max - b.n + 1; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.n > b.max {
		return n - 1, fmt.Errorf("layer %s: more than %d decompressed bytes: %w", b.layer, b.max, ErrTooLarge)
	}
	return n, err
}

func newHash(d digest.Digest) (hash.Hash, error) {
	alg := d.Algorithm()
	if !alg.Available() {
		return nil, fmt.Errorf("digest %s: algorithm %q unavailable: %w", d, alg, errdefs.ErrNotImplemented)
	}
	return alg.Hash(), nil
}

// NewReader returns a reader of the uncompressed tar stream of a layer blob.
// mediaType selects the decompressor: OCI (application/vnd.oci.image.layer.v1.tar,
// +gzip, +zstd, and the nondistributable variants) and Docker
// (application/vnd.docker.image.rootfs.diff.tar.gzip and
// application/vnd.docker.image.rootfs.foreign.diff.tar.gzip). Any other media
// type, including the +encrypted ones, gives an error wrapping
// errdefs.ErrNotImplemented. diffID may be empty to skip the uncompressed
// check. Nothing is read from compressed until the first Read.
func NewReader(compressed io.Reader, mediaType string, blobDigest, diffID digest.Digest) (*Reader, error) {
	comp, ok := compressionOf(mediaType)
	if !ok {
		return nil, fmt.Errorf("layer %s: media type %q: %w", blobDigest, mediaType, errdefs.ErrNotImplemented)
	}
	if compressed == nil {
		return nil, fmt.Errorf("layer %s: nil blob reader: %w", blobDigest, errdefs.ErrInvalidArgument)
	}
	if err := blobDigest.Validate(); err != nil {
		return nil, fmt.Errorf("layer blob digest %q: %w: %w", blobDigest, errdefs.ErrInvalidArgument, err)
	}
	if diffID != "" {
		if err := diffID.Validate(); err != nil {
			return nil, fmt.Errorf("layer %s: diff ID %q: %w: %w", blobDigest, diffID, errdefs.ErrInvalidArgument, err)
		}
	}
	ch, err := newHash(blobDigest)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", blobDigest, err)
	}
	r := &Reader{
		blobDigest: blobDigest,
		diffID:     diffID,
		comp:       comp,
		compressed: &hashio.Reader{R: compressed, H: ch},
	}
	var uh hash.Hash = discardHash{}
	if comp == compressionNone && diffID != "" && diffID.Algorithm() == blobDigest.Algorithm() {
		// Same bytes, same algorithm: hash once and compare both digests
		// against it.
		r.sameStream = true
	} else if diffID != "" {
		if uh, err = newHash(diffID); err != nil {
			return nil, fmt.Errorf("layer %s: diff ID: %w", blobDigest, err)
		}
	}
	r.uncompressed = &hashio.Reader{H: uh}
	return r, nil
}

// Authenticator proves that a compressed stream is the one the image names
// by another means than its digest: decrypt.Reader, whose HMAC under the
// layer key (and the ciphertext digest the manifest names) authenticate
// the plaintext it decrypted. Verify is called once the stream was read to
// its end; it returns nil only if the stream is authentic.
type Authenticator interface {
	Verify() error
}

// AuthenticateWith makes a.Verify, called after the compressed stream was
// read to its end, the check of the compressed bytes instead of hashing them
// against the blob digest (which then only names the layer in messages);
// the diff ID is still computed and checked. It exists for decrypted
// layers: their plaintext digest, recorded in the wrapped options, is
// implied by the HMAC over the ciphertext (keyed with the layer key from
// the same options), so hashing the plaintext again would cost a SHA-256
// pass over the layer and prove nothing more. Verify and CheckBlob return
// a's error when it fails. Call it before the first Read.
func (r *Reader) AuthenticateWith(a Authenticator) error {
	if a == nil {
		return fmt.Errorf("layer %s: nil authenticator: %w", r.blobDigest, errdefs.ErrInvalidArgument)
	}
	if r.decomp != nil || r.compressed.N > 0 {
		return fmt.Errorf("layer %s: authenticator set after the first read: %w", r.blobDigest, errdefs.ErrFailedPrecondition)
	}
	r.auth = a
	if !r.sameStream { // an uncompressed layer's hash is its diff ID's
		r.compressed.H = discardHash{}
	}
	return nil
}

// checkCompressed compares the compressed stream, read to its end, with
// what the image names: the authenticator's verdict or the blob digest.
func (r *Reader) checkCompressed() error {
	if r.auth != nil {
		return r.auth.Verify()
	}
	if got := digest.NewDigest(r.blobDigest.Algorithm(), r.compressed.H); got != r.blobDigest {
		return &DigestMismatchError{Layer: r.blobDigest, Kind: KindCompressed, Expected: r.blobDigest, Actual: got}
	}
	return nil
}

// discardHash stands in for the diff ID hash when the caller skips it.
type discardHash struct{}

func (discardHash) Write(p []byte) (int, error) { return len(p), nil }
func (discardHash) Sum(b []byte) []byte         { return b }
func (discardHash) Reset()                      {}
func (discardHash) Size() int                   { return 0 }
func (discardHash) BlockSize() int              { return 1 }

func (r *Reader) init() error {
	if r.decomp != nil {
		return nil
	}
	switch r.comp {
	case compressionNone:
		r.decomp = r.compressed
	case compressionGzip:
		gz, err := gzip.NewReader(r.compressed)
		if err != nil {
			return fmt.Errorf("layer %s: gzip header: %w", r.blobDigest, err)
		}
		r.gz = gz
		r.decomp = gz
	case compressionZstd:
		zd, err := zstd.NewReader(r.compressed,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(MaxZstdWindow),
			zstd.WithDecoderMaxMemory(MaxZstdWindow))
		if err != nil {
			return fmt.Errorf("layer %s: zstd decoder: %w", r.blobDigest, err)
		}
		r.zd = zd
		r.decomp = zd
	}
	r.uncompressed.R = r.decomp
	if r.maxUncompressed > 0 {
		r.uncompressed.R = &boundedReader{r: r.decomp, max: r.maxUncompressed, layer: r.blobDigest}
	}
	return nil
}

// Read reads uncompressed tar bytes. When the decompressed stream ends, Read
// verifies both digests and returns the mismatch, if any, instead of io.EOF.
func (r *Reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, fmt.Errorf("layer %s: read after close: %w", r.blobDigest, errdefs.ErrFailedPrecondition)
	}
	if r.verified {
		if r.verifyErr != nil {
			return 0, r.verifyErr
		}
		return 0, io.EOF
	}
	if err := r.init(); err != nil {
		return 0, err
	}
	n, err := r.uncompressed.Read(p)
	if err == io.EOF {
		if verr := r.Verify(); verr != nil {
			return n, verr
		}
		return n, io.EOF
	}
	if err != nil {
		return n, fmt.Errorf("layer %s: decompress %s: %w", r.blobDigest, r.comp, err)
	}
	return n, nil
}

// Verify drains any remaining uncompressed and compressed bytes (such as the
// tar padding after the end-of-archive marker), then checks the compressed
// digest against the blob digest and the uncompressed digest against the diff
// ID (unless the diff ID was empty). A mismatch is a *DigestMismatchError,
// which wraps errdefs.ErrFailedPrecondition. The result is remembered: later
// calls return the same error.
func (r *Reader) Verify() error {
	if r.verified {
		return r.verifyErr
	}
	if r.closed {
		return fmt.Errorf("layer %s: verify after close: %w", r.blobDigest, errdefs.ErrFailedPrecondition)
	}
	r.verified = true
	r.verifyErr = r.verify()
	return r.verifyErr
}

func (r *Reader) verify() error {
	if err := r.init(); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, r.uncompressed); err != nil {
		return fmt.Errorf("layer %s: drain decompressed %s stream: %w", r.blobDigest, r.comp, err)
	}
	if _, err := io.Copy(io.Discard, r.compressed); err != nil {
		return fmt.Errorf("layer %s: drain blob: %w", r.blobDigest, err)
	}
	if err := r.checkCompressed(); err != nil {
		return err
	}
	if r.diffID != "" {
		var got digest.Digest
		if r.sameStream {
			got = digest.NewDigest(r.diffID.Algorithm(), r.compressed.H)
		} else {
			got = digest.NewDigest(r.diffID.Algorithm(), r.uncompressed.H)
		}
		if got != r.diffID {
			return &DigestMismatchError{Layer: r.blobDigest, Kind: KindDiffID, Expected: r.diffID, Actual: got}
		}
	}
	return nil
}

// CompressedBytes is the number of blob bytes read so far.
func (r *Reader) CompressedBytes() int64 { return r.compressed.N }

// UncompressedBytes is the number of decompressed bytes produced so far.
func (r *Reader) UncompressedBytes() int64 { return r.uncompressed.N }

// Close releases the decompressor. It does not close the blob reader, which
// belongs to the caller. Close is idempotent.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if r.gz != nil {
		if cerr := r.gz.Close(); cerr != nil && !errors.Is(cerr, io.EOF) {
			err = fmt.Errorf("layer %s: close gzip reader: %w", r.blobDigest, cerr)
		}
	}
	if r.zd != nil {
		r.zd.Close()
	}
	return err
}

// CheckBlob is for the failure path. When the decompressed stream could not
// be consumed (corrupt compressed data, a tar format error), the usual cause
// is a blob that is not the one its digest names. CheckBlob stops
// decompressing, reads the rest of the blob and returns a
// *DigestMismatchError of kind "compressed" when the blob digest does not
// match (or the Authenticator's error when it fails), so that the caller
// reports the root cause. It returns nil when the
// blob is intact (the fault is in the content itself), or an error when the
// blob cannot be read. The Reader is closed afterwards.
func (r *Reader) CheckBlob() error {
	if r.verified {
		var dm *DigestMismatchError
		if errors.As(r.verifyErr, &dm) && dm.Kind == KindCompressed {
			return r.verifyErr
		}
		if r.verifyErr == nil {
			return nil
		}
	}
	r.Close() // stop the decompressor before reading its source directly
	if _, err := io.Copy(io.Discard, r.compressed); err != nil {
		return fmt.Errorf("layer %s: read rest of blob: %w", r.blobDigest, err)
	}
	return r.checkCompressed()
}
