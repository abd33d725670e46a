// Package registry is cocoon's OCI distribution client: it fetches manifests
// by digest (choosing the platform from an index), small verified blobs such
// as image configs, and layer blobs as resumable streams.
//
// It must never return manifest or config bytes whose digest has not been
// checked, and never speak plain HTTP to a registry that was not configured
// as insecure. Layer blob digests are checked by the caller while it streams
// (see image/layer), because a layer is never held in memory.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/internal/retry"
)

// Media types of manifests this client understands.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// maxManifestSize bounds manifest and index documents (the distribution spec
// recommends registries accept at least 4 MiB).
const maxManifestSize = 4 << 20

// maxRetryDelay caps the wait between two attempts of a request.
const maxRetryDelay = 5 * time.Second

// Options configure a Client.
type Options struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string
	// Keychain resolves credentials; nil means anonymous.
	Keychain authn.Keychain
	// Network is the proxy and extra root certificates for every request to
	// a registry: layer and manifest fetches, and the signature verifier's
	// (image/signature reads them from the Client).
	Network TransportOptions
	// Transport replaces the transport built from Network (tests).
	Transport http.RoundTripper
	// Retries is how many times a failed request or a cut stream is retried
	// (default 5). Backoff doubles from RetryBackoff (default 200ms) up to 5s,
	// with full jitter.
	Retries      int
	RetryBackoff time.Duration
	// Platform selects the manifest of an index (default: this host's).
	Platform platforms.MatchComparer
	// MaxConfigSize bounds image config blobs (default 8 MiB).
	MaxConfigSize int64
	// Hosts applies a registries configuration (mirrors, remapping,
	// blocked prefixes, insecure registries); nil means none.
	Hosts *Hosts
}

// Client talks to OCI registries. It is safe for concurrent use.
type Client struct {
	opts     Options
	insecure map[string]bool
	base     http.RoundTripper
	proxy    func(*http.Request) (*url.URL, error)
	netErr   error // a bad Options.Network, reported by every request

	mu         sync.Mutex
	transports map[string]http.RoundTripper // per repository, with auth
}

// New returns a Client.
func New(opts Options) *Client {
	if opts.Retries <= 0 {
		opts.Retries = 5
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = 200 * time.Millisecond
	}
	if opts.Platform == nil {
		opts.Platform = platforms.Default()
	}
	if opts.MaxConfigSize <= 0 {
		opts.MaxConfigSize = 8 << 20
	}
	if opts.Keychain == nil {
		opts.Keychain = anonymous{}
	}
	c := &Client{
		opts:       opts,
		insecure:   map[string]bool{},
		transports: map[string]http.RoundTripper{},
	}
	base := opts.Transport
	if base == nil {
		t, err := NewTransport(opts.Network)
		if err != nil {
			c.netErr = fmt.Errorf("registry transport: %w", err)
			t = http.DefaultTransport.(*http.Transport).Clone()
		}
		base = t
	}
	if t, ok := base.(*http.Transport); ok {
		c.proxy = t.Proxy
	}
	for _, h := range opts.Insecure {
		c.insecure[h] = true
	}
	if opts.Hosts != nil {
		for _, r := range opts.Hosts.Registries {
			if r.Insecure {
				c.insecure[hostOf(r.Location)] = true
				if r.Location == "" {
					c.insecure[hostOf(r.Prefix)] = true
				}
			}
			for _, m := range r.Mirrors {
				if m.Insecure {
					c.insecure[hostOf(m.Location)] = true
				}
			}
		}
	}
	c.base = &schemeGuard{next: base, insecure: c.insecure}
	return c
}

// Network returns the proxy and trust settings requests are made with.
func (c *Client) Network() TransportOptions { return c.opts.Network }

// Proxy returns the proxy for a request to u (nil: direct), as the client's
// own transport chooses it.
func (c *Client) Proxy(u *url.URL) (*url.URL, error) {
	if c.proxy == nil {
		return nil, nil
	}
	return c.proxy(&http.Request{URL: u, Header: http.Header{}})
}

// Insecure reports whether host (host[:port]) is reached over plain HTTP.
func (c *Client) Insecure(host string) bool { return c.insecure[host] }

