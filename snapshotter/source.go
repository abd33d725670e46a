package snapshotter

import (
	"context"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayerSource is what the snapshotter asks of the image pipeline
// (image/pull, adapted by snapshotter/pullsource): a verified, unpacked
// layer for a guest-pull Prepare, and the verdict on an image. It decides
// formats, signatures and decryption; the snapshotter only commits.
type LayerSource interface {
	// Layer returns the verified, unpacked layer req names. The caller owns
	// the staged directory: it renames it into place or discards it.
	Layer(ctx context.Context, req LayerRequest) (*StagedLayer, error)
	// Verify checks an image against the image security policy and returns
	// what the snapshotter needs of its verified manifest and config,
	// fetching no layer.
	Verify(ctx context.Context, ref string, dgst digest.Digest) (*VerifiedImage, error)
}

// LayerRequest names one layer of one image, from the CRI target labels.
type LayerRequest struct {
	ImageRef       string        // cri.image-ref
	ManifestDigest digest.Digest // cri.manifest-digest
	LayerDigest    digest.Digest // cri.layer-digest
	DiffID         digest.Digest // containerd.io/snapshot/diff-id (optional)
	// Exists reports whether a chain ID is already committed; a source
	// fetching layers ahead skips those.
	Exists func(ctx context.Context, chainID digest.Digest) bool
}

// StagedLayer is a verified, unpacked layer waiting to be committed: a
// directory in overlayfs upperdir form on the snapshots' filesystem.
type StagedLayer struct {
	Dir       string
	Blob      digest.Digest // the layer blob it was unpacked from
	Encrypted bool          // the blob was an encrypted layer
	DiffID    digest.Digest
	ChainID   digest.Digest
}

// Discard removes the staged directory (after a failed commit).
func (s *StagedLayer) Discard() error { return os.RemoveAll(s.Dir) }

// VerifiedImage is what the snapshotter records of an image the policy
// accepted: its manifest digest, its layer blobs in manifest order and its
// config's diff IDs.
type VerifiedImage struct {
	Manifest digest.Digest
	Layers   []ImageLayer
	DiffIDs  []digest.Digest
}

// ImageLayer is one layer blob of a verified image.
type ImageLayer struct {
	Digest    digest.Digest
	Encrypted bool
	// Descriptor is the layer descriptor as the verified manifest gives it
	// (media type, size, annotations such as the eStargz TOC digest).
	Descriptor ocispec.Descriptor
}

// layerIndex returns the position of the layer blob dgst in the manifest.
func (im *VerifiedImage) layerIndex(dgst digest.Digest) (int, bool) {
	for i, l := range im.Layers {
		if l.Digest == dgst {
			return i, true
		}
	}
	return -1, false
}
