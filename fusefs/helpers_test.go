package fusefs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// testChunkSize keeps test blobs small while giving the big file many chunks.
const testChunkSize = 64 << 10

// entry is one member of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
	major, minor     int64
}

var testMtime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: e.uid, Gid: e.gid,
			ModTime: testMtime, Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// randomText is incompressible-ish content of n bytes.
func randomText(seed uint64, n int) string {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) //nolint:gosec // test data
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return string(b)
}

// testLayer is the standard test layer: small files, a big file of many
// chunks, a symlink, a hardlink, a whiteout, an opaque directory, xattrs
// and a device.
func testEntries(bigSize int) []entry {
	return []entry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/hostname", body: "cocoon\n", mode: 0o640, uid: 7, gid: 8},
		{name: "etc/motd", body: randomText(2, 3000), xattrs: map[string]string{"user.note": "hello"}},
		{name: "bin/", typ: tar.TypeDir, mode: 0o711},
		{name: "bin/big", body: randomText(1, bigSize), mode: 0o755},
		{name: "bin/link", typ: tar.TypeSymlink, link: "big"},
		{name: "bin/hard", typ: tar.TypeLink, link: "bin/big"},
		{name: "gone/", typ: tar.TypeDir},
		{name: "gone/.wh..wh..opq"},
		{name: "gone/kept", body: "still here"},
		{name: ".wh.removed"},
		{name: "dev/", typ: tar.TypeDir},
		{name: "dev/null", typ: tar.TypeChar, major: 1, minor: 3, mode: 0o666},
		{name: "medium", body: randomText(3, 200<<10)},
		{name: "empty"},
	}
}

// builtLayer is an eStargz blob with what a manifest and config say of it.
type builtLayer struct {
	blob                    []byte
	digest, tocDigest, diff digest.Digest
	files                   map[string]string
}

func buildLayer(t testing.TB, entries []entry, opts ...estargz.Option) *builtLayer {
	t.Helper()
	tb := makeTar(t, entries)
	opts = append([]estargz.Option{estargz.WithChunkSize(testChunkSize)}, opts...)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb), 0, int64(len(tb))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range entries {
		if e.typ == 0 || e.typ == tar.TypeReg {
			files[e.name] = e.body
		}
	}
	return &builtLayer{blob: blob, digest: digest.FromBytes(blob), tocDigest: b.TOCDigest(), diff: b.DiffID(), files: files}
}

func (bl *builtLayer) desc() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: bl.digest, Size: int64(len(bl.blob))}
}

// memBlob is a Blob in memory.
type memBlob []byte

func (m memBlob) Size() int64 { return int64(len(m)) }

func (m memBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// testRegistry is regtest's counting, tampering registry with a client
// that retries quickly.
type testRegistry struct {
	*regtest.Tap
	client *registry.Client
}

func startRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tap := regtest.StartTap(t)
	return &testRegistry{Tap: tap, client: registry.New(registry.Options{Insecure: []string{tap.Host}, RetryBackoff: time.Millisecond, Retries: 2})}
}

// push uploads the blob and returns a RegistryBlob for it.
func (r *testRegistry) push(t testing.TB, bl *builtLayer) *RegistryBlob {
	t.Helper()
	repo, err := name.NewRepository(r.Host+"/lazy/img", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(bl.blob, types.OCILayer)); err != nil {
		t.Fatal(err)
	}
	crepo, err := r.client.ParseRepository(r.Host + "/lazy/img")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRegistryBlob(r.client, []name.Repository{crepo}, bl.desc())
	if err != nil {
		t.Fatal(err)
	}
	r.Reset()
	return b
}

// requireFUSE skips tests that mount when they cannot.
func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// mounted reports whether dir is a mount point in this namespace.
func mounted(t testing.TB, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func mustOpen(t testing.TB, blob Blob, bl *builtLayer, opts Options) *Layer {
	t.Helper()
	opts.Digest, opts.TOCDigest = bl.digest, bl.tocDigest
	l, err := Open(context.Background(), blob, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func fmtRanges(rs []string) string { return fmt.Sprint(rs) }

func digestOf(b []byte) string             { return digest.FromBytes(b).String() }
func digestOfBytes(b []byte) digest.Digest { return digest.FromBytes(b) }
