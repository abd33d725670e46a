package registry

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// fakeRegistry serves a fixed set of manifests and blobs over plain HTTP on
// loopback. It can cut blob streams after a number of bytes, and counts
// Range requests.
type fakeRegistry struct {
	docs      map[digest.Digest][]byte // manifests and blobs by digest
	types     map[digest.Digest]string
	cutAfter  int64 // cut each blob response after this many bytes (0: never)
	cuts      atomic.Int64
	ranges    atomic.Int64
	maxCuts   int64
	noRange   bool
	host      string
	forbidden bool
	endless   bool // after a blob, send gzip members until the client goes away
}

func (f *fakeRegistry) add(mt string, b []byte) digest.Digest {
	d := digest.FromBytes(b)
	f.docs[d] = b
	f.types[d] = mt
	return d
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	if f.forbidden {
		http.Error(w, `{"errors":[{"code":"DENIED"}]}`, http.StatusForbidden)
		return
	}
	i := strings.LastIndex(r.URL.Path, "/")
	d := digest.Digest(r.URL.Path[i+1:])
	b, ok := f.docs[d]
	if !ok {
		http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", f.types[d])
	start := int64(0)
	if rg := r.Header.Get("Range"); rg != "" && !f.noRange {
		f.ranges.Add(1)
		start, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(b)-1, len(b)))
		w.Header().Set("Content-Length", strconv.Itoa(len(b)-int(start)))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	}
	body := b[start:]
	if strings.Contains(r.URL.Path, "/blobs/") && f.cutAfter > 0 && int64(len(body)) > f.cutAfter && f.cuts.Load() < f.maxCuts {
		f.cuts.Add(1)
		_, _ = w.Write(body[:f.cutAfter]) // the connection is aborted next anyway
		// Abort the connection mid-body: the client sees an unexpected EOF.
		panic(http.ErrAbortHandler)
	}
	if f.endless && strings.Contains(r.URL.Path, "/blobs/") {
		w.Header().Del("Content-Length")
		if _, err := w.Write(body); err != nil {
			return
		}
		member := gzipMember(1 << 16)
		for {
			if _, err := w.Write(member); err != nil {
				return
			}
		}
	}
	_, _ = w.Write(body) // the client sees a short body if this fails
}

// gzipMember is one gzip member of n zero bytes.
func gzipMember(n int) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(make([]byte, n)); err != nil {
		panic(err) // writing to memory cannot fail
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func startFake(t *testing.T, f *fakeRegistry) *Client {
	t.Helper()
	srv := httptest.NewUnstartedServer(f)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(srv.Close)
	f.host = l.Addr().String()
	return New(Options{Insecure: []string{f.host}, RetryBackoff: time.Millisecond,
		Platform: platforms.Only(ocispec.Platform{OS: "linux", Architecture: "amd64"})})
}

func newFake() *fakeRegistry {
	return &fakeRegistry{docs: map[digest.Digest][]byte{}, types: map[digest.Digest]string{}}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// image adds a one-layer image and returns the manifest digest and layer.
func (f *fakeRegistry) image(t *testing.T, layer []byte) (digest.Digest, ocispec.Descriptor) {
	t.Helper()
	ld := f.add(ocispec.MediaTypeImageLayerGzip, layer)
	cfg, _ := json.Marshal(ocispec.Image{RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("diff")}}})
	cd := f.add(ocispec.MediaTypeImageConfig, cfg)
	ldesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: ld, Size: int64(len(layer))}
	m, _ := json.Marshal(ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(cfg))},
		Layers:    []ocispec.Descriptor{ldesc},
	})
	return f.add(ocispec.MediaTypeImageManifest, m), ldesc
}

func TestImageAndIndex(t *testing.T) {
	f := newFake()
	c := startFake(t, f)
	md, ldesc := f.image(t, randomBytes(t, 100))
	arm, _ := f.image(t, randomBytes(t, 100))
	idx, _ := json.Marshal(ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageManifest, Digest: arm, Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
	}})
	idxd := f.add(ocispec.MediaTypeImageIndex, idx)
	repo, err := c.ParseRepository(f.host + "/a/b:tag")
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]digest.Digest{"manifest": md, "index": idxd} {
		t.Run(name, func(t *testing.T) {
			im, err := c.Image(context.Background(), repo, d)
			if err != nil {
				t.Fatal(err)
			}
			if im.ManifestDigest != md {
				t.Errorf("picked %s, want the amd64 manifest %s", im.ManifestDigest, md)
			}
			if i, ok := im.LayerIndex(ldesc.Digest); !ok || i != 0 {
				t.Errorf("LayerIndex = %d, %v", i, ok)
			}
		})
	}
}

func TestManifestDigestMismatch(t *testing.T) {
	f := newFake()
	c := startFake(t, f)
	md, _ := f.image(t, []byte("layer"))
	f.docs[md] = append([]byte(nil), f.docs[md]...)
	f.docs[md][5] ^= 1 // the registry now serves other bytes under that digest
	repo, _ := c.ParseRepository(f.host + "/a/b")
	_, err := c.Image(context.Background(), repo, md)
	var dm *DigestMismatchError
	if !errors.As(err, &dm) || dm.Expected != md || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("error = %v, want a digest mismatch for %s", err, md)
	}
}

