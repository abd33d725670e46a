// Package pullsource adapts the guest-pull pipeline (image/pull) to the
// snapshotter's LayerSource seam, so that the snapshotter itself links
// none of the image pipeline. It translates types and nothing else: every
// check stays in image/pull.
package pullsource

import (
	"context"

	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

// Source is a snapshotter.LayerSource backed by a Puller.
type Source struct{ p *pull.Puller }

var _ snapshotter.LayerSource = Source{}

// New returns the LayerSource of p.
func New(p *pull.Puller) Source { return Source{p: p} }

// Layer pulls, verifies and unpacks the layer req names.
func (s Source) Layer(ctx context.Context, req snapshotter.LayerRequest) (*snapshotter.StagedLayer, error) {
	st, err := s.p.Layer(ctx, pull.Request{
		ImageRef:       req.ImageRef,
		ManifestDigest: req.ManifestDigest,
		LayerDigest:    req.LayerDigest,
		DiffID:         req.DiffID,
		Exists:         req.Exists,
	})
	if err != nil {
		return nil, err
	}
	return &snapshotter.StagedLayer{
		Dir:       st.Dir,
		Blob:      st.Layer.Digest,
		Encrypted: decrypt.IsEncrypted(st.Layer.MediaType),
		DiffID:    st.DiffID,
		ChainID:   st.ChainID,
	}, nil
}

// Verify checks the image against the image security policy.
func (s Source) Verify(ctx context.Context, ref string, dgst digest.Digest) (*snapshotter.VerifiedImage, error) {
	im, err := s.p.Verify(ctx, ref, dgst)
	if err != nil {
		return nil, err
	}
	v := &snapshotter.VerifiedImage{
		Manifest: im.ManifestDigest,
		DiffIDs:  append([]digest.Digest(nil), im.Config.RootFS.DiffIDs...),
	}
	for _, l := range im.Manifest.Layers {
		v.Layers = append(v.Layers, snapshotter.ImageLayer{Digest: l.Digest, Encrypted: decrypt.IsEncrypted(l.MediaType), Descriptor: l})
	}
	return v, nil
}
