package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/encrypt"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// testChunk is the eStargz chunk size the tests convert with, small enough
// that the big files span several chunks; defaultChunk is estargz's.
const (
	testChunk    = 4096
	defaultChunk = 4 << 20
)

func randomBody(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return string(b)
}

// testTars are the source layers: several files per layer, one spanning
// many chunks, a symlink and a hard link.
func testTars(t *testing.T) [][]byte {
	t.Helper()
	return [][]byte{
		regtest.Tar(t,
			regtest.Entry{Name: "bin/", Type: tar.TypeDir},
			regtest.Entry{Name: "bin/app", Body: randomBody(t, 5*testChunk+17), Mode: 0o755},
			regtest.Entry{Name: "etc/", Type: tar.TypeDir},
			regtest.Entry{Name: "etc/app.conf", Body: "answer=42\n"},
			regtest.Entry{Name: "etc/link", Type: tar.TypeSymlink, Link: "app.conf"}),
		regtest.Tar(t,
			regtest.Entry{Name: "data/", Type: tar.TypeDir},
			regtest.Entry{Name: "data/big", Body: randomBody(t, 3*testChunk)},
			regtest.Entry{Name: "data/small", Body: "small"},
			regtest.Entry{Name: "data/hard", Type: tar.TypeLink, Link: "data/small"}),
		regtest.Tar(t,
			regtest.Entry{Name: "etc/", Type: tar.TypeDir},
			regtest.Entry{Name: "etc/app.conf", Body: "answer=43\n"},
			regtest.Entry{Name: "etc/other", Body: randomBody(t, 100)}),
	}
}

// ociSource is an OCI image with a gzip, a zstd and an uncompressed layer.
func ociSource(t *testing.T, tars [][]byte) v1.Image {
	t.Helper()
	layerOf := func(b []byte, opts ...tarball.LayerOption) v1.Layer {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(img,
		mutate.Addendum{Layer: layerOf(tars[0], tarball.WithMediaType(types.OCILayer)), Annotations: map[string]string{"org.example.keep": "yes"}},
		mutate.Addendum{Layer: layerOf(tars[1], tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))},
		mutate.Addendum{Layer: static.NewLayer(tars[2], types.OCIUncompressedLayer)})
	if err != nil {
		t.Fatal(err)
	}
	// A config field go-containerregistry does not model survives.
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Config.Cmd = []string{"/bin/app"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes img into a new OCI layout tagged v1 and returns its
// reference.
func writeLayout(t *testing.T, img v1.Image) string {
	t.Helper()
	ref := "oci:" + filepath.Join(t.TempDir(), "src") + ":v1"
	if _, err := encrypt.WriteRef(context.Background(), ref, img, false); err != nil {
		t.Fatal(err)
	}
	return ref
}

// tarFiles maps each regular file of a tar to its contents.
func tarFiles(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = string(b)
		}
	}
}

// tarNames lists the entry names of a tar in order.
func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

func readAll(t *testing.T, rc io.ReadCloser, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// blobOf is a layer's blob; tarOf its uncompressed tar.
func blobOf(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	return readAll(t, rc, err)
}

func tarOf(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Uncompressed()
	return readAll(t, rc, err)
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, zr, nil)
}

