package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
)

func init() {
	register(command{
		name:    "encrypt",
		summary: "encrypt every layer of an image for the attestation-agent key provider (KEK at --kid in the KBS)",
		run:     func(ctx context.Context, args []string) error { return runEncrypt(ctx, args, os.Stdout) },
	})
}

// ociLayoutPrefix marks an OCI image layout reference: oci:DIR[:TAG].
const ociLayoutPrefix = "oci:"

// refNameAnnotation tags an image inside an OCI layout index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

func runEncrypt(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("encrypt")
	insecure := fs.Bool("insecure", false, "allow plain HTTP (and self-signed TLS) registries")
	kid := fs.String("kid", "", "resource `URI` of the KEK in the KBS, e.g. kbs:///default/image-kek/1 (required)")
	keyFile := fs.String("key-file", "", "`file` holding the 32-byte KEK, as registered in the KBS at --kid (required)")
	tmpDir := fs.String("tmpdir", "", "`dir` for the encrypted layers before upload (default: the system temp dir)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: cocoonctl encrypt [--insecure] --kid KID --key-file FILE SRC_REF DST_REF\n\nREF is a registry reference or oci:DIR[:TAG] (an OCI image layout).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("want SRC_REF and DST_REF: %w", errUsage)
	}
	if *kid == "" || *keyFile == "" {
		return fmt.Errorf("--kid and --key-file are required: %w", errUsage)
	}
	if _, err := kbs.ParseResourceURI(*kid); err != nil || !strings.HasPrefix(*kid, "kbs://") {
		return fmt.Errorf("--kid %q is not a kbs:///repo/type/tag URI the guest can fetch: %w", *kid, errUsage)
	}
	kek, err := readKEK(*keyFile)
	if err != nil {
		return err
	}
	defer clear(kek)

	src, err := openImage(ctx, fs.Arg(0), *insecure)
	if err != nil {
		return err
	}
	enc, err := encryptImage(ctx, src, kek, *kid, *tmpDir)
	if err != nil {
		return err
	}
	defer enc.close()
	img, err := partial.CompressedToImage(enc)
	if err != nil {
		return fmt.Errorf("encrypted image: %w", err)
	}
	d, err := writeImage(ctx, fs.Arg(1), img, *insecure)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s@%s\n", fs.Arg(1), d)
	return err
}

// readKEK reads a key file holding exactly the 32 raw KEK bytes (what
// coco_keyprovider's keypath holds and what the KBS serves).
func readKEK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read KEK: %w", err)
	}
	if len(b) != decrypt.KEKSize {
		clear(b)
		return nil, fmt.Errorf("KEK file %s holds %d bytes, want exactly %d raw bytes", path, len(b), decrypt.KEKSize)
	}
	return b, nil
}

func nameOptions(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

func remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
}

// splitLayoutRef splits oci:DIR[:TAG].
func splitLayoutRef(ref string) (dir, tag string) {
	rest := strings.TrimPrefix(ref, ociLayoutPrefix)
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		return rest[:i], rest[i+1:]
	}
	return rest, ""
}

// openImage reads a single-platform image from a registry or a layout.
func openImage(ctx context.Context, ref string, insecure bool) (v1.Image, error) {
	if !strings.HasPrefix(ref, ociLayoutPrefix) {
		r, err := name.ParseReference(ref, nameOptions(insecure)...)
		if err != nil {
			return nil, fmt.Errorf("parse source %q: %w", ref, err)
		}
		img, err := remote.Image(r, remoteOptions(ctx)...)
		if err != nil {
			return nil, fmt.Errorf("read source %s: %w", ref, err)
		}
		return img, nil
	}
	dir, tag := splitLayoutRef(ref)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s index: %w", dir, err)
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if tag == "" || d.Annotations[refNameAnnotation] == tag {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("OCI layout %s: no image tagged %q", dir, tag)
	case len(found) > 1:
		return nil, fmt.Errorf("OCI layout %s: %d images match, name one with oci:DIR:TAG", dir, len(found))
	case !found[0].MediaType.IsImage():
		return nil, fmt.Errorf("OCI layout %s: %s is a %s; only single-platform images are supported", dir, found[0].Digest, found[0].MediaType)
	}
	img, err := idx.Image(found[0].Digest)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: image %s: %w", dir, found[0].Digest, err)
	}
	return img, nil
}

// writeImage pushes img to a registry or writes it into a layout, and
// returns the manifest digest.
func writeImage(ctx context.Context, ref string, img v1.Image, insecure bool) (v1.Hash, error) {
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("encrypted manifest digest: %w", err)
	}
	if !strings.HasPrefix(ref, ociLayoutPrefix) {
		r, err := name.ParseReference(ref, nameOptions(insecure)...)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("parse destination %q: %w", ref, err)
		}
		if err := remote.Write(r, img, remoteOptions(ctx)...); err != nil {
			return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
		}
		return d, nil
	}
	dir, tag := splitLayoutRef(ref)
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return v1.Hash{}, fmt.Errorf("create OCI layout %s: %w", dir, err)
		}
	}
	if tag == "" {
		err = p.AppendImage(img)
	} else {
		err = p.ReplaceImage(img, match.Annotation(refNameAnnotation, tag), layout.WithAnnotations(map[string]string{refNameAnnotation: tag}))
	}
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	return d, nil
}

