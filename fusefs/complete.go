package fusefs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// CompleteOptions configure Complete.
type CompleteOptions struct {
	// Dir receives the local copy, named by the blob digest's hex. The
	// directory belongs to the caller (guest memory or the encrypted
	// storage volume); Close leaves the file in place.
	Dir string
	// DiffID is the layer's uncompressed digest from the image config.
	DiffID digest.Digest
	// Concurrency bounds the range requests in flight (default 4).
	Concurrency int
	// SegmentSize is the size of each range request (default 4 MiB).
	SegmentSize int64
	// Verifier, when set, replaces the compressed-digest check, for a Blob
	// whose bytes are not the descriptor's: the local copy of a decrypted
	// layer is plaintext, and decrypt.PlaintextVerifier checks the
	// ciphertext it encrypts back to. It returns a fresh BlobVerifier for
	// each Complete, which is written the local copy in order while the
	// diff ID is computed. The diff ID is checked either way.
	Verifier func() (BlobVerifier, error)
}

// BlobVerifier checks a whole blob from the bytes of its local copy,
// written to it in order from the first to the last. Verify's error
// wrapping errdefs.ErrFailedPrecondition marks the layer bad; any other
// fails this Complete only.
type BlobVerifier interface {
	io.Writer
	Verify() error
}

// Complete fetches the whole blob in order into a local file, checks its
// compressed digest (Options.Digest, or the Verifier) and its diff ID, and only after both
// match serves every further read from the local copy (chunks are still
// verified against the TOC). A mismatch marks the layer bad: every read
// fails from then on. A fetch error leaves the layer as it was.
func (l *Layer) Complete(ctx context.Context, o CompleteOptions) error {
	if err := o.DiffID.Validate(); err != nil {
		return fmt.Errorf("fusefs: diff ID %q: %w: %w", o.DiffID, err, errdefs.ErrInvalidArgument)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = 4 << 20
	}
	l.completeMu.Lock()
	defer l.completeMu.Unlock()
	if err := l.badErr(); err != nil {
		return err
	}
	if l.local.Load() {
		return nil
	}
	f, err := os.CreateTemp(o.Dir, l.opts.Digest.Encoded()+"-*.partial")
	if err != nil {
		return fmt.Errorf("fusefs: complete layer %s: %w", l.opts.Digest, err)
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := l.download(ctx, f, o); err != nil {
		return fmt.Errorf("fusefs: complete layer %s: %w", l.opts.Digest, err)
	}
	var v BlobVerifier
	if o.Verifier != nil {
		if v, err = o.Verifier(); err != nil {
			return fmt.Errorf("fusefs: complete layer %s: %w", l.opts.Digest, err)
		}
	}
	if err := l.checkLocal(f, o.DiffID, v); err != nil {
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			l.markBad(err)
			return l.badErr()
		}
		return fmt.Errorf("fusefs: complete layer %s: %w", l.opts.Digest, err)
	}
	final := filepath.Join(o.Dir, l.opts.Digest.Encoded())
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("fusefs: complete layer %s: %w", l.opts.Digest, err)
	}
	keep = true
	l.src.Store(&blobRef{&FileBlob{f: f, size: l.size}})
	l.plain.setDir(filepath.Join(o.Dir, l.opts.Digest.Encoded()+".files"))
	l.local.Store(true)
	l.log.WithField("path", final).Info("lazy layer: blob complete, digest and diff ID verified; reads now local")
	return nil
}

// download fetches the blob's segments in order, at most o.Concurrency at
// a time, into f. The o.Concurrency segment buffers are reused, so memory
// stays the same whatever the blob's size.
func (l *Layer) download(ctx context.Context, f *os.File, o CompleteOptions) error {
	src := l.src.Load()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Concurrency)
	bufs := make(chan []byte, o.Concurrency)
	for range o.Concurrency {
		bufs <- make([]byte, min(o.SegmentSize, l.size))
	}
	for off := int64(0); off < l.size; off += o.SegmentSize {
		n := min(o.SegmentSize, l.size-off)
		g.Go(func() error {
			buf := (<-bufs)[:n] // SetLimit: never more goroutines than buffers
			defer func() { bufs <- buf[:cap(buf)] }()
			if _, err := src.ReadAt(gctx, buf, off); err != nil && !(errors.Is(err, io.EOF) && off+n == l.size) {
				return err
			}
			_, err := f.WriteAt(buf, off)
			return err
		})
		if gctx.Err() != nil {
			break
		}
	}
	return g.Wait()
}

// checkLocal reads the local copy once: the compressed digest over its
// bytes (or v, when set, checks them), the diff ID over their
// decompression. Mismatches wrap errdefs.ErrFailedPrecondition.
func (l *Layer) checkLocal(f *os.File, diffID digest.Digest, v BlobVerifier) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	comp := l.opts.Digest.Algorithm().Digester()
	var sink io.Writer = comp.Hash()
	if v != nil {
		sink = v
	}
	tee := io.TeeReader(bufio.NewReaderSize(f, 1<<20), sink)
	zr, err := l.format.stream(tee, false)
	if err != nil {
		return fmt.Errorf("blob is not %s: %w: %w", l.format.name, err, errdefs.ErrFailedPrecondition)
	}
	defer zr.Close()
	unc := diffID.Algorithm().Digester()
	if _, err := io.Copy(unc.Hash(), zr); err != nil {
		return fmt.Errorf("decompress blob: %w: %w", err, errdefs.ErrFailedPrecondition)
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return err
	}
	if v != nil {
		if err := v.Verify(); err != nil {
			return err
		}
	} else if got := comp.Digest(); got != l.opts.Digest {
		return fmt.Errorf("compressed digest is %s, the descriptor names %s: %w", got, l.opts.Digest, errdefs.ErrFailedPrecondition)
	}
	if got := unc.Digest(); got != diffID {
		return fmt.Errorf("diff ID is %s, the config names %s: %w", got, diffID, errdefs.ErrFailedPrecondition)
	}
	return nil
}
