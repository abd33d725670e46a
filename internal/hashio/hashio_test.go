package hashio

import (
	"crypto/sha256"
	"io"
	"strings"
	"testing"
)

func TestReader(t *testing.T) {
	r := &Reader{R: strings.NewReader("cocoon"), H: sha256.New()}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte("cocoon"))
	if r.N != 6 || string(r.H.Sum(nil)) != string(want[:]) {
		t.Errorf("n=%d sum=%x", r.N, r.H.Sum(nil))
	}
}
