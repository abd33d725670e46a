package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/internal/retry"
)

// MaxBlobRange bounds one ReadBlobAt request: a lazy reader fetches chunks
// (a few MiB), never whole layers, through it.
const MaxBlobRange = 256 << 20

// ReadBlobAt reads len(p) bytes of the blob desc at offset off with one HTTP
// Range request, retried with backoff like every request (and again when
// the body is cut short). It fills p completely unless the range ends at the
// blob's end, where it returns the bytes up to there and io.EOF. The answer
// must be 206 with a Content-Range naming exactly the bytes asked for (a 200
// is accepted only when the range is the whole blob); no byte beyond the
// range is read. Like OpenBlob it verifies no digest: the caller does.
func (c *Client) ReadBlobAt(ctx context.Context, repo name.Repository, desc ocispec.Descriptor, p []byte, off int64) (int, error) {
	if err := desc.Digest.Validate(); err != nil {
		return 0, fmt.Errorf("invalid blob digest %q: %w: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if off < 0 || desc.Size < 0 {
		return 0, fmt.Errorf("blob %s: range at %d of a %d-byte blob: %w", desc.Digest, off, desc.Size, errdefs.ErrInvalidArgument)
	}
	if len(p) > MaxBlobRange {
		return 0, fmt.Errorf("blob %s: range of %d bytes exceeds %d: %w", desc.Digest, len(p), MaxBlobRange, errdefs.ErrInvalidArgument)
	}
	if off >= desc.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), desc.Size) // exclusive
	want := p[:end-off]
	hdr := http.Header{}
	hdr.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	path := "blobs/" + desc.Digest.String()
	backoff := c.retry().Backoff()
	for {
		err := c.readRange(ctx, repo, path, hdr, desc, want, off, end)
		if err == nil {
			break
		}
		if !retryable(err) || ctx.Err() != nil {
			return 0, err
		}
		d, ok := backoff.Next()
		if !ok {
			return 0, err
		}
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).WithField("offset", off).Debug("blob range read failed, retrying")
		if serr := retry.Sleep(ctx, d); serr != nil {
			return 0, serr
		}
	}
	if end-off < int64(len(p)) {
		return int(end - off), io.EOF
	}
	return len(p), nil
}

// readRange makes one request (itself retried by get) and reads its body
// into want; a short body is a retryable error.
func (c *Client) readRange(ctx context.Context, repo name.Repository, path string, hdr http.Header, desc ocispec.Descriptor, want []byte, off, end int64) error {
	resp, err := c.get(ctx, repo, path, hdr, http.StatusOK, http.StatusPartialContent)
	if err != nil {
		return fmt.Errorf("fetch blob %s bytes %d-%d from %s: %w", desc.Digest, off, end-1, repo, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if off != 0 || end != desc.Size {
			return &RangeError{Digest: desc.Digest.String(), Msg: "registry ignored the Range header (200 instead of 206)"}
		}
	} else if err := checkContentRange(resp.Header.Get("Content-Range"), off, end, desc.Size); err != nil {
		return &RangeError{Digest: desc.Digest.String(), Msg: err.Error()}
	}
	if _, err := io.ReadFull(resp.Body, want); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read blob %s bytes %d-%d from %s: %w", desc.Digest, off, end-1, repo, err)
	}
	return nil
}

// checkContentRange checks "bytes first-last/size" against the request.
func checkContentRange(v string, off, end, size int64) error {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return fmt.Errorf("206 with Content-Range %q, not %q", v, fmt.Sprintf("bytes %d-%d/%d", off, end-1, size))
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return fmt.Errorf("malformed Content-Range %q", v)
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return fmt.Errorf("malformed Content-Range %q", v)
	}
	f, err1 := strconv.ParseInt(first, 10, 64)
	l, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || f != off || l != end-1 {
		return fmt.Errorf("Content-Range %q does not match the requested bytes %d-%d", v, off, end-1)
	}
	if total != "*" {
		t, err := strconv.ParseInt(total, 10, 64)
		if err != nil || t != size {
			return fmt.Errorf("Content-Range %q names a blob size other than the descriptor's %d", v, size)
		}
	}
	return nil
}

// RangeError is a registry answer to a range request that does not match
// what was asked for. It is not retried.
type RangeError struct {
	Digest, Msg string
}

func (e *RangeError) Error() string { return fmt.Sprintf("blob %s: %s", e.Digest, e.Msg) }

func (e *RangeError) Unwrap() error { return errdefs.ErrFailedPrecondition }
