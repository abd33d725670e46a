package decrypt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// RangeSource is random access to a blob, the method set of fusefs's
// registry range reader: ReadAt follows io.ReaderAt (n < len(p) only with
// an error, io.EOF at the end of the blob) with a context, and Size is the
// blob size.
type RangeSource interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}

// ReaderAt decrypts an ocicrypt-encrypted layer blob by range: it has the
// RangeSource method set over the plaintext (the decrypted, still
// compressed, layer), which is as long as the ciphertext.
//
// Decrypted bytes are NOT authenticated: AES-CTR is malleable, and the
// HMAC covers only the whole blob (NewHMACVerifier, checked when the
// background fetch completes). A lazy reader must trust them no more than
// bytes of a plain layer: the caller (fusefs) verifies every decompressed
// chunk against its TOC digest, and the TOC against the descriptor's TOC
// digest annotation, before anything reaches the kernel.
//
// A ReaderAt is safe for concurrent use if its source is.
type ReaderAt struct {
	src   RangeSource
	layer digest.Digest
	block cipher.Block
	nonce [NonceSize]byte
	size  int64
}

// A ReaderAt is itself a RangeSource, so a consumer that takes the method
// set serves encrypted and plain blobs alike.
var _ RangeSource = (*ReaderAt)(nil)

// NewReaderAt returns the decrypting view of src, the encrypted blob of
// this layer. When the descriptor had a size, src must have the same.
func (k *LayerKey) NewReaderAt(src RangeSource) (*ReaderAt, error) {
	if k.block == nil {
		return nil, fmt.Errorf("layer %s: layer key was cleared: %w", k.layer, errdefs.ErrFailedPrecondition)
	}
	size := src.Size()
	if size < 0 || (k.size > 0 && size != k.size) {
		return nil, errBlobSize(k.layer, size, k.size)
	}
	return &ReaderAt{src: src, layer: k.layer, block: k.block, nonce: k.nonce, size: size}, nil
}

// Size is the size of the ciphertext, which is also the plaintext's.
func (r *ReaderAt) Size() int64 { return r.size }

// ReadAt reads len(p) ciphertext bytes at off from the source and decrypts
// them in place, with io.ReaderAt's semantics: at or past the end it
// returns io.EOF, and a read reaching the end returns the bytes up to it
// with io.EOF. A source that ends early gives an error wrapping
// io.ErrUnexpectedEOF; either way p[:n] is decrypted.
func (r *ReaderAt) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("layer %s: read at negative offset %d: %w", r.layer, off, errdefs.ErrInvalidArgument)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if rem := r.size - off; int64(len(want)) > rem {
		want = want[:rem]
	}
	n, err := r.src.ReadAt(ctx, want, off)
	n = max(0, min(n, len(want)))
	r.xorKeyStreamAt(want[:n], off)
	switch {
	case n == len(want) && len(want) < len(p):
		return n, io.EOF
	case n == len(want):
		return n, nil
	case err == nil || errors.Is(err, io.EOF):
		return n, fmt.Errorf("layer %s: encrypted blob ended at %d, before its size %d: %w", r.layer, off+int64(n), r.size, io.ErrUnexpectedEOF)
	default:
		return n, fmt.Errorf("layer %s: read encrypted range at %d: %w", r.layer, off, err)
	}
}

// xorKeyStreamAt XORs buf, which sits at byte off of the blob, with the
// layer's keystream: the CTR counter block starts at nonce + off/16 and
// the first off%16 keystream bytes are skipped.
func (r *ReaderAt) xorKeyStreamAt(buf []byte, off int64) {
	if len(buf) == 0 {
		return
	}
	ctr := counterAt(r.nonce, uint64(off)/aes.BlockSize)
	s := cipher.NewCTR(r.block, ctr[:])
	if skip := off % aes.BlockSize; skip != 0 {
		var discard [aes.BlockSize]byte
		s.XORKeyStream(discard[:skip], discard[:skip])
	}
	s.XORKeyStream(buf, buf)
}

// counterAt is the counter block blocks blocks after nonce: a 128-bit
// big-endian addition with carry that wraps at 2^128, as cipher.NewCTR
// increments it.
func counterAt(nonce [NonceSize]byte, blocks uint64) [NonceSize]byte {
	hi := binary.BigEndian.Uint64(nonce[:8])
	lo, carry := bits.Add64(binary.BigEndian.Uint64(nonce[8:]), blocks, 0)
	var ctr [NonceSize]byte
	binary.BigEndian.PutUint64(ctr[:8], hi+carry)
	binary.BigEndian.PutUint64(ctr[8:], lo)
	return ctr
}