// encryptedImage is the encrypted copy of an image: the original config
// bytes, a new OCI manifest and the encrypted layers, each spooled to an
// unlinked temporary file (ciphertext only: the layer keys stay in memory).
// It implements partial.CompressedImageCore.
type encryptedImage struct {
	config   []byte
	manifest []byte
	layers   map[v1.Hash]*spooledLayer
}

func (e *encryptedImage) RawConfigFile() ([]byte, error) { return e.config, nil }
func (e *encryptedImage) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
func (e *encryptedImage) RawManifest() ([]byte, error) { return e.manifest, nil }
func (e *encryptedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := e.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("encrypted image has no layer %s", h)
}

func (e *encryptedImage) close() {
	for _, l := range e.layers {
		l.f.Close()
	}
}

// spooledLayer is an encrypted layer blob in an unlinked temporary file.
type spooledLayer struct {
	f         *os.File
	digest    v1.Hash
	size      int64
	mediaType types.MediaType
}

func (l *spooledLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *spooledLayer) Size() (int64, error)     { return l.size, nil }
func (l *spooledLayer) MediaType() (types.MediaType, error) {
	return l.mediaType, nil
}
func (l *spooledLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(l.f, 0, l.size)), nil
}

// plainOCILayerType maps a plain layer media type to the OCI type whose
// +encrypted variant the consumer understands; Docker types become OCI
// (an encrypted image is always an OCI image, as skopeo makes it).
func plainOCILayerType(mt types.MediaType) (types.MediaType, error) {
	switch mt {
	case types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
		return mt, nil
	case types.DockerLayer:
		return types.OCILayer, nil
	case types.DockerForeignLayer:
		return types.OCIRestrictedLayer, nil
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer, nil
	}
	if decrypt.IsEncrypted(string(mt)) {
		return "", fmt.Errorf("layer is already encrypted (%s)", mt)
	}
	return "", fmt.Errorf("unsupported layer media type %s", mt)
}

// encryptImage encrypts every layer of src, one at a time, streaming from
// the source into a temporary file.
func encryptImage(ctx context.Context, src v1.Image, kek []byte, kid, tmpDir string) (_ *encryptedImage, retErr error) {
	m, err := src.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read source manifest: %w", err)
	}
	config, err := src.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read source config: %w", err)
	}
	out := &encryptedImage{config: config, layers: map[v1.Hash]*spooledLayer{}}
	defer func() {
		if retErr != nil {
			out.close()
		}
	}()
	nm := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        m.Config,
		Annotations:   m.Annotations,
	}
	if nm.Config.MediaType == types.DockerConfigJSON {
		nm.Config.MediaType = types.OCIConfigJSON
	}
	for i, desc := range m.Layers {
		plainType, err := plainOCILayerType(desc.MediaType)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
		l, err := src.LayerByDigest(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
		sl, ann, err := encryptLayer(l, desc, kek, kid, tmpDir)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
		sl.mediaType = types.MediaType(decrypt.EncryptedMediaType(string(plainType)))
		out.layers[sl.digest] = sl
		for k, v := range desc.Annotations {
			if !strings.HasPrefix(k, "org.opencontainers.image.enc.") {
				ann[k] = v
			}
		}
		nm.Layers = append(nm.Layers, v1.Descriptor{
			MediaType:   sl.mediaType,
			Size:        sl.size,
			Digest:      sl.digest,
			URLs:        desc.URLs,
			Annotations: ann,
		})
		log.G(ctx).WithField("layer", desc.Digest).WithField("encrypted", sl.digest).WithField("kid", kid).Info("layer encrypted")
	}
	if out.manifest, err = json.Marshal(nm); err != nil {
		return nil, fmt.Errorf("encode encrypted manifest: %w", err)
	}
	return out, nil
}

// hashingReader hashes what passes through.
type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

// encryptLayer streams one layer blob through the encrypter into an
// unlinked temporary file, checking the source digest on the way.
func encryptLayer(l v1.Layer, desc v1.Descriptor, kek []byte, kid, tmpDir string) (*spooledLayer, map[string]string, error) {
	if desc.Digest.Algorithm != "sha256" {
		return nil, nil, fmt.Errorf("blob digest algorithm %s is not supported (sha256 only)", desc.Digest.Algorithm)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	plain := &hashingReader{r: rc, h: sha256.New()}
	enc, err := decrypt.NewEncrypter(plain, digest.Digest(desc.Digest.String()))
	if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp(tmpDir, "cocoonctl-encrypt-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool encrypted layer: %w", err)
	}
	// Unlinked at once: the file lives as long as the descriptor.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spool encrypted layer: %w", err)
	}
	ct := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, ct), enc)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("encrypt blob: %w", err)
	}
	if got := fmt.Sprintf("sha256:%x", plain.h.Sum(nil)); got != desc.Digest.String() {
		f.Close()
		return nil, nil, fmt.Errorf("source blob digest mismatch: got %s", got)
	}
	ann, err := enc.Annotations(kek, kid)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	h, err := v1.NewHash(fmt.Sprintf("sha256:%x", ct.Sum(nil)))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("encrypted blob digest: %w", err)
	}
	return &spooledLayer{f: f, digest: h, size: n}, ann, nil
}
