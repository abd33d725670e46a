package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// rangeServer serves one blob with http.ServeContent (real Range support)
// and misbehaves on demand.
type rangeServer struct {
	blob      []byte
	mode      atomic.Value // "", "ignore-range", "wrong-range", "cut-once", "500-once"
	requests  atomic.Int64
	misbehave atomic.Int64
}

func (s *rangeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		return
	}
	s.requests.Add(1)
	switch s.mode.Load().(string) {
	case "ignore-range":
		r.Header.Del("Range")
	case "wrong-range":
		w.Header().Set("Content-Range", "bytes 0-3/4")
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(s.blob[:4])
		return
	case "cut-once":
		if s.misbehave.Add(1) == 1 {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write([]byte("x"))
			panic(http.ErrAbortHandler)
		}
	case "500-once":
		if s.misbehave.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(s.blob))
}

func TestReadBlobAt(t *testing.T) {
	s := &rangeServer{blob: randomBytes(t, 100000)}
	s.mode.Store("")
	srv := httptest.NewUnstartedServer(s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(srv.Close)
	host := l.Addr().String()
	c := New(Options{Insecure: []string{host}, RetryBackoff: time.Millisecond, Retries: 3})
	repo, _ := c.ParseRepository(host + "/a/b")
	desc := ocispec.Descriptor{Digest: digest.FromBytes(s.blob), Size: int64(len(s.blob))}
	ctx := context.Background()

	for _, tc := range []struct {
		name     string
		mode     string
		off      int64
		n        int
		wantN    int
		wantErr  error
		requests int64
	}{
		{"middle", "", 5000, 3000, 3000, nil, 1},
		{"tail", "", 99990, 100, 10, io.EOF, 1},
		{"past the end", "", 100000, 10, 0, io.EOF, 0},
		{"cut body is retried", "cut-once", 10, 5000, 5000, nil, 2},
		{"5xx is retried", "500-once", 10, 5000, 5000, nil, 2},
		{"ignored range refused", "ignore-range", 10, 50, 0, errdefs.ErrFailedPrecondition, 1},
		{"whole blob may come as 200", "ignore-range", 0, 100000, 100000, nil, 1},
		{"wrong Content-Range refused", "wrong-range", 10, 50, 0, errdefs.ErrFailedPrecondition, 1},
		{"too long", "", 0, MaxBlobRange + 1, 0, errdefs.ErrInvalidArgument, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.mode.Store(tc.mode)
			s.requests.Store(0)
			s.misbehave.Store(0)
			p := make([]byte, tc.n)
			n, err := c.ReadBlobAt(ctx, repo, desc, p, tc.off)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if n != tc.wantN {
				t.Fatalf("n = %d, want %d", n, tc.wantN)
			}
			if n > 0 && !bytes.Equal(p[:n], s.blob[tc.off:tc.off+int64(n)]) {
				t.Fatal("bytes differ")
			}
			if got := s.requests.Load(); got != tc.requests {
				t.Errorf("requests = %d, want %d", got, tc.requests)
			}
		})
	}
}
