package decrypt

import (
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
		return fmt.Errorf("layer %s: encrypted blob is %d bytes, descriptor says %d: %w", v.layer, v.n, v.size, errdefs.ErrFailedPrecondition)
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
