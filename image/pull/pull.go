// Package pull is the guest-pull pipeline: for one layer of a verified
// manifest it downloads the blob, decompresses it, unpacks it into a private
// staging directory and verifies the compressed digest and the diff ID.
// Layers after the requested one are fetched ahead, with bounded
// parallelism, so that containerd's sequential Prepare calls find them ready.
// Within a layer, the network read, the decryption, the decompression with
// its hashing and the unpacking run in goroutines of their own, a few
// bounded buffers apart, with the checks and errors of a serial pull.
//
// A staging directory is handed out only after every check passed; one that
// failed a check is removed before the error is returned. Nothing here
// commits snapshots: that is the snapshotter's job.
package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/docker/go-units"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/cocoon-cc/cocoon/internal/readahead"
	"github.com/cocoon-cc/cocoon/internal/ttlcache"
)

// Options configure a Puller.
type Options struct {
	Registry *registry.Client
	// StagingDir holds layers being unpacked; it must be on the same
	// filesystem as the snapshots so a staged layer is committed by rename.
	StagingDir string
	// MaxConcurrent bounds layers downloaded and unpacked at once (default 3).
	MaxConcurrent int
	// Unpack limits and permissions for layer contents.
	Unpack unpack.Options
	// StagedTTL is how long a layer fetched ahead waits to be taken before it
	// is discarded (default 10 minutes).
	StagedTTL time.Duration
	// ImageCacheTTL is how long verified manifests and configs, and policy
	// verdicts, are kept (default 10 minutes).
	ImageCacheTTL time.Duration
	// Policy, when set, must accept an image (reference, manifest digest)
	// before any of its layers is fetched.
	Policy  Policy
	Metrics *Metrics
	// Decrypt unwraps the keys of encrypted layers (KEKs from the KBS,
	// local JWE private keys).
	Decrypt decrypt.Options
}

// Policy is the image security policy (image/signature.Verifier). A refusal
// should wrap errdefs.ErrPermissionDenied: it is then cached as a verdict.
type Policy interface {
	Check(ctx context.Context, imageRef string, manifestDigest digest.Digest) error
}

// policyRefusal marks an error as the policy's, for the failure metric; its
// text is the policy's own (upstream's message).
type policyRefusal struct{ err error }

func (e *policyRefusal) Error() string { return e.err.Error() }
func (e *policyRefusal) Unwrap() error { return e.err }

// Request names one layer of one image.
type Request struct {
	ImageRef       string        // cri.image-ref
	ManifestDigest digest.Digest // cri.manifest-digest
	LayerDigest    digest.Digest // cri.layer-digest
	DiffID         digest.Digest // containerd.io/snapshot/diff-id (optional)
	// Exists reports whether a chain ID is already committed; layers whose
	// snapshot exists are not fetched ahead.
	Exists func(ctx context.Context, chainID digest.Digest) bool
}

// Staged is a verified, unpacked layer waiting to be committed.
type Staged struct {
	Dir     string // directory in overlayfs upperdir form
	Layer   ocispec.Descriptor
	DiffID  digest.Digest
	ChainID digest.Digest
	Stats   unpack.Stats
}

// Discard removes the staging directory (after a failed commit).
func (s *Staged) Discard() error { return os.RemoveAll(s.Dir) }

// Puller runs the pipeline. It is safe for concurrent use.
type Puller struct {
	opts Options
	sem  chan struct{}
	ctx  context.Context // lifetime of background jobs
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu   sync.Mutex
	jobs map[string]*job // repo@layerDigest -> job

	images *ttlcache.Cache[string, *registry.Image] // ref@manifestDigest -> image or policy refusal

	// serial runs every stage of a layer pull in the fetching goroutine
	// (tests and benchmarks compare it with the pipeline).
	serial bool
}

type job struct {
	cancel  context.CancelFunc // stops the fetch when nobody wants it
	done    chan struct{}
	created time.Time
	staged  *Staged
	err     error
}

