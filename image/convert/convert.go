// Package convert rewrites the layers of a container image as eStargz
// (github.com/containerd/stargz-snapshotter/estargz): gzip tar layers that
// are still plain gzip tar layers to any full-pull consumer (containerd's
// overlayfs snapshotter, image-rs), and that also carry a table of contents
// (TOC) with a digest per chunk, so that a lazily pulling snapshotter can
// mount them by range and verify every chunk it serves. Each new layer
// descriptor carries the TOC digest annotation that anchors that chain of
// trust in the manifest, and the config's diff IDs follow the new layers.
//
// It never trusts its source: every blob is checked against its manifest
// digest and the config's diff ID before anything derived from it is used,
// and a layer that is already eStargz is kept only after its TOC verifies.
// The converted layers are spooled to unlinked temporary files; nothing is
// written anywhere until every layer has converted (Ref).
package convert

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
)

// Layer descriptor annotations written on every eStargz layer.
const (
	// AnnotationTOCDigest is the digest of the layer's uncompressed TOC
	// JSON, which a lazy snapshotter checks the TOC against before mounting
	// (containerd passes it on as a snapshot label).
	AnnotationTOCDigest = estargz.TOCJSONDigestAnnotation
	// AnnotationUncompressedSize is the size of the decompressed layer.
	AnnotationUncompressedSize = estargz.StoreUncompressedSizeAnnotation
	// AnnotationUncompressed is the layer's diff ID, as containerd's own
	// converters annotate it.
	AnnotationUncompressed = "containerd.io/uncompressed"
)

// Options tune the conversion.
type Options struct {
	// ChunkSize is the largest uncompressed chunk of a file in the eStargz
	// blob (each chunk has its own digest in the TOC); 0 is estargz's
	// default (4 MiB).
	ChunkSize int
	// CompressionLevel is the gzip level, 1 (fastest) to 9 (smallest);
	// 0 is estargz's default, 9.
	CompressionLevel int
	// Prioritized are the paths (absolute or relative to /) a container
	// reads first. In every layer holding some of them they come first,
	// followed by the .prefetch.landmark entry, which tells a lazy
	// snapshotter what to prefetch. Without any, every layer gets the
	// .no.prefetch.landmark entry. A path absent from a layer is allowed;
	// Converted.NotFound lists those prioritized in no layer. Layers kept
	// as they were (already eStargz) are not re-sorted.
	Prioritized []string
	// Force rebuilds layers that are already eStargz instead of keeping them.
	Force bool
	// TmpDir holds the (unlinked) spooled layers; "" is the system temp
	// dir. estargz.Build keeps its own scratch files in the system temp dir.
	TmpDir string
}

func (o Options) validate() error {
	if o.ChunkSize < 0 {
		return fmt.Errorf("chunk size %d is negative", o.ChunkSize)
	}
	if o.CompressionLevel != 0 && (o.CompressionLevel < gzip.BestSpeed || o.CompressionLevel > gzip.BestCompression) {
		return fmt.Errorf("gzip compression level %d is not between %d and %d", o.CompressionLevel, gzip.BestSpeed, gzip.BestCompression)
	}
	return nil
}

// Converted is the eStargz copy of an image: a config with the new diff
// IDs, an OCI manifest and the layer blobs, each in an unlinked temporary
// file. It implements partial.CompressedImageCore; Close releases the files.
type Converted struct {
	config   []byte
	manifest []byte
	layers   map[v1.Hash]*spool
	// NotFound lists the prioritized paths found in no converted layer.
	NotFound []string
	// Layers counts the layers, Kept those that were already eStargz and
	// kept as they were.
	Layers, Kept int
}

func (c *Converted) RawConfigFile() ([]byte, error) { return c.config, nil }
func (c *Converted) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
func (c *Converted) RawManifest() ([]byte, error) { return c.manifest, nil }
func (c *Converted) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := c.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("converted image has no layer %s", h)
}

// Image is the converted image, valid until Close.
func (c *Converted) Image() (v1.Image, error) {
	img, err := partial.CompressedToImage(c)
	if err != nil {
		return nil, fmt.Errorf("converted image: %w", err)
	}
	return img, nil
}

// Close releases the spooled layers.
func (c *Converted) Close() {
	for _, l := range c.layers {
		l.Close()
	}
}

