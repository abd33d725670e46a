// Package encrypt re-encrypts a container image for the attestation-agent
// key provider, as coco_keyprovider and skopeo do: every layer becomes an
// ocicrypt layer whose key is wrapped under a KEK the KBS serves at a kid.
// The config is kept byte for byte; the manifest becomes an OCI manifest.
// Layer keys stay in memory; only ciphertext is spooled to disk. It never
// reaches a KBS itself: the caller holds the KEK.
//
// OpenRef and WriteRef read and write images by registry reference or OCI
// layout (oci:DIR[:TAG]), the forms `cocoonctl encrypt` takes.
package encrypt

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/internal/hashio"
)

// Options name the key the layers are wrapped for.
type Options struct {
	// KEK is the 32-byte key encryption key the KBS serves at KID.
	KEK []byte
	// KID is the kbs:///repo/type/tag URI the guest fetches the KEK from.
	KID string
	// TmpDir holds the (unlinked) encrypted layers until they are written;
	// "" is the system temp dir.
	TmpDir string
}

// Encrypted is the encrypted copy of an image: the original config bytes,
// a new OCI manifest and the encrypted layers, each spooled to an unlinked
// temporary file (ciphertext only: the layer keys stay in memory). It
// implements partial.CompressedImageCore; Close releases the files.
type Encrypted struct {
	config   []byte
	manifest []byte
	layers   map[v1.Hash]*spooledLayer
}

func (e *Encrypted) RawConfigFile() ([]byte, error) { return e.config, nil }
func (e *Encrypted) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
func (e *Encrypted) RawManifest() ([]byte, error) { return e.manifest, nil }
func (e *Encrypted) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := e.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("encrypted image has no layer %s", h)
}

// Image is the encrypted image, valid until Close.
func (e *Encrypted) Image() (v1.Image, error) {
	img, err := partial.CompressedToImage(e)
	if err != nil {
		return nil, fmt.Errorf("encrypted image: %w", err)
	}
	return img, nil
}

// Close releases the spooled layers.
func (e *Encrypted) Close() {
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

// Image encrypts every layer of src, one at a time, streaming from the
// source into a temporary file. A layer already encrypted is refused.
func Image(ctx context.Context, src v1.Image, o Options) (_ *Encrypted, retErr error) {
	m, err := src.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read source manifest: %w", err)
	}
	config, err := src.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read source config: %w", err)
	}
	out := &Encrypted{config: config, layers: map[v1.Hash]*spooledLayer{}}
	defer func() {
		if retErr != nil {
			out.Close()
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
		sl, ann, err := encryptLayer(l, desc, o)
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
		log.G(ctx).WithField("layer", desc.Digest).WithField("encrypted", sl.digest).WithField("kid", o.KID).Info("layer encrypted")
	}
	if out.manifest, err = json.Marshal(nm); err != nil {
		return nil, fmt.Errorf("encode encrypted manifest: %w", err)
	}
	return out, nil
}

// encryptLayer streams one layer blob through the encrypter into an
// unlinked temporary file, checking the source digest on the way.
func encryptLayer(l v1.Layer, desc v1.Descriptor, o Options) (*spooledLayer, map[string]string, error) {
	if desc.Digest.Algorithm != "sha256" {
		return nil, nil, fmt.Errorf("blob digest algorithm %s is not supported (sha256 only)", desc.Digest.Algorithm)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	plain := &hashio.Reader{R: rc, H: sha256.New()}
	enc, err := decrypt.NewEncrypter(plain, digest.Digest(desc.Digest.String()))
	if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp(o.TmpDir, "cocoon-encrypt-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool encrypted layer: %w", err)
	}
	// Unlinked at once: the file lives as long as the descriptor.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spool encrypted layer: %w", err)
	}
	ct := &hashio.Reader{R: enc, H: sha256.New()}
	if _, err := io.Copy(f, ct); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("encrypt blob: %w", err)
	}
	if got := fmt.Sprintf("sha256:%x", plain.H.Sum(nil)); got != desc.Digest.String() {
		f.Close()
		return nil, nil, fmt.Errorf("source blob digest mismatch: got %s", got)
	}
	ann, err := enc.Annotations(o.KEK, o.KID)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	h, err := v1.NewHash(fmt.Sprintf("sha256:%x", ct.H.Sum(nil)))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("encrypted blob digest: %w", err)
	}
	return &spooledLayer{f: f, digest: h, size: ct.N}, ann, nil
}
