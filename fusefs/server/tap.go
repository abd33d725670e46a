package server

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// checkTap sits under a decrypting reader (or over a local plaintext copy)
// and checks what fusefs.Layer.Complete reads through it, for
// CompleteOptions.CheckBlob: Complete's bytes are plaintext, but the
// digest and HMAC of an encrypted layer are over the ciphertext. Complete
// reads the blob in aligned segments of segSize, several at a time and
// finishing out of order; the tap recognises those reads (offset a
// multiple of segSize, full length), hashes them in blob order, and holds
// the few that finish early. Lazy reads of other shapes pass untouched.
type checkTap struct {
	src     fusefs.Blob
	segSize int64
	want    digest.Digest
	newMAC  func() (*decrypt.HMACVerifier, error) // nil: no HMAC (a local plaintext copy)

	mu      sync.Mutex
	armed   bool
	next    int64
	digest  hash.Hash
	mac     *decrypt.HMACVerifier
	pending map[int64][]byte
	spare   [][]byte // buffers of written pending segments, for the next ones
	lost    bool
}

// segment returns an empty buffer for a segment that finished early,
// reusing one already written, so a pass holds at most maxPending.
func (t *checkTap) segment() []byte {
	if n := len(t.spare); n > 0 {
		b := t.spare[n-1]
		t.spare = t.spare[:n-1]
		return b
	}
	return make([]byte, 0, t.segSize)
}

// maxPending bounds the early segments held (Complete has completeConcurrency
// in flight; lazy reads of the same shape may add a few).
const maxPending = 4 * completeConcurrency

func (t *checkTap) Size() int64 { return t.src.Size() }

func (t *checkTap) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := t.src.ReadAt(ctx, p, off)
	size := t.src.Size()
	if off >= 0 && off%t.segSize == 0 && off < size && int64(n) == min(t.segSize, size-off) && int64(len(p)) == int64(n) &&
		(err == nil || errors.Is(err, io.EOF)) {
		t.feed(off, p[:n])
	}
	return n, err
}

// arm starts a fresh pass, before each Complete.
func (t *checkTap) arm() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed, t.next, t.lost, t.pending = true, 0, false, map[int64][]byte{}
	t.digest = t.want.Algorithm().Hash()
	t.mac = nil
	if t.newMAC != nil {
		m, err := t.newMAC()
		if err != nil {
			t.armed = false
			return err
		}
		t.mac = m
	}
	return nil
}

func (t *checkTap) feed(off int64, b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case !t.armed || off < t.next:
		return
	case off > t.next:
		if _, ok := t.pending[off]; ok {
			return
		}
		if len(t.pending) >= maxPending {
			t.lost = true
			return
		}
		t.pending[off] = append(t.segment(), b...)
		return
	}
	t.write(b)
	for {
		nb, ok := t.pending[t.next]
		if !ok {
			return
		}
		delete(t.pending, t.next)
		t.write(nb)
		t.spare = append(t.spare, nb[:0])
	}
}

func (t *checkTap) write(b []byte) {
	t.digest.Write(b)
	if t.mac != nil {
		_, _ = t.mac.Write(b) // never fails
	}
	t.next += int64(len(b))
}

// check is CheckBlob: the digest (and HMAC) over the bytes Complete read.
// A pass the tap could not follow is an ordinary error (Complete is
// retried); a mismatch wraps errdefs.ErrFailedPrecondition (the layer is
// bad).
func (t *checkTap) check(context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed = false
	t.pending, t.spare = nil, nil
	if t.lost || t.next != t.src.Size() {
		return fmt.Errorf("blob check followed %d of %d bytes; fetch again", t.next, t.src.Size())
	}
	if got := digest.NewDigest(t.want.Algorithm(), t.digest); got != t.want {
		return fmt.Errorf("blob digest is %s, want %s: %w", got, t.want, errdefs.ErrFailedPrecondition)
	}
	if t.mac != nil {
		return t.mac.Verify()
	}
	return nil
}
