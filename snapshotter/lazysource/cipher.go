package lazysource

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// An encrypted layer's completion must check the ciphertext (its digest
// and ocicrypt's HMAC, which covers the whole ciphertext in order), but
// fusefs.Layer.Complete sees only the decrypted bytes and fetches segments
// concurrently. cipherTee sits under the decrypting reader and hands the
// ciphertext read on behalf of a completion (its context carries a
// cipherSink) to the sink, which hashes it in blob order, holding segments
// that arrive early (bounded by maxPending: a segment beyond the bound
// waits for the gap before it to be filled, which the segment at the gap
// never does, so this cannot deadlock). Reads for the container
// (on-demand, prefetch) carry no sink and are not hashed.

const maxPending = 64 << 20

type sinkKey struct{}

// cipherTee is the registry blob of an encrypted layer, passing the
// ciphertext of completion reads to their sink.
type cipherTee struct{ src fusefs.Blob }

func (t *cipherTee) Size() int64 { return t.src.Size() }

func (t *cipherTee) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := t.src.ReadAt(ctx, p, off)
	if s, ok := ctx.Value(sinkKey{}).(*cipherSink); ok && n > 0 {
		if serr := s.put(ctx, p[:n], off); serr != nil && err == nil {
			err = serr
		}
	}
	return n, err
}

// cipherSink hashes ciphertext in blob order.
type cipherSink struct {
	desc ocispec.Descriptor
	mac  *decrypt.HMACVerifier
	dig  digest.Digester

	mu      sync.Mutex
	next    int64
	pending map[int64][]byte
	held    int64
	changed chan struct{} // closed and replaced when next advances
}

func newCipherSink(key *decrypt.LayerKey, desc ocispec.Descriptor) (*cipherSink, error) {
	mac, err := key.NewHMACVerifier()
	if err != nil {
		return nil, err
	}
	return &cipherSink{desc: desc, mac: mac, dig: desc.Digest.Algorithm().Digester(), pending: map[int64][]byte{}, changed: make(chan struct{})}, nil
}

// put takes the ciphertext p found at off (it does not keep p).
func (s *cipherSink) put(ctx context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if end := off + int64(len(p)); end <= s.next {
		return nil // hashed already (a repeated read)
	} else if off < s.next {
		p, off = p[s.next-off:], s.next
	}
	for off > s.next && s.held+int64(len(p)) > maxPending {
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		}
	}
	if off < s.next { // filled while waiting
		if off+int64(len(p)) <= s.next {
			return nil
		}
		p, off = p[s.next-off:], s.next
	}
	if off > s.next {
		if _, dup := s.pending[off]; !dup {
			s.pending[off] = append([]byte(nil), p...)
			s.held += int64(len(p))
		}
		return nil
	}
	s.write(p)
	for {
		b, ok := s.pending[s.next]
		if !ok {
			break
		}
		delete(s.pending, s.next)
		s.held -= int64(len(b))
		s.write(b)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *cipherSink) write(p []byte) {
	_, _ = s.mac.Write(p)        // never fails
	_, _ = s.dig.Hash().Write(p) // never fails
	s.next += int64(len(p))
}

// verify checks that the whole ciphertext was hashed and matches the
// descriptor's digest and the HMAC; mismatches wrap
// errdefs.ErrFailedPrecondition (the layer is then bad).
func (s *cipherSink) verify() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != s.desc.Size {
		return fmt.Errorf("layer %s: %d of %d ciphertext bytes were hashed in order", s.desc.Digest, s.next, s.desc.Size)
	}
	if got := s.dig.Digest(); got != s.desc.Digest {
		return fmt.Errorf("layer %s: the encrypted blob's digest is %s: %w", s.desc.Digest, got, errdefs.ErrFailedPrecondition)
	}
	return s.mac.Verify()
}
