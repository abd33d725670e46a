package lazysource

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/regtest"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

const kid = "kbs:///default/key/lazy"

type resources map[string][]byte

func (r resources) GetResource(_ context.Context, uri string) ([]byte, error) {
	if b, ok := r[uri]; ok {
		return bytes.Clone(b), nil
	}
	return nil, fmt.Errorf("resource %s: not found", uri)
}

// testRegistry serves blobs, counts body bytes and flips the byte at
// tamperAt of every blob response covering it.
type testRegistry struct {
	*regtest.Tap
	client *registry.Client
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tap := regtest.StartTap(t)
	return &testRegistry{Tap: tap, client: registry.New(registry.Options{Insecure: []string{tap.Host}, RetryBackoff: time.Millisecond, Retries: 1})}
}

func (r *testRegistry) push(t *testing.T, blob []byte) {
	t.Helper()
	repo, err := name.NewRepository(r.Host+"/lazy/img", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(blob, types.OCILayer)); err != nil {
		t.Fatal(err)
	}
}

type testLayer struct {
	layer snapshotter.LazyLayer
	files map[string][]byte
	big   string
	// bigOff is an offset in the (stored) blob inside the big file's data.
	bigOff int64
}

// buildLayer makes an eStargz layer with a prioritized small file and a
// big random one, pushes it (encrypted if asked) and returns its LazyLayer.
func buildLayer(t *testing.T, r *testRegistry, encrypted bool) *testLayer {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	files := map[string][]byte{"small.txt": []byte("hello lazy\n"), "big.bin": big, "other.txt": []byte("other file\n")}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, n := range []string{"small.txt", "big.bin", "other.txt"} {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb.Bytes()), 0, int64(tb.Len())),
		estargz.WithChunkSize(64<<10), estargz.WithPrioritizedFiles([]string{"small.txt"}))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	tl := &testLayer{files: files, big: "big.bin"}
	// An offset well inside the big file's compressed data.
	er, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	ce, ok := er.ChunkEntryForOffset("big.bin", 1<<20)
	if !ok {
		t.Fatal("no chunk at 1 MiB of big.bin")
	}
	tl.bigOff = ce.Offset + 100
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob)),
		Annotations: map[string]string{label.TOCDigest: b.TOCDigest().String()}}
	if encrypted {
		enc, err := decrypt.NewEncrypter(bytes.NewReader(blob), desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if blob, err = io.ReadAll(enc); err != nil {
			t.Fatal(err)
		}
		ann, err := enc.Annotations(testKEK, kid)
		if err != nil {
			t.Fatal(err)
		}
		ann[label.TOCDigest] = desc.Annotations[label.TOCDigest]
		desc = ocispec.Descriptor{MediaType: desc.MediaType + "+encrypted", Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: ann}
	}
	r.push(t, blob)
	tl.layer = snapshotter.LazyLayer{ImageRef: r.Host + "/lazy/img:v1", Manifest: digest.FromString("m"), Blob: desc,
		DiffID: b.DiffID(), TOCDigest: b.TOCDigest(), Encrypted: encrypted}
	return tl
}

var testKEK = bytes.Repeat([]byte{7}, 32)

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

