// Package regtest serves a real OCI registry (go-containerregistry's) on
// loopback for tests, builds layer tars and pushes images to it. Test code
// only.
package regtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one member of a test layer tar.
type Entry struct {
	Name, Body, Link string
	Type             byte
	Mode             int64
}

// Tar builds an uncompressed layer tar.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Link, Size: int64(len(e.Body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Registry is go-containerregistry's registry served on loopback, with a
// hook to tamper with blob responses.
type Registry struct {
	Host   string
	Tamper atomic.Value // hex digest string: corrupt that blob's bytes
	Gets   atomic.Int64 // blob GETs served
	// Endless is a hex digest string: that blob is followed by gzip
	// members until the client goes away. Sent counts the bytes of such
	// responses the server managed to write.
	Endless atomic.Value
	Sent    atomic.Int64
	// Hook, when set, sees blob GETs first; it returns true when it
	// answered the request itself.
	Hook    atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
	handler http.Handler
}

// Start serves a registry on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{handler: ggcrregistry.New(ggcrregistry.Logger(discardLogger()))}
	r.Tamper.Store("")
	r.Endless.Store("")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet {
			r.Gets.Add(1)
			if h := r.Hook.Load(); h != nil && (*h)(w, req) {
				return
			}
			if d := r.Endless.Load().(string); d != "" && strings.HasSuffix(req.URL.Path, d) {
				r.serveEndless(w, req)
				return
			}
			if d := r.Tamper.Load().(string); d != "" && strings.HasSuffix(req.URL.Path, d) {
				rec := httptest.NewRecorder()
				r.handler.ServeHTTP(rec, req)
				b := rec.Body.Bytes()
				if len(b) > 0 {
					b[len(b)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				_, _ = w.Write(b) // the client sees a short body if this fails
				return
			}
		}
		r.handler.ServeHTTP(w, req)
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

func (r *Registry) serveEndless(w http.ResponseWriter, req *http.Request) {
	rec := httptest.NewRecorder()
	r.handler.ServeHTTP(rec, req)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.Code)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil {
		panic(err) // writing to memory cannot fail
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	member := buf.Bytes()
	for chunk := rec.Body.Bytes(); ; chunk = member {
		n, err := w.Write(chunk)
		r.Sent.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// Push builds an image from layer tars (Image) and pushes it as
// host/repo:v1; it returns the reference and the image.
func (r *Registry) Push(t testing.TB, repo string, comp compression.Compression, oci bool, layers ...[]byte) (string, v1.Image) {
	t.Helper()
	img := Image(t, comp, oci, layers...)
	return r.Write(t, repo, img), img
}

// Image builds an image from layer tars, compressed with comp, with OCI
// media types when oci is set (else Docker's). Its config names no OS.
func Image(t testing.TB, comp compression.Compression, oci bool, layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	if oci {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	for _, l := range layers {
		l := l
		opts := []tarball.LayerOption{tarball.WithCompression(comp)}
		if oci {
			mt := types.OCILayer
			if comp == compression.ZStd {
				mt = types.OCILayerZStd
			}
			opts = append(opts, tarball.WithMediaType(mt))
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil }, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// Write pushes img as host/repo:v1 and returns that reference.
func (r *Registry) Write(t testing.TB, repo string, img v1.Image) string {
	t.Helper()
	ref := fmt.Sprintf("%s/%s:v1", r.Host, repo)
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
