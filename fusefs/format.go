package fusefs

import (
	"bytes"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// format is one compression of the eStargz layout: gzip (eStargz) or zstd
// (zstd:chunked). The footer tells which.
type format struct {
	name string
	dec  estargz.Decompressor // footer parsing; TOC parsing once verified
	// tocJSON decompresses an unverified compressed TOC.
	tocJSON func(compressed []byte) (io.ReadCloser, error)
	// stream decompresses a chunk's member (one=true: stop at its end) or
	// the whole blob, with bounded memory.
	stream func(r io.Reader, one bool) (io.ReadCloser, error)
}

// maxZstdWindow bounds the memory a zstd frame can make the decoder take
// before anything is verified (zstd:chunked writers use far smaller windows).
const maxZstdWindow = 64 << 20

var (
	gzipFormat = &format{
		name: "gzip",
		dec:  new(estargz.GzipDecompressor),
		tocJSON: func(c []byte) (io.ReadCloser, error) {
			return new(estargz.GzipDecompressor).DecompressTOC(bytes.NewReader(c))
		},
		stream: func(r io.Reader, one bool) (io.ReadCloser, error) {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return nil, err
			}
			zr.Multistream(!one)
			return zr, nil
		},
	}
	zstdFormat = &format{
		name: "zstd:chunked",
		dec:  new(zstdchunked.Decompressor),
		tocJSON: func(c []byte) (io.ReadCloser, error) {
			return newZstd(bytes.NewReader(c))
		},
		stream: func(r io.Reader, _ bool) (io.ReadCloser, error) {
			// A chunk is read to its size and no further, so one frame or
			// many makes no difference.
			return newZstd(r)
		},
	}
	formats = []*format{gzipFormat, zstdFormat}
)

func newZstd(r io.Reader) (io.ReadCloser, error) {
	d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(4*maxZstdWindow))
	if err != nil {
		return nil, err
	}
	return d.IOReadCloser(), nil
}

// maxFooterSize is the longest footer of the formats.
const maxFooterSize = estargz.FooterSize

// parseFooter finds the format whose footer ends tail (the blob's last
// bytes) and returns the compressed TOC's offset and size.
func parseFooter(tail []byte, blobSize int64) (*format, int64, int64, error) {
	var errs []error
	for _, f := range formats {
		fs := f.dec.FooterSize()
		if int64(len(tail)) < fs {
			continue
		}
		_, off, size, err := f.dec.ParseFooter(tail[int64(len(tail))-fs:])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
			continue
		}
		if size <= 0 { // gzip: the TOC runs up to the footer
			size = blobSize - fs - off
		}
		if off < 0 || size <= 0 || off > blobSize-fs || size > blobSize-fs-off {
			return nil, 0, 0, fmt.Errorf("%s footer puts a %d-byte TOC at %d in a %d-byte blob: %w", f.name, size, off, blobSize, errdefs.ErrInvalidArgument)
		}
		return f, off, size, nil
	}
	return nil, 0, 0, fmt.Errorf("not an eStargz or zstd:chunked blob: %v: %w", errs, errdefs.ErrInvalidArgument)
}