func newMounter(t *testing.T, r *testRegistry, cacheDir string, background bool) *Mounter {
	t.Helper()
	m, err := New(Options{Registry: r.client, Decrypt: decrypt.Options{Resources: resources{kid: testKEK}},
		CacheDir: cacheDir, CacheBytes: 8 << 20, Prefetch: true, Background: background})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitFor polls cond until it holds (it is not a timing assertion: the
// deadline only stops a hung test).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// TestMountPlainAndEncrypted: the layer is served lazily (a small read
// fetches a small part of the blob), completes in the background into a
// local copy checked against the blob digest (encrypted: ciphertext digest
// and HMAC) and diff ID, is served from that copy after a restart without
// the registry, and Unmount drops the copy.
func TestMountPlainAndEncrypted(t *testing.T) {
	requireFUSE(t)
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			ctx := context.Background()
			r := startRegistry(t)
			tl := buildLayer(t, r, encrypted)
			cacheDir := t.TempDir()
			dir := t.TempDir()

			m := newMounter(t, r, cacheDir, false)
			r.Served.Store(0)
			if err := m.Mount(ctx, dir, tl.layer); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "small.txt"))
			if err != nil || !bytes.Equal(got, tl.files["small.txt"]) {
				t.Fatalf("small.txt = %q, %v", got, err)
			}
			if served := r.Served.Load(); served*4 > tl.layer.Blob.Size {
				t.Fatalf("reading small.txt fetched %d of %d blob bytes", served, tl.layer.Blob.Size)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}

			m = newMounter(t, r, cacheDir, true)
			if err := m.Mount(ctx, dir, tl.layer); err != nil {
				t.Fatal(err)
			}
			local := filepath.Join(m.localDir(dir), tl.layer.Blob.Digest.Encoded())
			waitFor(t, "the background completion", func() bool { _, err := os.Stat(local); return err == nil })
			got, err = os.ReadFile(filepath.Join(dir, tl.big))
			if err != nil || !bytes.Equal(got, tl.files[tl.big]) {
				t.Fatalf("%s: %d bytes, %v", tl.big, len(got), err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}

			// A restart serves the verified local copy: no registry bytes.
			r.Served.Store(0)
			m = newMounter(t, r, cacheDir, true)
			if err := m.Mount(ctx, dir, tl.layer); err != nil {
				t.Fatal(err)
			}
			got, err = os.ReadFile(filepath.Join(dir, "other.txt"))
			if err != nil || !bytes.Equal(got, tl.files["other.txt"]) || r.Served.Load() != 0 {
				t.Fatalf("other.txt after restart = %q, %v (%d registry bytes)", got, err, r.Served.Load())
			}
			if err := m.Unmount(ctx, dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(m.localDir(dir)); !os.IsNotExist(err) {
				t.Fatalf("Unmount kept the local copy: %v", err)
			}
		})
	}
}

// TestTamperedBlob: a flipped byte in the big file's data gives EIO for
// that file only; the background completion then finds the blob bad (for
// an encrypted layer: the HMAC/ciphertext digest) and every read fails; no
// local copy is kept.
func TestTamperedBlob(t *testing.T) {
	requireFUSE(t)
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			ctx := context.Background()
			r := startRegistry(t)
			tl := buildLayer(t, r, encrypted)
			r.TamperAt.Store(tl.bigOff)
			dir := t.TempDir()
			m := newMounter(t, r, t.TempDir(), false)
			if err := m.Mount(ctx, dir, tl.layer); err != nil {
				t.Fatal(err)
			}
			if _, err := os.ReadFile(filepath.Join(dir, tl.big)); !errors.Is(err, syscall.EIO) {
				t.Fatalf("reading the tampered file: %v, want EIO", err)
			}
			if got, err := os.ReadFile(filepath.Join(dir, "small.txt")); err != nil || !bytes.Equal(got, tl.files["small.txt"]) {
				t.Fatalf("small.txt = %q, %v", got, err)
			}
			if err := m.Unmount(ctx, dir); err != nil {
				t.Fatal(err)
			}

			cacheDir := t.TempDir()
			m = newMounter(t, r, cacheDir, true)
			if err := m.Mount(ctx, dir, tl.layer); err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			s := m.mounts[dir]
			m.mu.Unlock()
			<-s.done
			if err := s.layer.Bad(); err == nil {
				t.Fatal("a tampered blob completed without marking the layer bad")
			}
			if _, err := os.ReadFile(filepath.Join(dir, "other.txt")); !errors.Is(err, syscall.EIO) {
				t.Fatalf("reading a bad layer: %v, want EIO", err)
			}
			if _, err := os.Stat(filepath.Join(m.localDir(dir), tl.layer.Blob.Digest.Encoded())); !os.IsNotExist(err) {
				t.Fatalf("a bad blob was kept as the local copy: %v", err)
			}
		})
	}
}

// TestWrongTOCDigest: a TOC digest that is not the blob's refuses the
// mount, naming the digest.
func TestWrongTOCDigest(t *testing.T) {
	requireFUSE(t)
	r := startRegistry(t)
	tl := buildLayer(t, r, false)
	tl.layer.TOCDigest = digest.FromString("not the TOC")
	m := newMounter(t, r, t.TempDir(), false)
	err := m.Mount(context.Background(), t.TempDir(), tl.layer)
	if err == nil || !strings.Contains(err.Error(), tl.layer.TOCDigest.String()) {
		t.Fatalf("Mount = %v, want a TOC digest error naming %s", err, tl.layer.TOCDigest)
	}
}