func sha(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// checkESGZLayer checks one plaintext eStargz blob against its descriptor
// and diff ID, and its files against the source layer's; it returns the
// decompressed tar.
func checkESGZLayer(t *testing.T, blob []byte, desc v1.Descriptor, diffID v1.Hash, srcFiles map[string]string, chunkSize int64) []byte {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatalf("not eStargz: %v", err)
	}
	toc, err := digest.Parse(desc.Annotations[AnnotationTOCDigest])
	if err != nil {
		t.Fatalf("TOC annotation: %v", err)
	}
	verifiers, err := r.VerifyTOC(toc)
	if err != nil {
		t.Fatalf("VerifyTOC(annotated %s): %v", toc, err)
	}
	for name, want := range srcFiles {
		f, err := r.OpenFile(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
		if err != nil || string(got) != want {
			t.Fatalf("%s: contents differ from the source (%d bytes, %v)", name, len(got), err)
		}
		checkChunks(t, r, verifiers, name, got, chunkSize)
	}
	plain := gunzip(t, blob)
	if sha(plain) != diffID.String() || desc.Annotations[AnnotationUncompressed] != diffID.String() {
		t.Fatalf("diff ID %s, annotated %s, decompressed layer %s", diffID, desc.Annotations[AnnotationUncompressed], sha(plain))
	}
	if desc.Annotations[AnnotationUncompressedSize] != strconv.Itoa(len(plain)) {
		t.Fatalf("uncompressed size annotation %q, decompressed %d bytes", desc.Annotations[AnnotationUncompressedSize], len(plain))
	}
	if got := tarFiles(t, bytes.NewReader(plain)); len(got) < len(srcFiles) {
		t.Fatalf("layer has %d files, source %d", len(got), len(srcFiles))
	}
	return plain
}

// checkChunks checks every chunk of a file against its TOC chunk digest,
// as a lazy reader does before serving it.
func checkChunks(t *testing.T, r *estargz.Reader, verifiers estargz.TOCEntryVerifier, name string, contents []byte, chunkSize int64) {
	t.Helper()
	chunks := int64(0)
	for off := int64(0); off < int64(len(contents)); chunks++ {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok || ce.ChunkOffset != off || ce.ChunkSize <= 0 || ce.ChunkSize > chunkSize {
			t.Fatalf("%s: chunk at %d: %+v", name, off, ce)
		}
		v, err := verifiers.Verifier(ce)
		if err != nil {
			t.Fatalf("%s: chunk at %d: %v", name, off, err)
		}
		if _, err := v.Write(contents[off : off+ce.ChunkSize]); err != nil || !v.Verified() {
			t.Fatalf("%s: chunk at %d does not match its TOC digest", name, off)
		}
		off += ce.ChunkSize
	}
	if want := (int64(len(contents)) + chunkSize - 1) / chunkSize; chunks != want {
		t.Fatalf("%s: %d bytes in %d chunks of at most %d, want %d", name, len(contents), chunks, chunkSize, want)
	}
}

// checkConverted checks that img is the eStargz conversion of src, built
// with chunkSize, and returns each layer's decompressed tar.
func checkConverted(t *testing.T, img, src v1.Image, chunkSize int64) [][]byte {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON || m.Config.Digest.String() != sha(rawCfg) {
		t.Fatalf("manifest %s, config %s %s; config bytes are %s", m.MediaType, m.Config.MediaType, m.Config.Digest, sha(rawCfg))
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	srcCfg, _ := src.ConfigFile()
	if strings.Join(cfg.Config.Cmd, " ") != strings.Join(srcCfg.Config.Cmd, " ") || len(cfg.History) != len(srcCfg.History) {
		t.Fatalf("config changed beyond the diff IDs: %s", rawCfg)
	}
	srcLayers, _ := src.Layers()
	if len(m.Layers) != len(srcLayers) || len(cfg.RootFS.DiffIDs) != len(srcLayers) {
		t.Fatalf("%d layers, %d diff IDs, source %d layers", len(m.Layers), len(cfg.RootFS.DiffIDs), len(srcLayers))
	}
	var tars [][]byte
	for i, desc := range m.Layers {
		if desc.MediaType != types.OCILayer {
			t.Fatalf("layer %d media type %s", i, desc.MediaType)
		}
		l, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		blob := blobOf(t, l)
		if sha(blob) != desc.Digest.String() {
			t.Fatalf("layer %d blob is %s, manifest says %s", i, sha(blob), desc.Digest)
		}
		srcFiles := tarFiles(t, bytes.NewReader(tarOf(t, srcLayers[i])))
		tars = append(tars, checkESGZLayer(t, blob, desc, cfg.RootFS.DiffIDs[i], srcFiles, chunkSize))
	}
	return tars
}

// convertTo runs Ref and fails the test on error.
func convertTo(t *testing.T, src, dst string, o Options, enc *encrypt.Options) Result {
	t.Helper()
	o.TmpDir = t.TempDir()
	res, err := Ref(context.Background(), src, dst, true, o, enc)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func openRef(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := encrypt.OpenRef(context.Background(), ref, true)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestConvert(t *testing.T) {
	src := ociSource(t, testTars(t))
	srcRef := writeLayout(t, src)
	reg := regtest.Start(t)

	t.Run("layout to registry", func(t *testing.T) {
		dst := reg.Host + "/esgz/app:v1"
		res := convertTo(t, srcRef, dst, Options{ChunkSize: testChunk}, nil)
		img := openRef(t, dst)
		if d, _ := img.Digest(); d != res.Digest || res.Layers != 3 || res.Kept != 0 {
			t.Fatalf("result %+v, pushed %s", res, d)
		}
		m, _ := img.Manifest()
		if m.Layers[0].Annotations["org.example.keep"] != "yes" {
			t.Errorf("source layer annotation dropped: %v", m.Layers[0].Annotations)
		}
		for i, plain := range checkConverted(t, img, src, testChunk) {
			if names := tarNames(t, plain); names[0] != estargz.NoPrefetchLandmark {
				t.Errorf("layer %d starts with %q, want the no-prefetch landmark", i, names[0])
			}
		}

		// Converting the result again keeps every layer as it is and
		// writes the same image; --force rebuilds them.
		again := convertTo(t, dst, reg.Host+"/esgz/again:v1", Options{ChunkSize: testChunk}, nil)
		if again.Kept != 3 || again.Digest != res.Digest {
			t.Fatalf("reconverting an eStargz image: %+v, first %s", again, res.Digest)
		}
		forced := convertTo(t, dst, reg.Host+"/esgz/forced:v1", Options{Force: true, ChunkSize: 2 * testChunk}, nil)
		if forced.Kept != 0 || forced.Digest == res.Digest {
			t.Fatalf("forced reconversion: %+v", forced)
		}
		checkConverted(t, openRef(t, reg.Host+"/esgz/forced:v1"), src, 2*testChunk)
	})

	t.Run("docker registry image to layout", func(t *testing.T) {
		tars := testTars(t)
		_, dsrc := reg.Push(t, "docker/app", compression.GZip, false, tars[:2]...)
		dsrc, err := mutate.AppendLayers(dsrc, static.NewLayer(tars[2], types.DockerUncompressedLayer))
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := dsrc.Manifest(); m.MediaType != types.DockerManifestSchema2 || m.Layers[0].MediaType != types.DockerLayer || m.Layers[2].MediaType != types.DockerUncompressedLayer {
			t.Fatalf("source is %s: %v", m.MediaType, m.Layers)
		}
		ref := reg.Host + "/docker/app:v2"
		r, _ := name.ParseReference(ref, name.Insecure)
		if err := remote.Write(r, dsrc); err != nil {
			t.Fatal(err)
		}
		dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":esgz"
		convertTo(t, ref, dst, Options{CompressionLevel: gzip.BestSpeed}, nil)
		checkConverted(t, openRef(t, dst), dsrc, defaultChunk)
	})
}

func TestPrioritized(t *testing.T) {
	src := ociSource(t, testTars(t))
	srcRef := writeLayout(t, src)
	dst := "oci:" + filepath.Join(t.TempDir(), "out")
	prio := []string{"/etc/app.conf", "data/small", "/bin/app", "/not/there"}
	res := convertTo(t, srcRef, dst, Options{Prioritized: prio}, nil)
	if strings.Join(res.NotFound, ",") != "/not/there" {
		t.Fatalf("not found %v", res.NotFound)
	}
	tars := checkConverted(t, openRef(t, dst), src, defaultChunk)
	// The prioritized regular files of each layer, in order, then the
	// landmark; directories they need come along.
	want := [][]string{{"etc/app.conf", "bin/app"}, {"data/small"}, {"etc/app.conf"}}
	for i, plain := range tars {
		names := tarNames(t, plain)
		var got []string
		landmark := -1
		for j, n := range names {
			if n == estargz.PrefetchLandmark {
				landmark = j
				break
			}
			if !strings.HasSuffix(n, "/") {
				got = append(got, n)
			}
		}
		if landmark < 0 || strings.Join(got, ",") != strings.Join(want[i], ",") {
			t.Errorf("layer %d: %v before the landmark (at %d), want %v; entries %v", i, got, landmark, want[i], names)
		}
	}
}

// kekAt serves one KEK at one kid, standing in for the KBS.
type kekAt struct {
	kid string
	kek []byte
}

func (k kekAt) GetResource(_ context.Context, uri string) ([]byte, error) {
	if uri != k.kid {
		return nil, fmt.Errorf("no resource %s", uri)
	}
	return bytes.Clone(k.kek), nil
}

func TestConvertEncrypt(t *testing.T) {
	src := ociSource(t, testTars(t))
	srcRef := writeLayout(t, src)
	kek := make([]byte, decrypt.KEKSize)
	rand.Read(kek)
	const kid = "kbs:///default/image-kek/esgz"
	dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":enc"
	convertTo(t, srcRef, dst, Options{ChunkSize: testChunk}, &encrypt.Options{KEK: kek, KID: kid, TmpDir: t.TempDir()})
	img := openRef(t, dst)
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	srcLayers, _ := src.Layers()
	for i, desc := range m.Layers {
		if desc.MediaType != types.OCILayer+"+encrypted" {
			t.Fatalf("layer %d media type %s", i, desc.MediaType)
		}
		if desc.Annotations[AnnotationTOCDigest] == "" || desc.Annotations[AnnotationUncompressedSize] == "" {
			t.Fatalf("layer %d lost its eStargz annotations: %v", i, desc.Annotations)
		}
		l, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		od := ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: digest.Digest(desc.Digest.String()), Size: desc.Size, Annotations: desc.Annotations}
		dr, err := decrypt.NewReader(context.Background(), rc, od, decrypt.Options{Resources: kekAt{kid: kid, kek: kek}})
		if err != nil {
			t.Fatal(err)
		}
		blob := readAll(t, io.NopCloser(dr), nil)
		if err := dr.Verify(); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		rc.Close()
		srcFiles := tarFiles(t, bytes.NewReader(tarOf(t, srcLayers[i])))
		checkESGZLayer(t, blob, desc, cfg.RootFS.DiffIDs[i], srcFiles, testChunk)
	}
}

func TestConvertRejects(t *testing.T) {
	tars := testTars(t)
	ctx := context.Background()
	newDst := func(t *testing.T) (string, string) {
		dir := filepath.Join(t.TempDir(), "out")
		return dir, "oci:" + dir + ":v1"
	}
	nothingWritten := func(t *testing.T, dir string) {
		t.Helper()
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("destination %s exists after a failed conversion: %v", dir, err)
		}
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), ".*staging*"))
		if len(left) > 0 {
			t.Errorf("staging left behind: %v", left)
		}
	}

	t.Run("unknown media type", func(t *testing.T) {
		img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
			mutate.Addendum{Layer: static.NewLayer(tars[0], "application/vnd.example.layer.v1.tar+lz4")})
		if err != nil {
			t.Fatal(err)
		}
		dir, dst := newDst(t)
		_, err = Ref(ctx, writeLayout(t, img), dst, false, Options{TmpDir: t.TempDir()}, nil)
		if err == nil || !strings.Contains(err.Error(), "unsupported layer media type application/vnd.example.layer.v1.tar+lz4") {
			t.Fatalf("got %v", err)
		}
		nothingWritten(t, dir)
	})
	t.Run("encrypted source", func(t *testing.T) {
		img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
			mutate.Addendum{Layer: static.NewLayer(tars[0], types.OCILayer+"+encrypted")})
		if err != nil {
			t.Fatal(err)
		}
		dir, dst := newDst(t)
		if _, err := Ref(ctx, writeLayout(t, img), dst, false, Options{}, nil); err == nil || !strings.Contains(err.Error(), "layer is encrypted") {
			t.Fatalf("got %v", err)
		}
		nothingWritten(t, dir)
	})
	for _, tc := range []struct {
		layer int
		force bool
		want  string
	}{
		{0, false, "gzip: invalid checksum"}, // the gzip layer, spooled to check for eStargz
		{0, true, "gzip: invalid checksum"},
		{2, false, "compressed digest mismatch"}, // the uncompressed layer
	} {
		t.Run(fmt.Sprintf("corrupt layer %d force=%v", tc.layer, tc.force), func(t *testing.T) {
			srcRef := writeLayout(t, ociSource(t, tars))
			m, _ := openRef(t, srcRef).Manifest()
			// Flip a byte of the layer's blob in the layout.
			srcDir := strings.TrimSuffix(strings.TrimPrefix(srcRef, "oci:"), ":v1")
			d := m.Layers[tc.layer].Digest
			p := filepath.Join(srcDir, "blobs", "sha256", d.Hex)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/3] ^= 1
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			dir, dst := newDst(t)
			_, err = Ref(ctx, srcRef, dst, false, Options{Force: tc.force}, nil)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("layer %d (%s)", tc.layer, d)) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v", err)
			}
			nothingWritten(t, dir)
		})
	}
	t.Run("eStargz layer whose TOC annotation lies", func(t *testing.T) {
		conv, err := Image(ctx, ociSource(t, tars), Options{TmpDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer conv.Close()
		esgz, _ := conv.Image()
		layers, _ := esgz.Layers()
		m, _ := esgz.Manifest()
		ann := m.Layers[0].Annotations
		ann[AnnotationTOCDigest] = sha([]byte("not the TOC"))
		img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: layers[0], Annotations: ann})
		if err != nil {
			t.Fatal(err)
		}
		dir, dst := newDst(t)
		srcRef := writeLayout(t, img)
		if _, err := Ref(ctx, srcRef, dst, false, Options{TmpDir: t.TempDir()}, nil); err == nil || !strings.Contains(err.Error(), "does not match its "+AnnotationTOCDigest) {
			t.Fatalf("got %v", err)
		}
		nothingWritten(t, dir)
		// --force rebuilds it and writes the true TOC digest.
		res, err := Ref(ctx, srcRef, dst, false, Options{Force: true, TmpDir: t.TempDir()}, nil)
		if err != nil || res.Kept != 0 {
			t.Fatalf("forced: %+v, %v", res, err)
		}
		out, _ := openRef(t, dst).Manifest()
		if out.Layers[0].Annotations[AnnotationTOCDigest] == ann[AnnotationTOCDigest] {
			t.Fatal("forced conversion kept the false TOC digest")
		}
	})
	t.Run("bad options", func(t *testing.T) {
		if _, err := Image(ctx, empty.Image, Options{CompressionLevel: 10}); err == nil {
			t.Fatal("compression level 10 accepted")
		}
	})
}

// The registry source path goes through remote, which checks blob digests
// itself; a tampered registry blob is refused there too.
func TestConvertTamperedRegistryBlob(t *testing.T) {
	reg := regtest.Start(t)
	ref, img := reg.Push(t, "tampered/app", compression.GZip, true, testTars(t)...)
	m, _ := img.Manifest()
	reg.Tamper.Store(m.Layers[1].Digest.Hex)
	dst := reg.Host + "/tampered/out:v1"
	if _, err := Ref(context.Background(), ref, dst, true, Options{TmpDir: t.TempDir()}, nil); err == nil {
		t.Fatal("a tampered blob converted")
	}
	r, _ := name.ParseReference(dst, name.Insecure)
	if _, err := remote.Head(r); err == nil {
		t.Fatal("destination tag exists after a failed conversion")
	}
}
