package decrypt

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// HMACVerifier checks a whole encrypted blob against the HMAC-SHA256 in its
// pubopts, for the background fetch that completes a lazily pulled layer:
// write the ciphertext to it in order, from the first byte to the last,
// then call Verify. ocicrypt authenticates nothing short of the whole blob,
// so until Verify returned nil the decrypted bytes served by ReaderAt are
// only as trustworthy as the chunk digests the caller checked them
// against (the TOC of an eStargz layer); a mismatch means the layer must
// be treated as bad from then on. The blob digest is the caller's to check,
// as for plain layers. An HMACVerifier is not safe for concurrent use.
type HMACVerifier struct {
	layer digest.Digest
	size  int64
	mac   hash.Hash // keyed with the layer key
	want  []byte
	n     int64
}

// NewHMACVerifier returns a verifier for this layer's ciphertext.
func (k *LayerKey) NewHMACVerifier() (*HMACVerifier, error) {
	if k.block == nil {
		return nil, fmt.Errorf("layer %s: layer key was cleared: %w", k.layer, errdefs.ErrFailedPrecondition)
	}
	return &HMACVerifier{layer: k.layer, size: k.size, mac: hmac.New(sha256.New, k.key), want: k.wantMAC}, nil
}

// Write adds the next ciphertext bytes. It never fails.
func (v *HMACVerifier) Write(p []byte) (int, error) {
	v.mac.Write(p)
	v.n += int64(len(p))
	return len(p), nil
}

// Verify reports whether the bytes written are the whole blob the
// descriptor names (its size, when it had one) and carry the expected HMAC
// (compared in constant time). A wrong HMAC wraps ErrHMACMismatch, a wrong
// size errdefs.ErrFailedPrecondition; both name the layer.
func (v *HMACVerifier) Verify() error {
	if v.size > 0 && v.n != v.size {
		return errBlobSize(v.layer, v.n, v.size)
	}
	if !hmac.Equal(v.mac.Sum(nil), v.want) {
		return fmt.Errorf("layer %s: %w", v.layer, ErrHMACMismatch)
	}
	return nil
}

// VerifyHMAC reads the whole ciphertext from r and verifies it as
// HMACVerifier does; a read error is returned as such.
func (k *LayerKey) VerifyHMAC(r io.Reader) error {
	v, err := k.NewHMACVerifier()
	if err != nil {
		return err
	}
	if _, err := io.Copy(v, r); err != nil {
		return fmt.Errorf("layer %s: read encrypted blob: %w", k.layer, err)
	}
	return v.Verify()
}

// PlaintextVerifier checks a whole encrypted blob from its decrypted
// bytes, for a lazily pulled layer whose local copy is plaintext: write
// the plaintext to it in order, from the first byte to the last, then call
// Verify. It encrypts them again (AES-CTR is its own inverse, so this gives
// back exactly the ciphertext they were decrypted from) and checks that
// ciphertext as a full pull does: its size and digest against the
// descriptor, and ocicrypt's HMAC. No ciphertext needs to be kept while the
// blob is fetched out of order, and the check costs one more AES-CTR pass
// over a copy already in memory or on the encrypted volume. A
// PlaintextVerifier is not safe for concurrent use.
type PlaintextVerifier struct {
	stream cipher.Stream
	mac    *HMACVerifier // also counts the bytes
	digest hash.Hash
	buf    []byte
}

// plaintextVerifierBuffer is the scratch space ciphertext is rebuilt in.
const plaintextVerifierBuffer = 64 << 10

// NewPlaintextVerifier returns a verifier for this layer's plaintext.
func (k *LayerKey) NewPlaintextVerifier() (*PlaintextVerifier, error) {
	mac, err := k.NewHMACVerifier()
	if err != nil {
		return nil, err
	}
	if !k.layer.Algorithm().Available() {
		return nil, fmt.Errorf("layer %s: digest algorithm unavailable: %w", k.layer, errdefs.ErrNotImplemented)
	}
	return &PlaintextVerifier{
		stream: cipher.NewCTR(k.block, k.nonce[:]),
		mac:    mac,
		digest: k.layer.Algorithm().Hash(),
		buf:    make([]byte, plaintextVerifierBuffer),
	}, nil
}

// Write adds the next plaintext bytes. It never fails.
func (v *PlaintextVerifier) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c := v.buf[:min(len(p), len(v.buf))]
		v.stream.XORKeyStream(c, p[:len(c)])
		v.digest.Write(c)
		_, _ = v.mac.Write(c) // never fails
		p = p[len(c):]
	}
	return n, nil
}

// Verify reports whether the ciphertext rebuilt from the bytes written has
// the descriptor's size, the expected HMAC and the descriptor's digest.
// Every mismatch wraps errdefs.ErrFailedPrecondition (an HMAC mismatch also
// ErrHMACMismatch) and names the layer.
func (v *PlaintextVerifier) Verify() error {
	if err := v.mac.Verify(); err != nil { // size, then HMAC
		return err
	}
	return checkBlobDigest(v.mac.layer, v.digest)
}

// checkBlobDigest compares the digest of the ciphertext hashed into h with
// the descriptor's.
func checkBlobDigest(layer digest.Digest, h hash.Hash) error {
	if got := digest.NewDigest(layer.Algorithm(), h); got != layer {
		return fmt.Errorf("layer %s: encrypted blob digest mismatch: got %s: %w", layer, got, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// errBlobSize: the ciphertext is n bytes where the descriptor says size.
func errBlobSize(layer digest.Digest, n, size int64) error {
	return fmt.Errorf("layer %s: encrypted blob is %d bytes, descriptor says %d: %w", layer, n, size, errdefs.ErrFailedPrecondition)
}
