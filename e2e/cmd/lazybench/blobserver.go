package main

import (
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// blobServer is the registry as the bench's clients see it: blob GETs and
// HEADs (ranges included) are served straight from the crane registry's
// disk store and counted; everything else (manifests, /v2/) is passed to
// the registry. crane's registry hashes the whole blob on every blob GET,
// range or not (its disk store's Stat verifies the digest): that would add
// a full pass over the blob to every lazy range read, which a production
// registry does not do, so it would bias the benchmark.
type blobServer struct {
	// Host is "127.0.0.1:PORT": pull through this instead of the registry.
	Host string

	reg    *harness.Registry
	mu     sync.Mutex
	served map[string]int64 // body bytes of blob GETs, by digest
}

// startBlobServer starts a blobServer for reg, stopped at s's cleanup.
func startBlobServer(s *harness.Script, reg *harness.Registry) (*blobServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &blobServer{Host: l.Addr().String(), reg: reg, served: map[string]int64{}}
	fwd := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg.Host})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if d, ok := blobDigest(req.URL.Path); ok && (req.Method == http.MethodGet || req.Method == http.MethodHead) {
			if f, err := os.Open(reg.BlobPath(d)); err == nil {
				defer f.Close()
				cw := &countingResponse{ResponseWriter: w}
				w.Header().Set("Docker-Content-Digest", d)
				w.Header().Set("Content-Type", "application/octet-stream")
				http.ServeContent(cw, req, "", time.Time{}, f)
				if req.Method == http.MethodGet {
					b.mu.Lock()
					b.served[d] += cw.n
					b.mu.Unlock()
				}
				return
			}
		}
		fwd.ServeHTTP(w, req)
	}), ReadHeaderTimeout: time.Minute}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			s.Logf("blob server stopped: %v", err)
		}
	}()
	s.Cleanup(func() { srv.Close() })
	return b, nil
}

// Served is how many body bytes of blob d were served so far.
func (b *blobServer) Served(d string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served[d]
}

// blobDigest extracts the digest of /v2/<name>/blobs/sha256:<hex>, which
// names a file of the disk store: 64 lowercase hex digits, nothing else.
func blobDigest(p string) (string, bool) {
	d, ok := harness.BlobDigestFromPath(p)
	hexPart, _ := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return "", false
	}
	return d, true
}

// countingResponse counts the body bytes written.
type countingResponse struct {
	http.ResponseWriter
	n int64
}

func (c *countingResponse) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}
