package encrypt

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// LayoutPrefix marks an OCI image layout reference: oci:DIR[:TAG].
const LayoutPrefix = "oci:"

// RefNameAnnotation tags an image inside an OCI layout index.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

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
	rest := strings.TrimPrefix(ref, LayoutPrefix)
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		return rest[:i], rest[i+1:]
	}
	return rest, ""
}

// OpenRef reads a single-platform image from a registry or a layout.
func OpenRef(ctx context.Context, ref string, insecure bool) (v1.Image, error) {
	if !strings.HasPrefix(ref, LayoutPrefix) {
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
		if tag == "" || d.Annotations[RefNameAnnotation] == tag {
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

// WriteRef pushes img to a registry or writes it into a layout, and
// returns the manifest digest. A push uploads the blobs before the
// manifest, so a failed one tags nothing. A new layout is written in a
// staging directory beside DIR and renamed into place, so a failure leaves
// no DIR; into an existing layout the blobs are written before index.json
// names the image, so a failure leaves at most unreferenced blobs.
func WriteRef(ctx context.Context, ref string, img v1.Image, insecure bool) (v1.Hash, error) {
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("manifest digest: %w", err)
	}
	if !strings.HasPrefix(ref, LayoutPrefix) {
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
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := writeNewLayout(dir, tag, img); err != nil {
			return v1.Hash{}, err
		}
		return d, nil
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return v1.Hash{}, fmt.Errorf("create OCI layout %s: %w", dir, err)
		}
	}
	if err := writeLayout(p, dir, tag, img); err != nil {
		return v1.Hash{}, err
	}
	return d, nil
}

// writeNewLayout writes a layout in a staging directory and renames it to
// dir once complete.
func writeNewLayout(dir, tag string, img v1.Image) (retErr error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	staging, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".staging-*")
	if err != nil {
		return fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(staging)
		}
	}()
	if err := os.Chmod(staging, 0o755); err != nil {
		return fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	p, err := layout.Write(staging, empty.Index)
	if err != nil {
		return fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	if err := writeLayout(p, dir, tag, img); err != nil {
		return err
	}
	if err := os.Rename(staging, dir); err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	return nil
}

func writeLayout(p layout.Path, dir, tag string, img v1.Image) error {
	var err error
	if tag == "" {
		err = p.AppendImage(img)
	} else {
		err = p.ReplaceImage(img, match.Annotation(RefNameAnnotation, tag), layout.WithAnnotations(map[string]string{RefNameAnnotation: tag}))
	}
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	return nil
}