func TestBlobResumesAfterCut(t *testing.T) {
	for _, tc := range []struct {
		name       string
		noRange    bool
		wantRanges bool
	}{
		{"range", false, true},
		{"server ignores range", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.cutAfter, f.maxCuts, f.noRange = 64<<10, 3, tc.noRange
			c := startFake(t, f)
			blob := randomBytes(t, 1<<20)
			_, ldesc := f.image(t, blob)
			repo, _ := c.ParseRepository(f.host + "/a/b")
			rc, err := c.OpenBlob(context.Background(), repo, ldesc)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob) {
				t.Fatalf("resumed blob differs (%d bytes, want %d)", len(got), len(blob))
			}
			if f.cuts.Load() != 3 {
				t.Errorf("cuts = %d, want 3", f.cuts.Load())
			}
			if (f.ranges.Load() > 0) != tc.wantRanges {
				t.Errorf("range requests = %d", f.ranges.Load())
			}
		})
	}
}

func TestBlobGivesUpAfterRetries(t *testing.T) {
	f := newFake()
	f.cutAfter, f.maxCuts = 32<<10, 1000
	c := startFake(t, f)
	c.opts.Retries = 2
	_, ldesc := f.image(t, randomBytes(t, 1<<20))
	repo, _ := c.ParseRepository(f.host + "/a/b")
	rc, err := c.OpenBlob(context.Background(), repo, ldesc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	if err == nil || !strings.Contains(err.Error(), "stream cut 3 times") {
		t.Fatalf("error = %v", err)
	}
}

func TestErrorsCarryErrdefs(t *testing.T) {
	f := newFake()
	c := startFake(t, f)
	repo, _ := c.ParseRepository(f.host + "/a/b")
	_, err := c.Image(context.Background(), repo, digest.FromString("absent"))
	if !errdefs.IsNotFound(err) {
		t.Errorf("missing manifest: %v, want NotFound", err)
	}
	f.forbidden = true
	_, err = c.Image(context.Background(), repo, digest.FromString("absent"))
	if !errdefs.IsPermissionDenied(err) {
		t.Errorf("denied manifest: %v, want PermissionDenied", err)
	}
}

func TestPlainHTTPOnlyForInsecureRegistries(t *testing.T) {
	f := newFake()
	startFake(t, f)
	md, _ := f.image(t, []byte("x"))
	c := New(Options{RetryBackoff: time.Millisecond, Retries: 1}) // f.host not listed as insecure
	repo, err := c.ParseRepository(f.host + "/a/b")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Image(context.Background(), repo, md)
	if err == nil || !strings.Contains(err.Error(), "not configured as insecure") {
		t.Fatalf("error = %v, want a refusal of plain HTTP", err)
	}
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// A registry that sends more than a blob's descriptor size (here: endless
// gzip members after the real blob) is cut at the size: the read fails with
// a size error and what was read from the socket stays within the size plus
// one HTTP response's headers and buffer.
func TestBlobCutAtDescriptorSize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		endless bool
		size    func(n int) int64
	}{
		{"endless gzip members after the blob", true, func(n int) int64 { return int64(n) }},
		{"descriptor smaller than the blob", false, func(n int) int64 { return int64(n) / 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.endless = tc.endless
			startFake(t, f)
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			if _, err := zw.Write(randomBytes(t, 1<<20)); err != nil {
				t.Fatal(err)
			}
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			layer := buf.Bytes()
			ld := f.add(ocispec.MediaTypeImageLayerGzip, layer)
			var read atomic.Int64
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return countingConn{Conn: c, n: &read}, nil
			}
			c := New(Options{Insecure: []string{f.host}, Transport: tr, Retries: 1, RetryBackoff: time.Millisecond})
			repo, err := c.ParseRepository(f.host + "/coco/img")
			if err != nil {
				t.Fatal(err)
			}
			size := tc.size(len(layer))
			const slack = 16 << 10 // response headers and the transport's read buffer
			rc, err := c.OpenBlob(context.Background(), repo, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: ld, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			// Read no more than the size plus the slack: on a client without
			// the cut, the endless case ends here with no error.
			got, err := io.Copy(io.Discard, io.LimitReader(rc, size+slack))
			rc.Close()
			var se *BlobSizeError
			if !errors.As(err, &se) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("read = %d bytes, %v; want a BlobSizeError", got, err)
			}
			if got != size {
				t.Errorf("returned %d bytes, want the descriptor's %d", got, size)
			}

			t.Logf("descriptor size %d, bytes read from the registry %d", size, read.Load())
			if n := read.Load(); n > size+slack {
				t.Fatalf("read %d bytes from the registry for a %d-byte blob", n, size)
			}
		})
	}
}

func TestResolveTag(t *testing.T) {
	reg := regtest.Start(t)
	ref, img := reg.Push(t, "a/b", compression.GZip, true, regtest.Tar(t, regtest.Entry{Name: "f", Body: "x"}))
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	c := New(Options{Insecure: []string{reg.Host}, Retries: 1, RetryBackoff: time.Millisecond})
	orig, err := c.ParseRepository(ref)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := c.ParseRepository(reg.Host + "/mirror/b")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A location without the tag is passed over, as ImageFrom does.
	got, err := c.ResolveTag(ctx, []name.Repository{empty, orig}, "v1")
	if err != nil || got.String() != want.String() {
		t.Fatalf("ResolveTag = %s, %v; want %s", got, err, want)
	}
	if _, err := c.ResolveTag(ctx, []name.Repository{orig}, "missing"); !errdefs.IsNotFound(err) {
		t.Errorf("unknown tag: error = %v, want NotFound", err)
	}
	if _, err := c.ResolveTag(ctx, []name.Repository{empty, orig}, "missing"); !errdefs.IsNotFound(err) ||
		!strings.Contains(err.Error(), "all mirror/mapping locations") {
		t.Errorf("unknown tag everywhere: error = %v", err)
	}
	for _, bad := range []string{"", "../blobs/x", "a/b", strings.Repeat("a", 129), "-x"} {
		if _, err := c.ResolveTag(ctx, []name.Repository{orig}, bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("tag %q: error = %v, want InvalidArgument", bad, err)
		}
	}
}