// New returns a Puller; Close stops its background work.
func New(opts Options) (*Puller, error) {
	if opts.Registry == nil {
		return nil, errors.New("pull: no registry client")
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 3
	}
	if opts.StagedTTL <= 0 {
		opts.StagedTTL = 10 * time.Minute
	}
	if opts.ImageCacheTTL <= 0 {
		opts.ImageCacheTTL = 10 * time.Minute
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if err := os.MkdirAll(opts.StagingDir, 0o700); err != nil {
		return nil, fmt.Errorf("create staging directory: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Puller{
		opts: opts,
		sem:  make(chan struct{}, opts.MaxConcurrent),
		ctx:  ctx,
		stop: stop,
		jobs: map[string]*job{},
		images: ttlcache.New[string](ttlcache.Options[*registry.Image]{Lifetime: func(_ *registry.Image, err error) time.Duration {
			if err == nil || isVerdict(err) {
				return opts.ImageCacheTTL
			}
			return 0 // a failed fetch is retried by the next request
		}}),
	}
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// CleanStaging removes every leftover staging directory, e.g. after a crash.
// Call it before the first Layer call.
func (p *Puller) CleanStaging(ctx context.Context) (int, error) {
	entries, err := os.ReadDir(p.opts.StagingDir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(p.opts.StagingDir, e.Name())); err != nil {
			return 0, fmt.Errorf("remove stale staging directory %s: %w", e.Name(), err)
		}
	}
	return len(entries), nil
}

// Close cancels background work and removes layers nobody took.
func (p *Puller) Close() error {
	p.stop()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, j := range p.jobs {
		<-j.done
		if j.staged != nil {
			if err := j.staged.Discard(); err != nil {
				log.L.WithError(err).Warn("discard a staged layer on close")
			}
		}
		delete(p.jobs, k)
	}
	return nil
}

// Verify returns the verified manifest and config of (ref, manifest or
// index digest) once the image security policy accepted the image, as a
// pull would check it; nothing is fetched but the manifest and config
// (cached like a pull's).
func (p *Puller) Verify(ctx context.Context, ref string, dgst digest.Digest) (*registry.Image, error) {
	return p.image(ctx, ref, dgst)
}

// Layer returns the verified, unpacked layer req names. The caller owns the
// returned directory: it must rename it into place or Discard it.
func (p *Puller) Layer(ctx context.Context, req Request) (*Staged, error) {
	begin := time.Now()
	im, err := p.image(ctx, req.ImageRef, req.ManifestDigest)
	if err != nil {
		p.opts.Metrics.failure(reasonOf(err))
		return nil, err
	}
	repo := im.Repository
	idx, ok := im.LayerIndex(req.LayerDigest)
	if !ok {
		p.opts.Metrics.failure("layer_not_in_manifest")
		return nil, fmt.Errorf("layer %s is not part of manifest %s@%s: %w", req.LayerDigest, repo, req.ManifestDigest, errdefs.ErrInvalidArgument)
	}
	diffIDs := im.Config.RootFS.DiffIDs
	if req.DiffID != "" && req.DiffID != diffIDs[idx] {
		p.opts.Metrics.failure("diffid_label_mismatch")
		return nil, fmt.Errorf("layer %s: diff ID label %s does not match the image config's %s: %w", req.LayerDigest, req.DiffID, diffIDs[idx], errdefs.ErrInvalidArgument)
	}
	chainIDs := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))

	// Fetch this layer and those after it; containerd asks for them next.
	for i := idx; i < len(im.Manifest.Layers); i++ {
		if i > idx && req.Exists != nil && req.Exists(ctx, chainIDs[i]) {
			continue
		}
		p.start(repo, im.Manifest.Layers[i], diffIDs[i], chainIDs[i])
	}
	desc := im.Manifest.Layers[idx]
	j := p.take(repo, desc)
	if j == nil { // taken by a concurrent request for the same layer
		j = p.own(repo, desc, diffIDs[idx], chainIDs[idx])
	}
	st, err := p.wait(ctx, repo, desc, j)
	if err != nil && j.created.Before(begin) && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		// Fetched ahead and failed: the cause may have been transient, so
		// try once more now that this layer is wanted.
		log.G(ctx).WithError(err).WithField("layer", req.LayerDigest).Info("layer fetched ahead failed, fetching again")
		return p.wait(ctx, repo, desc, p.own(repo, desc, diffIDs[idx], chainIDs[idx]))
	}
	return st, err
}

// wait waits for a job this caller owns; on cancellation the job is put
// back for a later request (or the janitor).
func (p *Puller) wait(ctx context.Context, repo name.Repository, desc ocispec.Descriptor, j *job) (*Staged, error) {
	select {
	case <-j.done:
	case <-ctx.Done():
		p.putBack(repo, desc, j)
		return nil, ctx.Err()
	}
	if j.err != nil {
		return nil, j.err
	}
	return j.staged, nil
}

func jobKey(repo name.Repository, d digest.Digest) string { return repo.String() + "@" + d.String() }

// start schedules a job for a layer unless one is queued already; the job
// waits in p.jobs for the request that takes it.
func (p *Puller) start(repo name.Repository, desc ocispec.Descriptor, diffID, chainID digest.Digest) {
	key := jobKey(repo, desc.Digest)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.jobs[key]; ok {
		return
	}
	p.jobs[key] = p.launch(repo, desc, diffID, chainID)
}

