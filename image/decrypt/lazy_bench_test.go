package decrypt_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"errors"
	"io"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// FuzzReaderAt: any (offset, length) over an ocicrypt blob whose nonce
// carries into the high half of the counter after 3 blocks decrypts to
// exactly the plaintext slice, with io.ReaderAt's end-of-blob semantics.
func FuzzReaderAt(f *testing.F) {
	nonce, err := hex.DecodeString("00000000000000fffffffffffffffffd")
	if err != nil {
		f.Fatal(err)
	}
	l := newLazyLayer(f, randomBytes(f, 5000), randomKey(f), nonce)
	for _, seed := range []struct {
		off int64
		n   uint32
	}{{0, 0}, {0, 5000}, {15, 1}, {16, 16}, {17, 33}, {47, 2}, {4999, 1}, {4999, 2}, {5000, 1}, {9000, 10}, {-1, 1}} {
		f.Add(seed.off, seed.n)
	}
	f.Fuzz(func(t *testing.T, off int64, n uint32) {
		n %= 12000
		if off < 0 {
			if _, err := l.ra.ReadAt(context.Background(), make([]byte, n), off); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ReadAt at %d: %v", off, err)
			}
			return
		}
		l.checkRange(t, off, int(n))
	})
}

// BenchmarkReaderAt compares random 64 KiB ReadAt calls (unaligned
// offsets, each with a fresh counter block and the skipped keystream
// bytes, copying from an in-memory source) against a sequential
// AES-256-CTR stream decryption (one cipher.NewCTR, 64 KiB reads from an
// in-memory reader decrypted in place) of as many bytes of the same 64 MiB
// ciphertext, in the same run. It reports both throughputs
// and "x-stream", the random-access throughput as a fraction of the
// stream's (1.0 = as fast).
func BenchmarkReaderAt(b *testing.B) {
	const (
		size  = 64 << 20
		chunk = 64 << 10
	)
	key, nonce := randomKey(b), randomBytes(b, aes.BlockSize)
	l := newLazyLayer(b, randomBytes(b, size), key, nonce)
	buf := make([]byte, chunk)
	block, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	stream := func() {
		// As decrypt.Reader does: read the ciphertext into the buffer,
		// decrypt in place.
		s, src := cipher.NewCTR(block, nonce), bytes.NewReader(l.ct)
		for range size / chunk {
			if _, err := io.ReadFull(src, buf); err != nil {
				b.Fatal(err)
			}
			s.XORKeyStream(buf, buf)
		}
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	ctx := context.Background()
	random := func() {
		for range size / chunk {
			off := rng.Int64N(size - chunk + 1)
			if n, err := l.ra.ReadAt(ctx, buf, off); n != chunk || err != nil {
				b.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
			}
		}
	}
	var streamT, randomT time.Duration
	iterations := 0
	for b.Loop() {
		iterations++
		start := time.Now()
		stream()
		streamT += time.Since(start)
		start = time.Now()
		random()
		randomT += time.Since(start)
	}
	mib := float64(size) / (1 << 20) * float64(iterations)
	b.ReportMetric(mib/randomT.Seconds(), "MiB/s")
	b.ReportMetric(mib/streamT.Seconds(), "stream-MiB/s")
	b.ReportMetric(streamT.Seconds()/randomT.Seconds(), "x-stream")
}
