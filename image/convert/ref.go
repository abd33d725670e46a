package convert

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-cc/cocoon/image/encrypt"
)

// Result is what Ref wrote.
type Result struct {
	// Digest is the manifest digest written to the destination.
	Digest v1.Hash
	// Layers counts the layers, Kept those already eStargz and kept.
	Layers, Kept int
	// NotFound lists the prioritized paths found in no converted layer.
	NotFound []string
}

// Ref reads the image at src (a registry reference or oci:DIR[:TAG]),
// converts it to eStargz and writes it to dst (same forms). With enc, the
// eStargz layers are then encrypted as encrypt.Image does; their
// descriptors keep the TOC digest and uncompressed-size annotations, which
// describe the plaintext eStargz blob. Every layer is converted (and
// encrypted) before anything is written; see encrypt.WriteRef for what a
// failed write leaves behind.
func Ref(ctx context.Context, src, dst string, insecure bool, o Options, enc *encrypt.Options) (Result, error) {
	img, err := encrypt.OpenRef(ctx, src, insecure)
	if err != nil {
		return Result{}, err
	}
	conv, err := Image(ctx, img, o)
	if err != nil {
		return Result{}, err
	}
	defer conv.Close()
	out, err := conv.Image()
	if err != nil {
		return Result{}, err
	}
	if enc != nil {
		e, err := encrypt.Image(ctx, out, *enc)
		if err != nil {
			return Result{}, err
		}
		defer e.Close()
		if out, err = e.Image(); err != nil {
			return Result{}, err
		}
	}
	d, err := encrypt.WriteRef(ctx, dst, out, insecure)
	if err != nil {
		return Result{}, err
	}
	return Result{Digest: d, Layers: conv.Layers, Kept: conv.Kept, NotFound: conv.NotFound}, nil
}
