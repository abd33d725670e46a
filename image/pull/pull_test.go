package pull

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

func newPuller(t *testing.T, reg *regtest.Registry) (*Puller, string) {
	t.Helper()
	staging := filepath.Join(t.TempDir(), "staging")
	p, err := New(Options{
		Registry:   registry.New(registry.Options{Insecure: []string{reg.Host}, Retries: 1, RetryBackoff: time.Millisecond}),
		StagingDir: staging,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, staging
}

func requests(t testing.TB, ref string, img v1.Image) []Request {
	t.Helper()
	md, _ := img.Digest()
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	var reqs []Request
	for i, l := range m.Layers {
		reqs = append(reqs, Request{
			ImageRef:       ref,
			ManifestDigest: digest.Digest(md.String()),
			LayerDigest:    digest.Digest(l.Digest.String()),
			DiffID:         digest.Digest(cfg.RootFS.DiffIDs[i].String()),
		})
	}
	return reqs
}

func layers(t *testing.T, n int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		out = append(out, regtest.Tar(t, regtest.Entry{Name: "f" + string(rune('a'+i)), Body: strings.Repeat("x", 1000*(i+1))}))
	}
	return out
}

func entries(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	e, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestFetchesFollowingLayersAhead(t *testing.T) {
	reg := regtest.Start(t)
	p, staging := newPuller(t, reg)
	ref, img := reg.Push(t, "a/ahead", compression.GZip, true, layers(t, 4)...)
	reqs := requests(t, ref, img)

	st, err := p.Layer(context.Background(), reqs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer discard(t, st)
	// The three later layers are fetched without being asked for (blob GETs
	// count the config too).
	deadline := time.Now().Add(30 * time.Second)
	for reg.Gets.Load() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := reg.Gets.Load(); got != 5 {
		t.Fatalf("blob GETs after the first layer = %d, want 5 (config + 4 layers)", got)
	}
	for i, r := range reqs[1:] {
		st, err := p.Layer(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		want := "f" + string(rune('a'+i+1))
		if _, err := os.Stat(filepath.Join(st.Dir, want)); err != nil {
			t.Errorf("layer %d: %v", i+1, err)
		}
		discard(t, st)
	}
	if got := reg.Gets.Load(); got != 5 {
		t.Errorf("blob GETs = %d, want the config and each layer fetched once", got)
	}
	if got := testutil.ToFloat64(p.opts.Metrics.layers); got != 4 {
		t.Errorf("layers metric = %v", got)
	}
	if e := entries(t, staging); len(e) != 1 { // only the first, still held by the deferred Discard
		t.Errorf("staging = %v", e)
	}
}

func TestSkipsCommittedLayersWhenFetchingAhead(t *testing.T) {
	reg := regtest.Start(t)
	p, _ := newPuller(t, reg)
	ref, img := reg.Push(t, "a/skip", compression.GZip, true, layers(t, 3)...)
	reqs := requests(t, ref, img)
	reqs[0].Exists = func(context.Context, digest.Digest) bool { return true } // every later layer is committed
	st, err := p.Layer(context.Background(), reqs[0])
	if err != nil {
		t.Fatal(err)
	}
	discard(t, st)
	p.mu.Lock()
	queued := len(p.jobs)
	p.mu.Unlock()
	if queued != 0 {
		t.Errorf("%d layers queued although all later ones are committed", queued)
	}
	if got := reg.Gets.Load(); got != 2 {
		t.Errorf("blob GETs = %d, want 2 (config and the first layer)", got)
	}
}

func TestUntakenLayersExpire(t *testing.T) {
	reg := regtest.Start(t)
	p, staging := newPuller(t, reg)
	ref, img := reg.Push(t, "a/expire", compression.GZip, true, layers(t, 3)...)
	reqs := requests(t, ref, img)
	st, err := p.Layer(context.Background(), reqs[0])
	if err != nil {
		t.Fatal(err)
	}
	discard(t, st)
	// Wait for the fetched-ahead jobs to finish.
	p.mu.Lock()
	var jobs []*job
	for _, j := range p.jobs {
		jobs = append(jobs, j)
	}
	p.mu.Unlock()
	for _, j := range jobs {
		<-j.done
	}
	if e := entries(t, staging); len(e) != 2 {
		t.Fatalf("staging holds %d layers, want 2 fetched ahead", len(e))
	}
	p.expire(time.Now().Add(p.opts.StagedTTL - time.Second))
	if e := entries(t, staging); len(e) != 2 {
		t.Fatalf("expired too early: %d left", len(e))
	}
	p.expire(time.Now().Add(p.opts.StagedTTL + time.Second))
	if e := entries(t, staging); len(e) != 0 {
		t.Errorf("staging after expiry = %v", e)
	}
}

func TestRefusesLayerNotInManifest(t *testing.T) {
	reg := regtest.Start(t)
	p, staging := newPuller(t, reg)
	ref, img := reg.Push(t, "a/member", compression.GZip, true, layers(t, 1)...)
	_, other := reg.Push(t, "a/other", compression.GZip, true, layers(t, 2)[1:]...)
	req := requests(t, ref, img)[0]
	req.LayerDigest = requests(t, ref, other)[0].LayerDigest
	_, err := p.Layer(context.Background(), req)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "is not part of manifest") {
		t.Fatalf("error = %v", err)
	}
	if e := entries(t, staging); len(e) != 0 {
		t.Errorf("staging = %v", e)
	}
	if got := testutil.ToFloat64(p.opts.Metrics.failures.WithLabelValues("layer_not_in_manifest")); got != 1 {
		t.Errorf("failure metric = %v", got)
	}
}

func TestRefusesDiffIDLabelMismatch(t *testing.T) {
	reg := regtest.Start(t)
	p, _ := newPuller(t, reg)
	ref, img := reg.Push(t, "a/diffid", compression.GZip, true, layers(t, 1)...)
	req := requests(t, ref, img)[0]
	req.DiffID = digest.FromString("something else")
	_, err := p.Layer(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "does not match the image config") {
		t.Fatalf("error = %v", err)
	}
}

func TestCanceledWaitLeavesJobForLater(t *testing.T) {
	reg := regtest.Start(t)
	p, _ := newPuller(t, reg)
	ref, img := reg.Push(t, "a/cancel", compression.GZip, true, layers(t, 1)...)
	req := requests(t, ref, img)[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Layer(ctx, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v", err)
	}
	st, err := p.Layer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	discard(t, st)
}

func TestMetricsRegister(t *testing.T) {
	m := NewMetrics()
	r := prometheus.NewRegistry()
	if err := m.Register(r); err != nil {
		t.Fatal(err)
	}
	m.failure("digest_mismatch")
	n, err := testutil.GatherAndCount(r, "cocoon_pull_failures_total")
	if err != nil || n != 1 {
		t.Fatalf("count = %d, %v", n, err)
	}
}

// rejectingPolicy is a test double of the Policy seam.
type rejectingPolicy struct {
	calls  int
	reject bool
}

func (r *rejectingPolicy) Check(_ context.Context, ref string, d digest.Digest) error {
	r.calls++
	if r.reject {
		return fmt.Errorf("Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule: %w", errdefs.ErrPermissionDenied)
	}
	return nil
}

func TestPolicyGateBeforeAnyLayer(t *testing.T) {
	for _, reject := range []bool{true, false} {
		t.Run(fmt.Sprint("reject=", reject), func(t *testing.T) {
			reg := regtest.Start(t)
			pol := &rejectingPolicy{reject: reject}
			staging := filepath.Join(t.TempDir(), "staging")
			p, err := New(Options{
				Registry:   registry.New(registry.Options{Insecure: []string{reg.Host}, Retries: 1, RetryBackoff: time.Millisecond}),
				StagingDir: staging,
				Policy:     pol,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ref, img := reg.Push(t, "a/policy", compression.GZip, true, layers(t, 2)...)
			reqs := requests(t, ref, img)
			for i := 0; i < 2; i++ {
				st, err := p.Layer(context.Background(), reqs[i])
				if reject {
					if err == nil || err.Error() != "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule: permission denied" {
						t.Fatalf("error = %v", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				discard(t, st)
			}
			if pol.calls != 1 {
				t.Errorf("policy evaluated %d times, want once per (reference, manifest digest)", pol.calls)
			}
			if reject {
				if got := reg.Gets.Load(); got != 1 {
					t.Errorf("blob GETs = %d, want only the config", got)
				}
				if e := entries(t, staging); len(e) != 0 {
					t.Errorf("staging = %v", e)
				}
				if got := testutil.ToFloat64(p.opts.Metrics.failures.WithLabelValues("policy_rejected")); got != 2 {
					t.Errorf("policy_rejected metric = %v", got)
				}
			}
		})
	}
}

// Two requests for the same layer at once (two images sharing it) each get
// their own verified staging directory.
func TestConcurrentRequestsForOneLayer(t *testing.T) {
	reg := regtest.Start(t)
	p, _ := newPuller(t, reg)
	ref, img := reg.Push(t, "a/shared", compression.GZip, true, layers(t, 2)...)
	req := requests(t, ref, img)[0]
	const n = 4
	type result struct {
		st  *Staged
		err error
	}
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			st, err := p.Layer(context.Background(), req)
			results <- result{st, err}
		}()
	}
	dirs := map[string]bool{}
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if dirs[r.st.Dir] {
			t.Errorf("staging directory %s handed out twice", r.st.Dir)
		}
		dirs[r.st.Dir] = true
		if _, err := os.Stat(filepath.Join(r.st.Dir, "fa")); err != nil {
			t.Errorf("staged layer incomplete: %v", err)
		}
		discard(t, r.st)
	}
}

// A registry that follows a layer blob with endless gzip members is cut at
// the descriptor size: the layer fails with a size error, nothing is left
// in staging, and the same layer pulls once the registry behaves.
func TestEndlessBlobIsCut(t *testing.T) {
	reg := regtest.Start(t)
	p, staging := newPuller(t, reg)
	ref, img := reg.Push(t, "a/endless", compression.GZip, true, layers(t, 1)...)
	req := requests(t, ref, img)[0]
	m, _ := img.Manifest()
	size := m.Layers[0].Size
	reg.Endless.Store(req.LayerDigest.Encoded())
	_, err := p.Layer(context.Background(), req)
	var se *registry.BlobSizeError
	if !errors.As(err, &se) {
		t.Fatalf("error = %v, want a blob size error", err)
	}
	t.Logf("descriptor size %d bytes; the hostile registry wrote %d bytes before the cut", size, reg.Sent.Load())
	if e := entries(t, staging); len(e) != 0 {
		t.Errorf("staging after the cut = %v", e)
	}
	reg.Endless.Store("")
	st, err := p.Layer(context.Background(), req)
	if err != nil {
		t.Fatalf("pull after the registry behaves: %v", err)
	}
	discard(t, st)
}

// A layer whose decompressed stream goes on after the tar (a gzip bomb in
// the blob, digests intact) fails at the unpack limits instead of being
// drained.
func TestDecompressedStreamBoundedByUnpackLimits(t *testing.T) {
	reg := regtest.Start(t)
	opts := unpack.Options{MaxTotalSize: 1 << 20, MaxEntries: 4}
	p, err := New(Options{
		Registry:   registry.New(registry.Options{Insecure: []string{reg.Host}, Retries: 1, RetryBackoff: time.Millisecond}),
		StagingDir: filepath.Join(t.TempDir(), "staging"),
		Unpack:     opts,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tarball := regtest.Tar(t, regtest.Entry{Name: "f", Body: "small"})
	bomb := append(tarball, make([]byte, 64<<20)...)
	ref, img := reg.Push(t, "a/bomb", compression.GZip, true, bomb)
	_, err = p.Layer(context.Background(), requests(t, ref, img)[0])
	if !errors.Is(err, layer.ErrTooLarge) {
		t.Fatalf("error = %v, want layer.ErrTooLarge", err)
	}
	if max := maxTarSize(opts); max >= int64(len(bomb)) {
		t.Fatalf("test layer (%d bytes) is within the bound %d", len(bomb), max)
	}
}

// A fetch nobody waits for any more (its requester gave up and a newer job
// for the same layer exists) is cancelled: its registry request ends
// without the layer being sent.
func TestAbandonedDuplicateJobIsCancelled(t *testing.T) {
	reg := regtest.Start(t)
	p, _ := newPuller(t, reg)
	ref, img := reg.Push(t, "a/abandon", compression.GZip, true, layers(t, 1)...)
	req := requests(t, ref, img)[0]

	// Every GET of the layer blocks until its client goes away or the test
	// releases it; each reports its outcome.
	release := make(chan struct{})
	arrived := make(chan struct{}, 8)
	gone := make(chan struct{}, 8)
	hook := func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, req.LayerDigest.String()) {
			return false
		}
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			gone <- struct{}{}
			return true
		case <-release:
			return false
		}
	}
	reg.Hook.Store(&hook)

	// A and B want the layer at the same time: A takes the fetched job, B
	// starts its own. A gives up (its job is kept for later), then B gives
	// up too: B's job is a duplicate nobody can take.
	ctxA, cancelA := context.WithCancel(context.Background())
	ctxB, cancelB := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { _, err := p.Layer(ctxA, req); errA <- err }()
	<-arrived
	errB := make(chan error, 1)
	go func() { _, err := p.Layer(ctxB, req); errB <- err }()
	<-arrived
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("A: %v", err)
	}
	cancelB()
	if err := <-errB; !errors.Is(err, context.Canceled) {
		t.Fatalf("B: %v", err)
	}
	// B's fetch is cancelled: its blob request ends with the layer unsent.
	// (Before the fix it stayed open until the registry answered, and the
	// layer was downloaded and unpacked for nobody.)
	safety := time.NewTimer(60 * time.Second)
	defer safety.Stop()
	select {
	case <-gone:
	case <-safety.C:
		t.Fatal("the abandoned fetch was not cancelled")
	}
	// A's job stays for a later request.
	close(release)
	st, err := p.Layer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	discard(t, st)
}

// discard removes a staged layer, failing t if it cannot.
func discard(t testing.TB, st *Staged) {
	t.Helper()
	if err := st.Discard(); err != nil {
		t.Error(err)
	}
}

func TestRate(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		d    time.Duration
		want string
	}{
		{12_345_678, time.Second, "12.35MB/s"},
		{3_000_000, 2 * time.Second, "1.5MB/s"},
		{1, 0, "n/a"},
	} {
		if got := rate(tc.n, tc.d); got != tc.want {
			t.Errorf("rate(%d, %v) = %q, want %q", tc.n, tc.d, got, tc.want)
		}
	}
}
