// Package hashio has the small I/O helper the verifying readers share: a
// reader that hashes and counts what passes through it.
package hashio

import (
	"hash"
	"io"
)

// Reader hashes and counts the bytes read from R.
type Reader struct {
	R io.Reader
	H hash.Hash
	N int64
}

func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	if n > 0 {
		c.H.Write(p[:n])
		c.N += int64(n)
	}
	return n, err
}
