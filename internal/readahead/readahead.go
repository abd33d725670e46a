// Package readahead runs the Read calls of a reader in a goroutine of its
// own, a bounded number of buffers ahead of the consumer, so that the work
// hidden in a chain of readers (hashing, decryption, decompression) runs on
// another core than the code consuming the stream.
//
// A Reader is transparent: the consumer sees exactly the bytes and the error
// the wrapped reader returned, in the same order; an error is handed over
// only after every byte read before it. Bytes are handed over a full buffer
// at a time (or with the wrapped reader's error). It never holds more than Count
// buffers of Size bytes. It must never touch the wrapped reader after Stop
// returned, so that the caller can use the wrapped reader directly from
// then on (to drain or verify it).
package readahead

import (
	"errors"
	"io"
	"sync"
)

// ErrStopped is returned by Read after Stop.
var ErrStopped = errors.New("readahead: stopped")

// Defaults for a zero Options field.
const (
	DefaultSize  = 256 << 10
	DefaultCount = 4
)

// maxEmptyReads bounds the (0, nil) results tolerated in a row from the
// wrapped reader, as bufio does.
const maxEmptyReads = 100

// Options size the buffers.
type Options struct {
	Size  int // bytes per buffer (DefaultSize)
	Count int // buffers (DefaultCount): the consumer is at most this many buffers behind
}

type chunk struct {
	b   []byte // a buffer from free, resliced to the bytes read
	err error  // what the wrapped reader returned after those bytes
}

// Reader reads ahead of its consumer. Read must be called from one goroutine
// at a time; Stop may be called from any goroutine, also while a Read is
// blocked (which then returns ErrStopped).
type Reader struct {
	full chan chunk
	free chan []byte
	stop chan struct{}
	done chan struct{}
	once sync.Once

	cur []byte // unread part of the chunk being consumed
	buf []byte // that chunk's whole buffer, given back once cur is read
	err error  // sticky: returned once cur is empty
}

// New starts reading r in a new goroutine. The goroutine ends when r
// returns an error (io.EOF included) or at Stop.
func New(r io.Reader, o Options) *Reader {
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.Count <= 0 {
		o.Count = DefaultCount
	}
	ar := &Reader{
		full: make(chan chunk, o.Count),
		free: make(chan []byte, o.Count),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range o.Count {
		ar.free <- make([]byte, o.Size)
	}
	go ar.run(r)
	return ar
}

func (ar *Reader) run(r io.Reader) {
	defer close(ar.done)
	for {
		var b []byte
		select {
		case b = <-ar.free:
		case <-ar.stop:
			return
		}
		n, err := ar.fill(r, b)
		if err == ErrStopped {
			return
		}
		select {
		case ar.full <- chunk{b: b[:n], err: err}:
		case <-ar.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// fill reads into b until it is full or r fails; it returns ErrStopped
// when Stop came meanwhile. Handing over full buffers only keeps the
// hand-overs (and the consumer's wake-ups) few; the price is that bytes
// read from a reader that then blocks wait with it: a consumer waiting
// for them waits until the wrapped reader returns (a pull cancels its
// request for that).
func (ar *Reader) fill(r io.Reader, b []byte) (int, error) {
	n, empty := 0, 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
		if m == 0 {
			if empty++; empty >= maxEmptyReads {
				return n, io.ErrNoProgress
			}
		} else {
			empty = 0
		}
		select {
		case <-ar.stop:
			return n, ErrStopped
		default:
		}
	}
	return n, nil
}

// Read returns the next bytes the wrapped reader produced, or, once they are
// consumed, the error it returned after them.
func (ar *Reader) Read(p []byte) (int, error) {
	for len(ar.cur) == 0 {
		if ar.err != nil {
			return 0, ar.err
		}
		if ar.buf != nil {
			ar.free <- ar.buf // never blocks: free has room for every buffer
			ar.buf = nil
		}
		select {
		case <-ar.stop:
			ar.err = ErrStopped
			continue
		default:
		}
		var c chunk
		select {
		case c = <-ar.full:
		case <-ar.done:
			// The producer ended, by Stop or after handing over its
			// last chunk.
			select {
			case c = <-ar.full:
			default:
				ar.err = ErrStopped
				continue
			}
		}
		ar.cur, ar.buf, ar.err = c.b, c.b, c.err
	}
	n := copy(p, ar.cur)
	ar.cur = ar.cur[n:]
	return n, nil
}

// Stop ends the read-ahead and waits until the goroutine no longer uses the
// wrapped reader. A Read of the wrapped reader in progress is waited for:
// the caller must make it return (cancel the request it reads from) if it
// may block indefinitely. What was read ahead and not handed to the
// consumer is dropped; Read returns ErrStopped once the bytes it already
// holds are consumed. Stop may be called more than once.
func (ar *Reader) Stop() {
	ar.once.Do(func() { close(ar.stop) })
	<-ar.done
}

// Done is closed once the goroutine has ended (at the wrapped reader's
// error or at Stop).
func (ar *Reader) Done() <-chan struct{} { return ar.done }