// Keychain returns the credentials source.
func (c *Client) Keychain() authn.Keychain { return c.opts.Keychain }

// BaseTransport returns the transport every request goes through (proxy,
// trust roots, the plain-HTTP guard), without authentication.
func (c *Client) BaseTransport() (http.RoundTripper, error) { return c.base, c.netErr }

type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// schemeGuard refuses plain-HTTP requests to registries not configured as
// insecure. go-containerregistry falls back to HTTP for loopback and private
// addresses on its own; inside a TEE that decision belongs to the operator.
type schemeGuard struct {
	next     http.RoundTripper
	insecure map[string]bool
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !g.insecure[r.URL.Host] {
		return nil, fmt.Errorf("refusing plain HTTP to %s: registry is not configured as insecure", r.URL.Host)
	}
	return g.next.RoundTrip(r)
}

// ParseRepository parses an image reference (as in the CRI image-ref label)
// and returns its repository.
func (c *Client) ParseRepository(ref string) (name.Repository, error) {
	var opts []name.Option
	if r, err := name.ParseReference(ref); err == nil && c.insecure[r.Context().RegistryStr()] {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("parse image reference %q: %w: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	return r.Context(), nil
}

func hostOf(location string) string {
	h, _, _ := strings.Cut(location, "/")
	return h
}

// Repositories returns, in the order to try them, the repositories an image
// reference is fetched from: the registries configuration's mirrors first,
// then the (possibly remapped) original. A blocked reference is an error.
func (c *Client) Repositories(ref string) ([]name.Repository, error) {
	orig, err := c.ParseRepository(ref)
	if err != nil {
		return nil, err
	}
	if c.opts.Hosts == nil {
		return []name.Repository{orig}, nil
	}
	locs, err := c.opts.Hosts.Locations(orig.Name())
	if err != nil {
		return nil, fmt.Errorf("image %s: %w: %w", ref, err, errdefs.ErrPermissionDenied)
	}
	var repos []name.Repository
	for _, l := range locs {
		var opts []name.Option
		if c.insecure[hostOf(l.Repository)] {
			opts = append(opts, name.Insecure)
		}
		r, err := name.NewRepository(l.Repository, opts...)
		if err != nil {
			return nil, fmt.Errorf("registries configuration maps %s to %q: %w", ref, l.Repository, err)
		}
		repos = append(repos, r)
	}
	return repos, nil
}

// ImageFrom fetches the image from the first of repos that serves it, as
// image-rs does with mirrors; the error lists every location's failure.
func (c *Client) ImageFrom(ctx context.Context, repos []name.Repository, dgst digest.Digest) (*Image, error) {
	return firstFrom(ctx, repos, "pull image "+dgst.String(), "", func(r name.Repository) (*Image, error) {
		return c.Image(ctx, r, dgst)
	})
}

// firstFrom returns the answer of the first of repos for which fetch
// succeeds, as image-rs tries mirrors; the error names every location's
// failure (location shown as the repository followed by suffix). Any
// failure, a digest mismatch included, moves on to the next location:
// everything fetched is verified, so availability may come from any of
// them. A cancelled ctx stops at once.
func firstFrom[T any](ctx context.Context, repos []name.Repository, what, suffix string, fetch func(name.Repository) (T, error)) (T, error) {
	var zero T
	var errs []string
	var last error
	for _, r := range repos {
		v, err := fetch(r)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil {
			return zero, err
		}
		last = err
		errs = append(errs, fmt.Sprintf("image: %s%s, error: %v", r, suffix, err))
	}
	if len(repos) == 1 {
		return zero, last
	}
	return zero, fmt.Errorf("failed to %s from all mirror/mapping locations or original location:\n%s: %w",
		what, strings.Join(errs, "\n"), last)
}

func (c *Client) scheme(repo name.Repository) string {
	if c.insecure[repo.RegistryStr()] {
		return "http"
	}
	return "https"
}

func (c *Client) transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	if c.netErr != nil {
		return nil, c.netErr
	}
	key := repo.String()
	c.mu.Lock()
	rt, ok := c.transports[key]
	c.mu.Unlock()
	if ok {
		return rt, nil
	}
	auth, err := authn.Resolve(ctx, c.opts.Keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("resolve credentials for %s: %w", repo, err)
	}
	err = c.retry().Do(ctx, func(int) error {
		var err error
		rt, err = transport.NewWithContext(ctx, repo.Registry, auth, c.base, []string{repo.Scope(transport.PullScope)})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connect to registry %s: %w", repo.RegistryStr(), err)
	}
	c.mu.Lock()
	c.transports[key] = rt
	c.mu.Unlock()
	return rt, nil
}

// StatusError is a registry response with an unexpected HTTP status.
type StatusError struct {
	URL    string
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("GET %s: unexpected status %d", e.URL, e.Status)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

func (e *StatusError) Unwrap() error {
	switch e.Status {
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	}
	return nil
}

// retry is how a request, a connection or a cut stream is retried.
func (c *Client) retry() retry.Policy {
	return retry.Policy{
		Attempts:  c.opts.Retries + 1,
		Base:      c.opts.RetryBackoff,
		Max:       maxRetryDelay,
		Jitter:    retry.FullJitter,
		Retryable: retryable,
	}
}

func retryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var re *RangeError
	if errors.As(err, &re) {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusTooManyRequests || se.Status >= 500
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode == http.StatusTooManyRequests || te.StatusCode >= 500
	}
	return true // network errors
}

// get issues one GET (with retries for network errors and 5xx/429) and
// returns a response with the wanted status.
func (c *Client) get(ctx context.Context, repo name.Repository, path string, hdr http.Header, ok ...int) (*http.Response, error) {
	rt, err := c.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := fmt.Sprintf("%s://%s/v2/%s/%s", c.scheme(repo), repo.RegistryStr(), repo.RepositoryStr(), path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	var resp *http.Response
	err = c.retry().Do(ctx, func(int) error {
		r, err := (&http.Client{Transport: rt}).Do(req.Clone(ctx))
		if err != nil {
			if retryable(err) {
				log.G(ctx).WithError(err).WithField("url", u).Debug("registry request failed, retrying")
			}
			return err
		}
		for _, s := range ok {
			if r.StatusCode == s {
				resp = r
				return nil
			}
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 512))
		r.Body.Close()
		return &StatusError{URL: u, Status: r.StatusCode, Body: strings.TrimSpace(string(body))}
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// fetchVerified fetches a small document (manifest or blob) by digest and
// checks its digest and size.
func (c *Client) fetchVerified(ctx context.Context, repo name.Repository, path string, dgst digest.Digest, accept []string, max int64) ([]byte, string, error) {
	if err := dgst.Validate(); err != nil {
		return nil, "", fmt.Errorf("invalid digest %q: %w: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	hdr := http.Header{}
	if len(accept) > 0 {
		hdr.Set("Accept", strings.Join(accept, ", "))
	}
	resp, err := c.get(ctx, repo, path, hdr, http.StatusOK)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, "", fmt.Errorf("read %s@%s: %w", repo, dgst, err)
	}
	if int64(len(b)) > max {
		return nil, "", fmt.Errorf("%s@%s is larger than %d bytes: %w", repo, dgst, max, errdefs.ErrFailedPrecondition)
	}
	if got := dgst.Algorithm().FromBytes(b); got != dgst {
		return nil, "", &DigestMismatchError{Ref: repo.String(), Expected: dgst, Actual: got}
	}
	return b, resp.Header.Get("Content-Type"), nil
}

// DigestMismatchError reports a manifest or blob whose bytes do not match
// the digest that named them.
type DigestMismatchError struct {
	Ref              string
	Expected, Actual digest.Digest
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("%s: digest mismatch: expected %s, got %s", e.Ref, e.Expected, e.Actual)
}

func (e *DigestMismatchError) Unwrap() error { return errdefs.ErrFailedPrecondition }

// Image is a verified image manifest with its config.
type Image struct {
	Repository     name.Repository
	ManifestDigest digest.Digest // of the platform manifest (not the index)
	Manifest       ocispec.Manifest
	Config         ocispec.Image
}

// LayerIndex returns the position of the layer blob dgst in the manifest.
func (im *Image) LayerIndex(dgst digest.Digest) (int, bool) {
	for i, l := range im.Manifest.Layers {
		if l.Digest == dgst {
			return i, true
		}
	}
	return -1, false
}

var manifestAccept = []string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	MediaTypeDockerManifest, MediaTypeDockerManifestList,
}

// Image fetches the manifest named by dgst (an image index selects this
// client's platform) and its config, verifying every digest on the way.
func (c *Client) Image(ctx context.Context, repo name.Repository, dgst digest.Digest) (*Image, error) {
	for depth := 0; depth < 2; depth++ {
		b, ctype, err := c.fetchVerified(ctx, repo, "manifests/"+dgst.String(), dgst, manifestAccept, maxManifestSize)
		if err != nil {
			return nil, fmt.Errorf("fetch manifest %s@%s: %w", repo, dgst, err)
		}
		var probe struct {
			MediaType string          `json:"mediaType"`
			Manifests json.RawMessage `json:"manifests"`
			Layers    json.RawMessage `json:"layers"`
		}
		if err := json.Unmarshal(b, &probe); err != nil {
			return nil, fmt.Errorf("manifest %s@%s: %w: %w", repo, dgst, err, errdefs.ErrInvalidArgument)
		}
		mt := probe.MediaType
		if mt == "" {
			mt = ctype
		}
		switch {
		case mt == ocispec.MediaTypeImageIndex || mt == MediaTypeDockerManifestList || (probe.Manifests != nil && probe.Layers == nil):
			var idx ocispec.Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return nil, fmt.Errorf("index %s@%s: %w: %w", repo, dgst, err, errdefs.ErrInvalidArgument)
			}
			next, err := c.pickPlatform(idx)
			if err != nil {
				return nil, fmt.Errorf("index %s@%s: %w", repo, dgst, err)
			}
			dgst = next
		case mt == ocispec.MediaTypeImageManifest || mt == MediaTypeDockerManifest || probe.Layers != nil:
			var m ocispec.Manifest
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, fmt.Errorf("manifest %s@%s: %w: %w", repo, dgst, err, errdefs.ErrInvalidArgument)
			}
			cfgBytes, _, err := c.fetchVerified(ctx, repo, "blobs/"+m.Config.Digest.String(), m.Config.Digest, nil, c.opts.MaxConfigSize)
			if err != nil {
				return nil, fmt.Errorf("fetch config of %s@%s: %w", repo, dgst, err)
			}
			im := &Image{Repository: repo, ManifestDigest: dgst, Manifest: m}
			if err := json.Unmarshal(cfgBytes, &im.Config); err != nil {
				return nil, fmt.Errorf("config %s of %s@%s: %w: %w", m.Config.Digest, repo, dgst, err, errdefs.ErrInvalidArgument)
			}
			if n, d := len(im.Config.RootFS.DiffIDs), len(m.Layers); n != d {
				return nil, fmt.Errorf("manifest %s@%s has %d layers but its config lists %d diff IDs: %w", repo, dgst, d, n, errdefs.ErrInvalidArgument)
			}
			return im, nil
		default:
			return nil, fmt.Errorf("manifest %s@%s: unsupported media type %q: %w", repo, dgst, mt, errdefs.ErrNotImplemented)
		}
	}
	return nil, fmt.Errorf("manifest %s@%s: nested index: %w", repo, dgst, errdefs.ErrInvalidArgument)
}

func (c *Client) pickPlatform(idx ocispec.Index) (digest.Digest, error) {
	var best *ocispec.Descriptor
	for i := range idx.Manifests {
		d := &idx.Manifests[i]
		if d.Platform == nil || !c.opts.Platform.Match(*d.Platform) {
			continue
		}
		if best == nil || c.opts.Platform.Less(*d.Platform, *best.Platform) {
			best = d
		}
	}
	if best == nil {
		return "", fmt.Errorf("no manifest for this platform: %w", errdefs.ErrNotFound)
	}
	return best.Digest, nil
}

// OpenBlob returns a stream of the blob described by desc. The stream
// resumes with an HTTP Range request after a cut connection and retries with
// backoff. It does not verify the digest: the caller hashes what it reads.
func (c *Client) OpenBlob(ctx context.Context, repo name.Repository, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("invalid blob digest %q: %w: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d: %w", desc.Digest, desc.Size, errdefs.ErrInvalidArgument)
	}
	b := &blobReader{ctx: ctx, c: c, repo: repo, desc: desc, backoff: c.retry().Backoff()}
	if err := b.open(); err != nil {
		return nil, err
	}
	return b, nil
}

type blobReader struct {
	ctx     context.Context
	c       *Client
	repo    name.Repository
	desc    ocispec.Descriptor
	body    io.ReadCloser
	off     int64
	backoff *retry.Backoff // the waits between resumptions of the stream
	closed  bool
}

func (b *blobReader) path() string { return "blobs/" + b.desc.Digest.String() }

func (b *blobReader) open() error {
	hdr := http.Header{}
	if b.off > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", b.off))
	}
	resp, err := b.c.get(b.ctx, b.repo, b.path(), hdr, http.StatusOK, http.StatusPartialContent)
	if err != nil {
		return fmt.Errorf("fetch blob %s from %s: %w", b.desc.Digest, b.repo, err)
	}
	if b.off > 0 && resp.StatusCode == http.StatusOK {
		// The server ignored Range: skip what we already have.
		if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
			resp.Body.Close()
			return fmt.Errorf("fetch blob %s from %s: skip to offset %d: %w", b.desc.Digest, b.repo, b.off, err)
		}
	}
	b.body = resp.Body
	return nil
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("read from closed blob stream")
	}
	if b.off > b.desc.Size {
		return 0, &BlobSizeError{Digest: b.desc.Digest, Size: b.desc.Size}
	}
	// Never ask for more than one byte past the descriptor's size: a
	// registry that sends more is cut there, and nothing it sends beyond
	// is read (an endless stream costs size+1 bytes).
	if rest := b.desc.Size - b.off + 1; int64(len(p)) > rest {
		p = p[:rest]
	}
	for {
		n, err := b.body.Read(p)
		b.off += int64(n)
		if b.off > b.desc.Size {
			return n - 1, &BlobSizeError{Digest: b.desc.Digest, Size: b.desc.Size}
		}
		if err == nil || n > 0 {
			if err == io.EOF && b.desc.Size > 0 && b.off < b.desc.Size {
				err = nil // early EOF: resume on the next call
				b.body.Close()
				if rerr := b.resume(io.ErrUnexpectedEOF); rerr != nil {
					return n, rerr
				}
			}
			return n, err
		}
		if err == io.EOF {
			if b.desc.Size > 0 && b.off < b.desc.Size {
				err = io.ErrUnexpectedEOF
			} else {
				return 0, io.EOF
			}
		}
		b.body.Close()
		if rerr := b.resume(err); rerr != nil {
			return 0, rerr
		}
	}
}

// BlobSizeError reports a registry that sent more bytes for a blob than its
// descriptor's size.
type BlobSizeError struct {
	Digest digest.Digest
	Size   int64
}

func (e *BlobSizeError) Error() string {
	return fmt.Sprintf("blob %s: registry sent more than the descriptor's size of %d bytes", e.Digest, e.Size)
}

func (e *BlobSizeError) Unwrap() error { return errdefs.ErrFailedPrecondition }

func (b *blobReader) resume(cause error) error {
	if b.ctx.Err() != nil {
		return b.ctx.Err()
	}
	d, ok := b.backoff.Next()
	if !ok {
		return fmt.Errorf("fetch blob %s from %s: stream cut %d times, last at byte %d: %w", b.desc.Digest, b.repo, b.backoff.Retries()+1, b.off, cause)
	}
	log.G(b.ctx).WithError(cause).WithField("digest", b.desc.Digest).WithField("offset", b.off).Warn("blob stream cut, resuming with a range request")
	if err := retry.Sleep(b.ctx, d); err != nil {
		return err
	}
	return b.open()
}

func (b *blobReader) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	return b.body.Close()
}
