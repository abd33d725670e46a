package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

type memBlob []byte

func (m memBlob) Size() int64 { return int64(len(m)) }

func (m memBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return bytes.NewReader(m).ReadAt(p, off)
}

// TestCheckTapOrder: segments read out of order (as Complete's parallel
// fetch finishes them), mixed with lazy reads of other shapes, hash to
// the blob's digest; a skipped segment is an ordinary (retryable) error; a
// different blob is a precondition failure.
func TestCheckTapOrder(t *testing.T) {
	blob := memBlob(bytes.Repeat([]byte("0123456789abcdef"), 1000)) // 16000 bytes
	const seg = 4096
	read := func(tap *checkTap, off, n int64) {
		if _, err := tap.ReadAt(context.Background(), make([]byte, n), off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
	}
	tap := &checkTap{src: blob, segSize: seg, want: digest.FromBytes(blob)}
	if err := tap.arm(); err != nil {
		t.Fatal(err)
	}
	read(tap, 100, 50)            // lazy read
	read(tap, 3*seg, 16000-3*seg) // last segment first
	read(tap, seg, seg)
	read(tap, 0, 10) // lazy read at a segment start, short
	read(tap, 0, seg)
	read(tap, seg, seg) // a repeat
	read(tap, 2*seg, seg)
	if err := tap.check(context.Background()); err != nil {
		t.Fatal(err)
	}

	if err := tap.arm(); err != nil {
		t.Fatal(err)
	}
	read(tap, 0, seg)
	read(tap, 2*seg, seg)
	read(tap, 3*seg, 16000-3*seg)
	if err := tap.check(context.Background()); err == nil || errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a pass missing a segment: %v", err)
	}

	other := &checkTap{src: blob, segSize: seg, want: digest.FromString("another blob")}
	if err := other.arm(); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < 16000; off += seg {
		read(other, off, min(seg, 16000-off))
	}
	if err := other.check(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("wrong digest: %v", err)
	}
}