// own starts a job that only the caller holds.
func (p *Puller) own(repo name.Repository, desc ocispec.Descriptor, diffID, chainID digest.Digest) *job {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.launch(repo, desc, diffID, chainID)
}

// launch runs a job in the background under the concurrency bound. Called
// with p.mu held (p.wg.Add must not race with Close's Wait).
func (p *Puller) launch(repo name.Repository, desc ocispec.Descriptor, diffID, chainID digest.Digest) *job {
	ctx, cancel := context.WithCancel(p.ctx)
	j := &job{cancel: cancel, done: make(chan struct{}), created: time.Now()}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(j.done)
		defer cancel()
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			j.err = ctx.Err()
			return
		}
		defer func() { <-p.sem }()
		j.staged, j.err = p.fetch(ctx, repo, desc, diffID, chainID)
	}()
	return j
}

func (p *Puller) take(repo name.Repository, desc ocispec.Descriptor) *job {
	key := jobKey(repo, desc.Digest)
	p.mu.Lock()
	defer p.mu.Unlock()
	j := p.jobs[key]
	delete(p.jobs, key)
	return j
}

func (p *Puller) putBack(repo name.Repository, desc ocispec.Descriptor, j *job) {
	key := jobKey(repo, desc.Digest)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.jobs[key]; !ok {
		p.jobs[key] = j
		return
	}
	// A newer job exists: nobody will take this one. Cancel it rather than
	// let it download and unpack the rest of the layer, then drop it.
	j.cancel()
	go func() {
		<-j.done
		if j.staged != nil {
			if err := j.staged.Discard(); err != nil {
				log.L.WithError(err).Warn("discard a superseded staged layer")
			}
		}
	}()
}

func (p *Puller) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.expire(time.Now())
	}
}

// expire discards finished jobs nobody took within StagedTTL and forgets
// cached images older than ImageCacheTTL.
func (p *Puller) expire(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, j := range p.jobs {
		select {
		case <-j.done:
		default:
			continue
		}
		if now.Sub(j.created) < p.opts.StagedTTL {
			continue
		}
		if j.staged != nil {
			log.L.WithField("layer", j.staged.Layer.Digest).Info("discarding a layer fetched ahead that no snapshot took")
			if err := j.staged.Discard(); err != nil {
				log.L.WithError(err).Warn("discard a staged layer")
			}
		}
		delete(p.jobs, k)
	}
	p.images.Sweep()
}

// image returns the verified manifest and config, fetched once per TTL from
// the first location that serves them (mirrors first), and the image
// policy's verdict for (reference, manifest digest), evaluated once and
// cached with it. Fetch failures are retried by the next request; a policy
// refusal is a verdict and stays until the entry expires.
func (p *Puller) image(ctx context.Context, ref string, dgst digest.Digest) (*registry.Image, error) {
	return p.images.Get(ctx, ref+"@"+dgst.String(), func(ctx context.Context) (*registry.Image, error) {
		return p.resolve(ctx, ref, dgst)
	})
}

// isVerdict reports whether err is the image policy's refusal (cached like
// an accepted image), not a failure to evaluate it.
func isVerdict(err error) bool {
	var pr *policyRefusal
	return errors.As(err, &pr) && errdefs.IsPermissionDenied(pr.err)
}

func (p *Puller) resolve(ctx context.Context, ref string, dgst digest.Digest) (*registry.Image, error) {
	repos, err := p.opts.Registry.Repositories(ref)
	if err != nil {
		return nil, err
	}
	im, err := p.opts.Registry.ImageFrom(ctx, repos, dgst)
	if err != nil {
		return nil, err
	}
	p.opts.Metrics.image()
	log.G(ctx).WithFields(log.Fields{"image": im.Repository.String(), "manifest": im.ManifestDigest, "layers": len(im.Manifest.Layers)}).Info("manifest and config verified")
	if p.opts.Policy != nil {
		if err := p.opts.Policy.Check(ctx, ref, dgst); err != nil {
			log.G(ctx).WithError(err).WithField("image", ref).Warn("image refused by the image security policy; nothing will be fetched or committed")
			return nil, &policyRefusal{err}
		}
		log.G(ctx).WithFields(log.Fields{"image": ref, "manifest": dgst}).Info("image accepted by the image security policy")
	}
	return im, nil
}