// Image converts every layer of src to eStargz, one at a time.
func Image(ctx context.Context, src v1.Image, o Options) (_ *Converted, retErr error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	m, err := src.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read source manifest: %w", err)
	}
	rawConfig, err := src.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read source config: %w", err)
	}
	cfg, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("parse source config: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("source config has %d diff IDs for %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	out := &Converted{layers: map[v1.Hash]*spool{}}
	defer func() {
		if retErr != nil {
			out.Close()
		}
	}()
	found := map[string]bool{}
	nm := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Annotations: m.Annotations}
	diffIDs := make([]v1.Hash, len(m.Layers))
	for i, desc := range m.Layers {
		l, err := convertLayer(ctx, src, desc, cfg.RootFS.DiffIDs[i], o)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
		out.layers[l.blob.digest] = l.blob
		diffIDs[i] = l.diffID
		nm.Layers = append(nm.Layers, l.descriptor(desc))
		out.Layers++
		if l.kept {
			out.Kept++
		}
		missed := map[string]bool{}
		for _, p := range l.missed {
			missed[p] = true
		}
		for _, p := range o.Prioritized {
			found[p] = found[p] || !missed[p]
		}
		log.G(ctx).WithField("layer", desc.Digest).WithField("estargz", l.blob.digest).WithField("toc", l.toc).WithField("kept", l.kept).Info("layer converted to eStargz")
	}
	for _, p := range o.Prioritized {
		if !found[p] {
			out.NotFound = append(out.NotFound, p)
		}
	}
	if out.config, err = withDiffIDs(rawConfig, diffIDs); err != nil {
		return nil, err
	}
	nm.Config = m.Config
	if nm.Config.MediaType == types.DockerConfigJSON {
		nm.Config.MediaType = types.OCIConfigJSON
	}
	nm.Config.Size = int64(len(out.config))
	if nm.Config.Digest, err = v1.NewHash(fmt.Sprintf("sha256:%x", sha256.Sum256(out.config))); err != nil {
		return nil, fmt.Errorf("config digest: %w", err)
	}
	if out.manifest, err = json.Marshal(nm); err != nil {
		return nil, fmt.Errorf("encode converted manifest: %w", err)
	}
	return out, nil
}

// withDiffIDs replaces rootfs.diff_ids in a raw image config, keeping every
// other field (including ones go-containerregistry does not model).
func withDiffIDs(raw []byte, diffIDs []v1.Hash) ([]byte, error) {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("parse source config: %w", err)
	}
	var rootfs map[string]json.RawMessage
	if err := json.Unmarshal(cfg["rootfs"], &rootfs); err != nil {
		return nil, fmt.Errorf("parse source config rootfs: %w", err)
	}
	var err error
	if rootfs["diff_ids"], err = json.Marshal(diffIDs); err != nil {
		return nil, fmt.Errorf("encode diff IDs: %w", err)
	}
	if cfg["rootfs"], err = json.Marshal(rootfs); err != nil {
		return nil, fmt.Errorf("encode config rootfs: %w", err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode converted config: %w", err)
	}
	return b, nil
}

// isGzip tells the layer media types whose blob may already be eStargz.
func isGzip(mt types.MediaType) bool {
	return mt == types.OCILayer || mt == types.DockerLayer
}

// checkMediaType accepts the distributable layer media types: gzip, zstd
// or uncompressed tar, OCI or Docker.
func checkMediaType(mt types.MediaType) error {
	switch mt {
	case types.OCILayer, types.DockerLayer, types.OCILayerZStd,
		types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return nil
	case types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer, types.DockerForeignLayer,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
		return fmt.Errorf("non-distributable layer (%s) is not converted", mt)
	}
	if decrypt.IsEncrypted(string(mt)) {
		return fmt.Errorf("layer is encrypted (%s): convert the plain image (with --encrypt to encrypt the result)", mt)
	}
	return fmt.Errorf("unsupported layer media type %s", mt)
}

// converted is one output layer.
type converted struct {
	blob             *spool
	diffID           v1.Hash
	toc              digest.Digest
	uncompressedSize int64
	kept             bool
	missed           []string // prioritized paths not in this layer
}

// descriptor is the manifest entry of the layer: the source descriptor's
// annotations, with the eStargz ones set.
func (c *converted) descriptor(src v1.Descriptor) v1.Descriptor {
	ann := map[string]string{}
	for k, v := range src.Annotations {
		ann[k] = v
	}
	ann[AnnotationTOCDigest] = c.toc.String()
	ann[AnnotationUncompressedSize] = strconv.FormatInt(c.uncompressedSize, 10)
	ann[AnnotationUncompressed] = c.diffID.String()
	return v1.Descriptor{MediaType: types.OCILayer, Size: c.blob.size, Digest: c.blob.digest, Annotations: ann}
}

