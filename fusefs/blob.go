package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/registry"
)

// Blob is random access to a compressed (eStargz) layer blob: a registry,
// a local copy, or a decrypting reader over an encrypted blob
// (image/decrypt provides one with this method set). Nothing read through
// a Blob is trusted: the Layer verifies it.
type Blob interface {
	// ReadAt reads len(p) bytes at off. Like io.ReaderAt it returns
	// n < len(p) only with an error (io.EOF at the blob's end).
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// Size is the blob's size as its descriptor gives it.
	Size() int64
}

// RegistryBlob reads a layer blob by HTTP Range requests through the
// registry client, so the proxy, extra roots, credentials and mirrors of
// full pulls apply. Identical concurrent reads make one request.
type RegistryBlob struct {
	client *registry.Client
	repos  []name.Repository
	desc   ocispec.Descriptor

	mu      sync.Mutex
	current int // index in repos of the location that answered last
	flights map[[2]int64]*rangeFlight
}

// rangeFlight is one range fetch that other readers of the same range join.
// The fetching caller reads into its own buffer and lends it to the joiners:
// it returns only after every joiner copied from it (readers), so a fetch
// allocates nothing and the background completion's 4 MiB segments leave no
// garbage behind.
type rangeFlight struct {
	done    chan struct{}
	readers sync.WaitGroup // joiners still to copy data
	joined  int            // joiners so far (under RegistryBlob.mu)
	data    []byte
	err     error
}

// NewRegistryBlob returns the blob desc as served by repos, tried in order
// (as Client.Repositories returns them: mirrors first). Every byte is
// verified by the Layer, so a mirror is as good as the origin.
func NewRegistryBlob(client *registry.Client, repos []name.Repository, desc ocispec.Descriptor) (*RegistryBlob, error) {
	if len(repos) == 0 {
		return nil, errors.New("fusefs: registry blob without a repository")
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("fusefs: layer digest %q: %w", desc.Digest, err)
	}
	if desc.Size <= 0 {
		return nil, fmt.Errorf("fusefs: layer %s: size %d", desc.Digest, desc.Size)
	}
	return &RegistryBlob{client: client, repos: repos, desc: desc, flights: map[[2]int64]*rangeFlight{}}, nil
}

// Size returns the descriptor's size.
func (b *RegistryBlob) Size() int64 { return b.desc.Size }

// ReadAt fetches the range. A read of the same range already in flight is
// joined rather than repeated.
func (b *RegistryBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	key := [2]int64{off, int64(len(p))}
	b.mu.Lock()
	if f, ok := b.flights[key]; ok {
		f.readers.Add(1) // under b.mu: before the fetcher removes f and waits
		f.joined++
		b.mu.Unlock()
		n, retry, err := f.join(ctx, p)
		if retry {
			return b.fetch(ctx, p, off) // the caller that fetched gave up, not this one
		}
		return n, err
	}
	f := &rangeFlight{done: make(chan struct{})}
	b.flights[key] = f
	b.mu.Unlock()

	n, err := b.fetch(ctx, p, off)
	f.data, f.err = p[:n], err
	b.mu.Lock()
	delete(b.flights, key)
	b.mu.Unlock()
	close(f.done)
	f.readers.Wait() // p is the caller's again once every joiner copied
	return n, err
}

// join waits for the flight and copies its bytes into p; retry says the
// fetching caller was cancelled while this one was not.
func (f *rangeFlight) join(ctx context.Context, p []byte) (int, bool, error) {
	defer f.readers.Done()
	select {
	case <-f.done:
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
	if f.err != nil && cancelled(f.err) && ctx.Err() == nil {
		return 0, true, nil
	}
	return copy(p, f.data), false, f.err
}

func (b *RegistryBlob) fetch(ctx context.Context, p []byte, off int64) (int, error) {
	b.mu.Lock()
	first := b.current
	b.mu.Unlock()
	var errs []string
	var last error
	for i := range b.repos {
		idx := (first + i) % len(b.repos)
		n, err := b.client.ReadBlobAt(ctx, b.repos[idx], b.desc, p, off)
		if err == nil || errors.Is(err, io.EOF) {
			b.mu.Lock()
			b.current = idx
			b.mu.Unlock()
			return n, err
		}
		if ctx.Err() != nil {
			return 0, err
		}
		last = err
		errs = append(errs, fmt.Sprintf("%s: %v", b.repos[idx], err))
	}
	if len(b.repos) == 1 {
		return 0, last
	}
	return 0, fmt.Errorf("blob %s from every location:\n%s: %w", b.desc.Digest, strings.Join(errs, "\n"), last)
}

// FileBlob is a Blob over a local file: a completed local copy.
type FileBlob struct {
	f    *os.File
	size int64
}

// ErrBadLocalCopy: a local copy that opened but cannot be used (its size
// is not the descriptor's, or it cannot be stat'ed).
var ErrBadLocalCopy = errors.New("unusable local copy")

// OpenFileBlob opens the local copy at path. When size is positive it must
// be the file's size (the descriptor's); 0 takes the file as it is. Errors
// opening the file are os.Open's; those after it wrap ErrBadLocalCopy.
func OpenFileBlob(path string, size int64) (*FileBlob, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", ErrBadLocalCopy, err)
	}
	if size > 0 && fi.Size() != size {
		f.Close()
		return nil, fmt.Errorf("%w: %s is %d bytes, the descriptor says %d", ErrBadLocalCopy, path, fi.Size(), size)
	}
	return &FileBlob{f: f, size: fi.Size()}, nil
}

// Size is the file's size.
func (b *FileBlob) Size() int64 { return b.size }

// ReadAt reads from the file.
func (b *FileBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return b.f.ReadAt(p, off)
}

// Close closes the file.
func (b *FileBlob) Close() error { return b.f.Close() }
