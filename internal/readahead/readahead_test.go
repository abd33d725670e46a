package readahead

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// choppyReader returns data in reads of random sizes (zero included), then
// err.
type choppyReader struct {
	data []byte
	err  error
	rng  *rand.Rand
}

func (c *choppyReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, c.err
	}
	n := min(len(p), len(c.data), c.rng.IntN(5000))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestTransparent(t *testing.T) {
	data := make([]byte, 3<<20+17)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		err  error
		o    Options
	}{
		{"eof", io.EOF, Options{}},
		{"error after data", boom, Options{}},
		{"small buffers", boom, Options{Size: 1000, Count: 2}},
		{"one buffer", io.EOF, Options{Size: 1 << 16, Count: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ar := New(&choppyReader{data: data, err: tc.err, rng: rand.New(rand.NewPCG(2, 2))}, tc.o)
			defer ar.Stop()
			// Consume with odd read sizes too.
			got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(ar, 1000)))
			if err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(ar)
			got = append(got, rest...)
			if tc.err == io.EOF {
				if err != nil {
					t.Fatalf("err = %v, want nil from ReadAll", err)
				}
			} else if err != tc.err {
				t.Fatalf("err = %v, want the wrapped reader's own error", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("got %d bytes, want the %d bytes of the wrapped reader", len(got), len(data))
			}
			// The error is sticky.
			if _, err := ar.Read(make([]byte, 1)); err != tc.err {
				t.Fatalf("read after the end: %v", err)
			}
		})
	}
}

// boundedReader counts what it hands out and reports when the bound is
// reached; any read after that is a read-ahead beyond the bound.
type boundedReader struct {
	n       atomic.Int64
	bound   int64
	reached chan struct{}
	t       *testing.T
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n.Load() >= b.bound {
		b.t.Errorf("read beyond %d bytes of read-ahead", b.bound)
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.bound-b.n.Load()))
	if b.n.Add(int64(n)) == b.bound {
		close(b.reached)
	}
	return n, nil
}

func TestBounded(t *testing.T) {
	o := Options{Size: 4096, Count: 3}
	br := &boundedReader{bound: int64(o.Size * o.Count), reached: make(chan struct{}), t: t}
	ar := New(br, o)
	<-br.reached // every buffer is full and nobody consumed: the producer waits
	ar.Stop()
	if _, err := ar.Read(make([]byte, 1)); err != ErrStopped {
		t.Fatalf("read after Stop: %v", err)
	}
}

// gateReader blocks each Read until released, and fails the test if it is
// read after the test said it must no longer be.
type gateReader struct {
	entered chan struct{}
	release chan struct{}
	closed  atomic.Bool
	t       *testing.T
}

func (g *gateReader) Read(p []byte) (int, error) {
	if g.closed.Load() {
		g.t.Error("wrapped reader used after Stop returned")
	}
	select {
	case g.entered <- struct{}{}:
	default: // only the first Read is waited for
	}
	<-g.release
	return len(p), nil
}

// TestStopWaitsForRead: Stop returns only once the goroutine is out of the
// wrapped reader, and the reader is not used afterwards.
func TestStopWaitsForRead(t *testing.T) {
	g := &gateReader{entered: make(chan struct{}, 1), release: make(chan struct{}), t: t}
	ar := New(g, Options{Size: 10, Count: 2})
	<-g.entered // the producer is inside Read
	stopped := make(chan struct{})
	go func() {
		ar.Stop()
		g.closed.Store(true)
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("Stop returned while the wrapped Read was in progress")
	case <-ar.Done():
		t.Fatal("goroutine ended while the wrapped Read was in progress")
	default:
	}
	close(g.release) // every Read returns at once from now on
	<-stopped
	// Later reads of the wrapped reader would fail the test via g.closed.
	if _, err := ar.Read(make([]byte, 1)); err != ErrStopped {
		t.Fatalf("read after Stop: %v", err)
	}
}

// TestConsumerSeesDataBeforeStopAfterEnd: after the producer ended by itself
// the consumer still gets everything it read.
func TestConsumerSeesDataBeforeStopAfterEnd(t *testing.T) {
	ar := New(bytes.NewReader([]byte("cocoon")), Options{Size: 2, Count: 8})
	<-ar.Done()
	got, err := io.ReadAll(ar)
	if err != nil || string(got) != "cocoon" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestNoProgress(t *testing.T) {
	ar := New(iotest.ErrReader(nil), Options{})
	defer ar.Stop()
	if _, err := io.ReadAll(ar); err != io.ErrNoProgress {
		t.Fatalf("err = %v, want io.ErrNoProgress", err)
	}
}

func BenchmarkReadahead(b *testing.B) {
	src := make([]byte, 64<<20)
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		ar := New(bytes.NewReader(src), Options{})
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{ar}, buf); err != nil {
			b.Fatal(err)
		}
		ar.Stop()
	}
}