// convertLayer decompresses one source layer into a spooled tar, checking
// its blob digest and diff ID, then keeps it (already eStargz) or builds
// the eStargz blob from the tar.
func convertLayer(ctx context.Context, src v1.Image, desc v1.Descriptor, diffID v1.Hash, o Options) (_ *converted, retErr error) {
	if err := checkMediaType(desc.MediaType); err != nil {
		return nil, err
	}
	l, err := src.LayerByDigest(desc.Digest)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	var blob *spool // the source blob, kept when it may already be eStargz
	if isGzip(desc.MediaType) && !o.Force {
		if blob, err = newSpool(o.TmpDir); err != nil {
			return nil, err
		}
		defer func() {
			if retErr != nil && blob != nil {
				blob.Close()
			}
		}()
		rc = io.NopCloser(io.TeeReader(rc, blob))
	}
	tarFile, err := newSpool(o.TmpDir)
	if err != nil {
		return nil, err
	}
	defer tarFile.Close()
	mt := desc.MediaType
	if mt == types.DockerUncompressedLayer {
		mt = types.OCIUncompressedLayer // the same plain tar
	}
	lr, err := layer.NewReader(rc, string(mt), digest.Digest(desc.Digest.String()), digest.Digest(diffID.String()))
	if err != nil {
		return nil, err
	}
	defer lr.Close()
	if _, err := io.Copy(tarFile, lr); err != nil {
		return nil, fmt.Errorf("read source layer: %w", err)
	}
	if blob != nil {
		toc, ok, err := verifiedTOC(blob, desc)
		if err != nil {
			return nil, err
		}
		if ok { // not re-sorted: no prioritized path is prioritized in it
			blob.digest = desc.Digest
			return &converted{blob: blob, diffID: diffID, toc: toc, uncompressedSize: tarFile.size, kept: true, missed: o.Prioritized}, nil
		}
		blob.Close()
		blob = nil
	}
	return build(ctx, tarFile, o)
}

// verifiedTOC tells whether a gzip blob is already eStargz with a TOC that
// has every chunk digest and matches the descriptor's TOC annotation if it
// has one; a TOC contradicting the annotation is an error.
func verifiedTOC(blob *spool, desc v1.Descriptor) (digest.Digest, bool, error) {
	r, err := estargz.Open(blob.section())
	if err != nil {
		return "", false, nil // plain gzip tar
	}
	want := r.TOCDigest()
	if a, ok := desc.Annotations[AnnotationTOCDigest]; ok {
		if want, err = digest.Parse(a); err != nil {
			return "", false, fmt.Errorf("%s annotation %q: %w", AnnotationTOCDigest, a, err)
		}
	}
	if _, err := r.VerifyTOC(want); err != nil {
		if want != r.TOCDigest() {
			return "", false, fmt.Errorf("layer is eStargz but its TOC does not match its %s annotation (--force rebuilds it): %w", AnnotationTOCDigest, err)
		}
		return "", false, nil // stargz without chunk digests: rebuild
	}
	return want, true, nil
}

// build writes the eStargz blob of an uncompressed layer tar to a spool.
func build(ctx context.Context, tarFile *spool, o Options) (*converted, error) {
	var missed []string
	opts := []estargz.Option{estargz.WithContext(ctx), estargz.WithAllowPrioritizeNotFound(&missed)}
	if o.ChunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(o.ChunkSize))
	}
	if o.CompressionLevel != 0 {
		opts = append(opts, estargz.WithCompressionLevel(o.CompressionLevel))
	}
	if len(o.Prioritized) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(o.Prioritized))
	}
	b, err := estargz.Build(tarFile.section(), opts...)
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	defer b.Close()
	out, err := newSpool(o.TmpDir)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(out, b); err != nil {
		out.Close()
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	size, err := b.UncompressedSize()
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	diffID, err := v1.NewHash(b.DiffID().String())
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("eStargz diff ID: %w", err)
	}
	out.digest = out.sum()
	return &converted{blob: out, diffID: diffID, toc: b.TOCDigest(), uncompressedSize: size, missed: missed}, nil
}

// spool is a blob written to an unlinked temporary file while hashing it.
type spool struct {
	f      *os.File
	h      hash.Hash
	size   int64
	digest v1.Hash
}

func newSpool(dir string) (*spool, error) {
	f, err := os.CreateTemp(dir, "cocoon-convert-*")
	if err != nil {
		return nil, fmt.Errorf("spool layer: %w", err)
	}
	// Unlinked at once: the file lives as long as the descriptor.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool layer: %w", err)
	}
	return &spool{f: f, h: sha256.New()}, nil
}

func (s *spool) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.h.Write(p[:n])
	s.size += int64(n)
	return n, err
}

func (s *spool) sum() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", s.h.Sum(nil))}
}

func (s *spool) section() *io.SectionReader { return io.NewSectionReader(s.f, 0, s.size) }

func (s *spool) Close() error { return s.f.Close() }

func (s *spool) Digest() (v1.Hash, error) { return s.digest, nil }
func (s *spool) Size() (int64, error)     { return s.size, nil }
func (s *spool) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}
func (s *spool) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(s.section()), nil
}
