package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// tagPattern is the distribution spec's tag grammar.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ResolveTag returns the digest of the manifest (or index) that tag names,
// asking repos in order (as ImageFrom tries them) and taking the first that
// answers. The digest is computed from the bytes served, never taken from a
// header; the tag-to-digest binding itself is the registry's word, which is
// why the caller fetches the image by that digest (Image, ImageFrom) and
// checks the image security policy on it.
func (c *Client) ResolveTag(ctx context.Context, repos []name.Repository, tag string) (digest.Digest, error) {
	if !tagPattern.MatchString(tag) {
		return "", fmt.Errorf("invalid tag %q: %w", tag, errdefs.ErrInvalidArgument)
	}
	if len(repos) == 0 {
		return "", fmt.Errorf("tag %s: no repository to resolve it in: %w", tag, errdefs.ErrInvalidArgument)
	}
	return firstFrom(ctx, repos, "resolve tag "+tag, ":"+tag, func(r name.Repository) (digest.Digest, error) {
		return c.resolveTag(ctx, r, tag)
	})
}

func (c *Client) resolveTag(ctx context.Context, repo name.Repository, tag string) (digest.Digest, error) {
	hdr := http.Header{}
	hdr.Set("Accept", strings.Join(manifestAccept, ", "))
	resp, err := c.get(ctx, repo, "manifests/"+tag, hdr, http.StatusOK)
	if err != nil { // a StatusError carries its errdefs class (404: ErrNotFound)
		return "", fmt.Errorf("resolve %s:%s: %w", repo, tag, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return "", fmt.Errorf("read manifest %s:%s: %w", repo, tag, err)
	}
	if len(b) > maxManifestSize {
		return "", fmt.Errorf("manifest %s:%s is larger than %d bytes: %w", repo, tag, maxManifestSize, errdefs.ErrFailedPrecondition)
	}
	return digest.FromBytes(b), nil
}
