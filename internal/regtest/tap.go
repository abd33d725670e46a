package regtest

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// Tap is go-containerregistry's registry on loopback behind a handler that
// counts blob GETs (range requests included) and the body bytes served,
// can flip one byte of every blob at a blob offset, and can hold blob
// responses until released: the registry lazy-pull tests attack.
type Tap struct {
	Host     string
	Requests atomic.Int64                  // blob GETs
	Served   atomic.Int64                  // blob body bytes
	TamperAt atomic.Int64                  // blob offset whose byte is flipped; -1: none
	Gate     atomic.Pointer[chan struct{}] // when set, blob GETs wait until it is closed

	mu     sync.Mutex
	ranges []string
}

// StartTap starts a Tap, stopped when the test ends.
func StartTap(t testing.TB) *Tap {
	t.Helper()
	r := &Tap{}
	r.TamperAt.Store(-1)
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/sha256:") {
			inner.ServeHTTP(w, req)
			return
		}
		r.serveBlob(inner, w, req)
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	r.Host = l.Addr().String()
	return r
}

func (r *Tap) serveBlob(inner http.Handler, w http.ResponseWriter, req *http.Request) {
	r.Requests.Add(1)
	r.mu.Lock()
	r.ranges = append(r.ranges, req.Header.Get("Range"))
	r.mu.Unlock()
	if g := r.Gate.Load(); g != nil {
		<-*g
	}
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, req)
	body := rec.Body.Bytes()
	if at := r.TamperAt.Load(); at >= 0 {
		start := int64(0)
		if cr := rec.Header().Get("Content-Range"); cr != "" {
			s, _, _ := strings.Cut(strings.TrimPrefix(cr, "bytes "), "-")
			start, _ = strconv.ParseInt(s, 10, 64)
		}
		if i := at - start; i >= 0 && i < int64(len(body)) {
			body[i] ^= 0x55
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	n, _ := w.Write(body)
	r.Served.Add(int64(n))
}

// Ranges returns the Range headers of the blob GETs so far ("" for a whole
// blob).
func (r *Tap) Ranges() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ranges...)
}

// Reset zeroes the counters and forgets the ranges.
func (r *Tap) Reset() {
	r.Requests.Store(0)
	r.Served.Store(0)
	r.mu.Lock()
	r.ranges = nil
	r.mu.Unlock()
}