// fetch downloads, unpacks and verifies one layer into a new staging dir.
func (p *Puller) fetch(ctx context.Context, repo name.Repository, desc ocispec.Descriptor, diffID, chainID digest.Digest) (_ *Staged, retErr error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", desc.Digest).WithField("image", repo.String()))
	start := time.Now()
	m := p.opts.Metrics
	m.started()
	defer m.finished()
	defer func() {
		if retErr != nil {
			m.failure(reasonOf(retErr))
			log.G(ctx).WithError(retErr).Error("layer pull failed; nothing committed")
		}
	}()

	dir, err := os.MkdirTemp(p.opts.StagingDir, "layer-")
	if err != nil {
		return nil, fmt.Errorf("create staging directory: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}

	// The stages below run in goroutines of their own (see stages), so
	// that hashing, decryption and decompression use other cores than
	// the unpacking. Cancelling blobCtx unblocks the network read when
	// the pull ends early.
	blobCtx, cancelBlob := context.WithCancel(ctx)
	blob, err := p.opts.Registry.OpenBlob(blobCtx, repo, desc)
	if err != nil {
		cancelBlob()
		return nil, err
	}
	st := &stages{serial: p.serial, cancel: cancelBlob, blob: blob}
	defer st.close()
	progress := &progressReader{r: blob, ctx: ctx, total: desc.Size, start: start, m: m}
	src, _ := st.add(progress) // network read
	mediaType, blobDigest := desc.MediaType, desc.Digest
	var dr *decrypt.Reader
	if decrypt.IsEncrypted(desc.MediaType) {
		// The layer key is unwrapped inside the TEE (KEK from the KBS at the
		// annotation's kid, or a local JWE private key). The ciphertext is
		// checked against desc (digest, size) and the HMAC keyed with the
		// layer key; the decrypted stream is authenticated by those (see
		// layer.Reader.AuthenticateWith) and its diff ID checked like any
		// layer's.
		if dr, err = decrypt.NewReader(ctx, src, desc, p.opts.Decrypt); err != nil {
			return nil, fmt.Errorf("decrypt layer %s: %w", desc.Digest, err)
		}
		src, _ = st.add(dr) // ciphertext digest, HMAC, AES-CTR
		mediaType, blobDigest = decrypt.PlainMediaType(desc.MediaType), dr.PlainDigest()
	}
	lr, err := layer.NewReader(src, mediaType, blobDigest, diffID)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	st.closeAfter(lr)
	if dr != nil {
		// lr.Verify calls dr.Verify once it read the decrypted stream to its
		// end (the decrypting stage has then handed over its last bytes and
		// no longer touches dr).
		if err := lr.AuthenticateWith(dr); err != nil {
			return nil, err
		}
	}
	lr.SetMaxUncompressed(maxTarSize(p.opts.Unpack))
	tarStream, decompressed := st.add(lr) // compressed digest, decompression, diff ID
	stats, err := unpack.Extract(ctx, tarStream, dir, p.opts.Unpack)
	// Before lr is verified or drained directly, its stage is stopped
	// (what it read ahead beyond Extract was hashed already). A pull that
	// ends here leaves that to st.close, which cancels the blob request
	// first, so that a stalled registry holds nothing up.
	if err != nil {
		var entryErr *unpack.EntryError
		if !errors.As(err, &entryErr) && ctx.Err() == nil {
			// A stream that would not decompress or parse is most often a
			// blob that is not the one its digest names: say so if it is.
			stop(decompressed)
			if berr := lr.CheckBlob(); berr != nil {
				return nil, fmt.Errorf("verify layer %s: %w (unpacking had failed: %v)", desc.Digest, berr, err)
			}
		}
		return nil, fmt.Errorf("unpack layer %s: %w", desc.Digest, err)
	}
	stop(decompressed)
	if err := lr.Verify(); err != nil { // for an encrypted layer: HMAC, ciphertext digest and size first
		if dr != nil {
			return nil, fmt.Errorf("verify encrypted layer %s: %w", desc.Digest, err)
		}
		return nil, fmt.Errorf("verify layer %s: %w", desc.Digest, err)
	}
	took := time.Since(start)
	m.done(took)
	log.G(ctx).WithFields(log.Fields{
		"bytes":        lr.CompressedBytes(),
		"uncompressed": lr.UncompressedBytes(),
		"entries":      stats.Entries,
		"duration":     took.Round(time.Millisecond).String(),
		"rate":         rate(lr.CompressedBytes(), took),
		"diff_id":      diffID,
		"verified":     "compressed digest and diff ID match",
	}).Info("layer pulled and verified")
	return &Staged{Dir: dir, Layer: desc, DiffID: diffID, ChainID: chainID, Stats: stats}, nil
}

// Buffers between two stages of a layer pull: each stage runs at most
// stageBuffers*stageBufferSize bytes ahead of the next one.
const (
	stageBuffers    = 4
	stageBufferSize = 128 << 10
)

// stages runs the readers of one layer pull (network read; decryption;
// decompression and hashing) each in a goroutine of its own, a few buffers
// ahead of the next, so that a layer pull uses more than one core. Each
// stage hands over exactly the bytes and errors its reader produced, in
// order, so the checks and error messages are those of the readers run in
// one goroutine. close stops them all (cancelling the blob request first
// so that no stage waits for the network), and only then closes what the
// stages read.
type stages struct {
	serial  bool
	cancel  context.CancelFunc
	blob    io.Closer
	running []*readahead.Reader
	closers []io.Closer
}

// add starts a stage reading r and returns what the next stage reads; the
// second result is nil when the stages run serially.
func (s *stages) add(r io.Reader) (io.Reader, *readahead.Reader) {
	if s.serial {
		return r, nil
	}
	ar := readahead.New(r, readahead.Options{Size: stageBufferSize, Count: stageBuffers})
	s.running = append(s.running, ar)
	return ar, ar
}

// closeAfter closes c once every stage has stopped.
func (s *stages) closeAfter(c io.Closer) { s.closers = append(s.closers, c) }

func (s *stages) close() {
	s.cancel()
	// Upstream first: a stage blocked reading the one before it sees it
	// stopped and returns.
	for _, ar := range s.running {
		ar.Stop()
	}
	for _, c := range s.closers {
		c.Close()
	}
	s.blob.Close()
}

// stop stops a stage (nil when the stages run serially) so that its reader
// can be used directly.
func stop(ar *readahead.Reader) {
	if ar != nil {
		ar.Stop()
	}
}

// progressReader counts bytes and logs progress every few seconds.
type progressReader struct {
	r       io.Reader
	ctx     context.Context
	total   int64
	n       int64
	start   time.Time
	lastLog time.Time
	m       *Metrics
}

const progressEvery = 5 * time.Second

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	pr.n += int64(n)
	pr.m.bytes(n)
	if now := time.Now(); now.Sub(pr.lastLog) >= progressEvery && now.Sub(pr.start) >= progressEvery {
		pr.lastLog = now
		log.G(pr.ctx).WithFields(log.Fields{
			"bytes": pr.n,
			"total": pr.total,
			"rate":  rate(pr.n, now.Sub(pr.start)),
		}).Info("layer download in progress")
	}
	return n, err
}

func rate(n int64, d time.Duration) string {
	if d <= 0 {
		return "n/a"
	}
	return units.HumanSize(float64(n)/d.Seconds()) + "/s"
}

// reasonOf classifies an error for the failure metric.
func reasonOf(err error) string {
	var lm *layer.DigestMismatchError
	var rm *registry.DigestMismatchError
	var ee *unpack.EntryError
	var pr *policyRefusal
	switch {
	case errors.As(err, &pr):
		return "policy_rejected"
	case errors.Is(err, decrypt.ErrHMACMismatch):
		return "hmac_mismatch"
	case errors.Is(err, decrypt.ErrWrongKey):
		return "wrong_key"
	case errors.As(err, &lm):
		if lm.Kind == "diff-id" {
			return "diffid_mismatch"
		}
		return "digest_mismatch"
	case errors.As(err, &rm):
		return "manifest_digest_mismatch"
	case errors.Is(err, unpack.ErrLimitExceeded), errors.Is(err, layer.ErrTooLarge):
		return "limit_exceeded"
	case errors.As(err, &ee):
		return "unsafe_entry"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	case errors.Is(err, errdefs.ErrNotFound):
		return "not_found"
	case errors.Is(err, errdefs.ErrPermissionDenied):
		return "unauthorized"
	case errors.Is(err, errdefs.ErrNotImplemented):
		return "unsupported"
	}
	return "fetch"
}

// tarOverheadPerEntry is what one tar entry adds to the stream besides its
// file data: a header block, padding of the data to a block, and room for
// a PAX or GNU long-name header.
const tarOverheadPerEntry = 4 << 10

// maxTarSize bounds a layer's decompressed stream by the unpack limits: the
// file data they allow plus the tar overhead of the entries they allow, and
// 1 MiB for the end-of-archive blocks and record padding.
func maxTarSize(o unpack.Options) int64 {
	total, entries := o.MaxTotalSize, int64(o.MaxEntries)
	if total <= 0 {
		total = unpack.DefaultMaxTotalSize
	}
	if entries <= 0 {
		entries = unpack.DefaultMaxEntries
	}
	return total + entries*tarOverheadPerEntry + 1<<20
}
