// Command lazybench measures lazy pull against full pull in one run, with
// every ratio taken against a baseline measured in the same run. It builds
// an image of -size bytes (busybox plus -layers layers of incompressible
// random data; the last also holds a -hot file the entrypoint reads),
// converts it with `cocoonctl convert --estargz` plain and --encrypt'ed
// (the hot file prioritized; key from a development KBS), and reports:
//
//   - time to first container output (from `ctr image pull` to the
//     container's first stdout line) for full and lazy pull, plain and
//     encrypted, over loopback and over a token-bucket link of -rate;
//   - the layer bytes the registry served before that first line (blobs
//     are served, and counted, by a small server reading the registry's
//     disk store: see blobServer);
//   - sequential and random read throughput of files of a completed lazy
//     layer against the same files unpacked by a full pull, read from the
//     host through the running container's overlay root
//     (/proc/PID/root);
//   - cocoond's peak RSS (VmHWM) and, when the lazy FUSE server is a
//     separate process, its peak RSS, for -size and a smaller -mem-size
//     image, to show whether memory grows with the image.
//
// Full pull means the same eStargz images pulled with [lazy] off. Every run
// gets a fresh cocoond and containerd. It prints a markdown table with the
// goals of issue 12 next to the ratios and asserts none of them. It needs
// root and the binaries of `make build` and `make e2e-tools`.
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/docker/go-units"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

type options struct {
	size, memSize, hot int64
	chunkSize          int64
	layers, runs       int
	rate               float64
	rateText           string
	out                string
}

const (
	kid         = "kbs:///default/bench/lazy-kek"
	snapshotter = "cocoon"
	// hotPath is what the entrypoint reads before printing its first line.
	hotPath = "/data/hot.bin"
	ready   = "ready"
)

func main() {
	var o options
	size := flag.String("size", "1GiB", "image payload size (random data spread over -layers layers)")
	memSize := flag.String("mem-size", "256MiB", "second, smaller image size for the memory comparison (0: skip)")
	hot := flag.String("hot", "4MiB", "size of the file the entrypoint reads before its first output")
	chunk := flag.String("chunk-size", "0", "eStargz chunk size passed to cocoonctl convert (0: its default, estargz's 4 MiB)")
	flag.IntVar(&o.layers, "layers", 4, "random-data layers (on top of busybox)")
	flag.IntVar(&o.runs, "runs", 3, "first-output runs per image, link and mode (modes alternate; the median is reported)")
	flag.StringVar(&o.rateText, "rate", "100MB/s", "bandwidth of the limited link (decimal units)")
	quick := flag.Bool("quick", false, "smoke run: -size 128MiB -mem-size 32MiB -hot 1MiB")
	flag.StringVar(&o.out, "out", "", "markdown output (default $COCOON_BIN/bench-lazy.md)")
	flag.Parse()
	if *quick {
		*size, *memSize, *hot = "128MiB", "32MiB", "1MiB"
	}
	var err error
	if o.size, err = units.RAMInBytes(*size); err == nil {
		if o.memSize, err = units.RAMInBytes(*memSize); err == nil {
			if o.hot, err = units.RAMInBytes(*hot); err == nil {
				o.chunkSize, err = units.RAMInBytes(*chunk)
			}
		}
	}
	if err == nil {
		var r int64
		r, err = units.FromHumanSize(strings.TrimSuffix(o.rateText, "/s"))
		o.rate = float64(r)
	}
	if err != nil || o.layers < 1 || o.runs < 1 || o.rate <= 0 || o.hot <= 0 || o.chunkSize < 0 || o.size < int64(o.layers)*(o.hot+1<<20) || o.memSize < 0 {
		fmt.Fprintf(os.Stderr, "lazybench: bad flags (%v): -size must leave each layer at least -hot + 1 MiB, -rate and -layers positive\n", err)
		os.Exit(2)
	}

	var rep string
	harness.RunScript("lazybench", false, func(ctx context.Context, s *harness.Script) (err error) {
		rep, err = run(ctx, s, o)
		return err
	})
	fmt.Print(rep)
}

// bench is the shared part of a run: registry, counting blob server, limited
// link and KBS, in the parent work directory.
type bench struct {
	o     options
	s     *harness.Script
	env   *harness.Env
	reg   *harness.Registry
	blobs *blobServer
	link  *limitedLink
	kbs   *harness.KBS
}

// imageSet is one image size, converted plain and encrypted.
type imageSet struct {
	size       int64
	plain, enc *harness.Image
}

func (set *imageSet) image(encrypted bool) *harness.Image {
	if encrypted {
		return set.enc
	}
	return set.plain
}

// mode is a way of pulling: full or lazy, plain or encrypted image.
type mode struct {
	lazy, encrypted bool
}

func (m mode) String() string {
	s := "full"
	if m.lazy {
		s = "lazy"
	}
	if m.encrypted {
		return s + "-encrypted"
	}
	return s + "-plain"
}

var modes = []mode{{false, false}, {false, true}, {true, false}, {true, true}}

// firstOutput is one measured pull-and-run.
type firstOutput struct {
	link, mode string
	size       int64
	pull       time.Duration // ctr image pull
	first      time.Duration // pull start to the first stdout line
	fetched    int64         // layer bytes the registry served before it
	mem
}

// medianRun returns the run with the median first-output time (the lower
// one of an even count), with the highest peak RSS of all the runs.
func medianRun(rs []firstOutput) firstOutput {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b firstOutput) int { return cmp.Compare(a.first, b.first) })
	r := rs[(len(rs)-1)/2]
	for _, o := range rs {
		r.cocoond = max(r.cocoond, o.cocoond)
		if o.serverPID != 0 && o.server > r.server {
			r.server, r.serverPID = o.server, o.serverPID
		}
	}
	return r
}

// mem is the peak RSS of cocoond and of the lazy FUSE server (when it is
// a separate process: serverPID != 0).
type mem struct {
	cocoond, server int64
	serverPID       int
}

// readResult is one read-throughput measurement.
type readResult struct {
	mode                  string
	size                  int64
	seqFirst, seqAgain    float64 // MB/s
	random                float64 // MB/s of 4 KiB preads
	seqBytes, randomBytes int64
	completeAfter         time.Duration // lazy: pull start to every blob verified
	completeMem           mem           // lazy: peak RSS when every blob was verified, before the reads
	mem
}

func run(ctx context.Context, s *harness.Script, o options) (string, error) {
	env, err := harness.New(s)
	if err != nil {
		return "", err
	}
	if o.out == "" {
		o.out = filepath.Join(env.Bin, "bench-lazy.md")
	}
	b := &bench{o: o, s: s, env: env}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return "", err
	}
	if b.kbs, err = env.StartKBS(ctx, harness.KBSOptions{Policy: harness.AllowAllPolicy, Resources: map[string][]byte{strings.TrimPrefix(kid, "kbs:///"): kek}}); err != nil {
		return "", err
	}
	kekFile := env.Path("kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		return "", err
	}
	if b.reg, err = env.StartRegistry(ctx); err != nil {
		return "", err
	}
	if b.blobs, err = startBlobServer(s, b.reg); err != nil {
		return "", err
	}
	if b.link, err = startLimitedLink(s, b.blobs.Host, o.rate); err != nil {
		return "", err
	}
	sizes := []int64{o.size}
	if o.memSize > 0 && o.memSize != o.size {
		sizes = append(sizes, o.memSize)
	}
	var sets []*imageSet
	for _, size := range sizes {
		set, err := b.buildImages(ctx, size, kekFile)
		if err != nil {
			return "", err
		}
		sets = append(sets, set)
	}

	var firsts []firstOutput
	var reads []readResult
	for i, set := range sets {
		links := []string{"loopback", "limited"}
		if i > 0 {
			links = links[:1] // the memory comparison needs no second link
		}
		for _, link := range links {
			all := make([][]firstOutput, len(modes))
			for round := 1; round <= o.runs; round++ {
				for j, m := range modes {
					r, err := b.firstOutput(ctx, set, link, m)
					if err != nil {
						return "", fmt.Errorf("first output, %s, %s, %s: %w", units.BytesSize(float64(set.size)), link, m, err)
					}
					s.Logf("%s %s %s run %d: pull %.2f s, first output %.2f s, %s fetched, cocoond VmHWM %s", units.BytesSize(float64(set.size)),
						link, m, round, r.pull.Seconds(), r.first.Seconds(), units.BytesSize(float64(r.fetched)), units.BytesSize(float64(r.cocoond)))
					all[j] = append(all[j], r)
				}
			}
			for _, rs := range all {
				firsts = append(firsts, medianRun(rs))
			}
		}
		for _, m := range []mode{{false, false}, {true, false}, {true, true}} {
			r, err := b.reads(ctx, set, m)
			if err != nil {
				return "", fmt.Errorf("reads, %s, %s: %w", units.BytesSize(float64(set.size)), m, err)
			}
			s.Logf("%s %s reads: sequential %.0f MB/s (again %.0f), random 4 KiB %.0f MB/s", units.BytesSize(float64(set.size)), m, r.seqFirst, r.seqAgain, r.random)
			reads = append(reads, r)
		}
	}
	rep := b.report(sets, firsts, reads)
	if err := os.WriteFile(o.out, []byte(rep), 0o644); err != nil {
		return "", err
	}
	s.Logf("wrote %s", o.out)
	return rep, nil
}

// buildImages writes busybox plus o.layers layers of random data (the
// last with the hot file) totalling size, pushes them, and converts the
// image to eStargz, plain and encrypted, the hot file prioritized.
func (b *bench) buildImages(ctx context.Context, size int64, kekFile string) (*imageSet, error) {
	tag := strings.ToLower(strings.ReplaceAll(units.BytesSize(float64(size)), ".", "_"))
	dir := b.env.Path("layers-" + tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	bb, err := harness.BusyboxLayer()
	if err != nil {
		return nil, err
	}
	files := []string{filepath.Join(dir, "base.tar.gz")}
	if err := bb.WriteFile(files[0], harness.Gzip); err != nil {
		return nil, err
	}
	per := size / int64(b.o.layers)
	for i := 0; i < b.o.layers; i++ {
		seed := uint64(size)<<8 | uint64(i)
		l := harness.NewLayer().Dir("data/")
		big := per
		if i == b.o.layers-1 {
			big -= b.o.hot
			l.StreamFile(hotPath[1:], b.o.hot, func() io.Reader { return harness.RandomReader(seed ^ 0xff) })
		}
		l.StreamFile(bigPath(i)[1:], big, func() io.Reader { return harness.RandomReader(seed) })
		p := filepath.Join(dir, fmt.Sprintf("layer%d.tar.gz", i))
		// Stored (uncompressed) gzip: random data would not shrink, and
		// the conversion recompresses it anyway.
		if err := l.WriteFile(p, harness.GzipStored); err != nil {
			return nil, err
		}
		files = append(files, p)
	}
	repo := "bench/lazy-" + tag
	b.s.Logf("pushing %s (%d layers) to %s", repo, len(files), b.reg.Host)
	src, err := b.reg.Push(ctx, harness.ImageSpec{Repo: repo + "-src", Tag: "v1", Layers: files,
		Cmd: []string{"/bin/sh", "-c", "cat " + hotPath + " >/dev/null && echo " + ready}})
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	cocoonctl, err := b.env.CocoonBinary("cocoonctl")
	if err != nil {
		return nil, err
	}
	set := &imageSet{size: size}
	for _, encrypted := range []bool{false, true} {
		tag := "plain"
		// gzip level 1: random data does not compress at any level, and
		// level 9 only makes the conversion slow.
		args := []string{"convert", "--estargz", "--insecure", "--compression-level", "1", "--tmpdir", b.env.Dir, "--prioritize", hotPath}
		if b.o.chunkSize > 0 {
			args = append(args, "--chunk-size", strconv.FormatInt(b.o.chunkSize, 10))
		}
		if encrypted {
			tag = "encrypted"
			args = append(args, "--encrypt", "--kid", kid, "--key-file", kekFile)
		}
		b.s.Logf("converting %s to eStargz (%s)", src.Ref, tag)
		if out, err := exec.CommandContext(ctx, cocoonctl, append(args, src.Ref, b.reg.Ref(repo, tag))...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cocoonctl convert: %w: %s", err, out)
		}
		im, err := b.reg.Image(ctx, repo, tag)
		if err != nil {
			return nil, err
		}
		for i, l := range im.Manifest.Layers {
			if l.Annotations["containerd.io/snapshot/stargz/toc.digest"] == "" {
				return nil, fmt.Errorf("%s: layer %d has no TOC digest annotation", im.Ref, i)
			}
		}
		if encrypted {
			set.enc = im
		} else {
			set.plain = im
		}
	}
	return set, nil
}

// bigPath is the random file of data layer i.
func bigPath(i int) string { return fmt.Sprintf("/data/layer%d.bin", i) }

// stack is a fresh cocoond and containerd in a work directory of their
// own, for one measurement.
type stack struct {
	s    *harness.Script
	env  *harness.Env
	cd   *harness.Cocoond
	ctrd *harness.Containerd
}

// newStack starts cocoond (lazy pull on or off; background completion
// on or off) and containerd. close stops them and removes everything.
func (b *bench) newStack(ctx context.Context, name string, lazy, completion bool) (*stack, error) {
	st := &stack{s: harness.NewScript("lazybench-"+name, true)}
	var err error
	if st.env, err = harness.New(st.s); err != nil {
		return st, err
	}
	// Registered before cocoond, so run after it stopped: a detached lazy
	// FUSE server outlives cocoond by design.
	dir := st.env.Dir
	st.s.Cleanup(func() { stopLazyServers(st.s, dir) })
	cfg := "[lazy]\nenable = false\n"
	if lazy {
		cfg = fmt.Sprintf("[lazy]\nenable = true\nbackground_completion = %t\n", completion)
	}
	st.cd, err = st.env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{b.reg.Host, b.blobs.Host, b.link.Host},
		LogLevel:           "info",
		Config:             cfg,
		ExtraArgs:          []string{"--kbs-url", b.kbs.URL, "--tee", "sample"},
	})
	if err != nil {
		return st, err
	}
	frag, err := st.cd.ContainerdConfig(ctx)
	if err != nil {
		return st, err
	}
	st.ctrd, err = st.env.StartContainerd(ctx, harness.ContainerdOptions{Fragments: []string{frag}})
	if err != nil {
		return st, err
	}
	// The previous run's dirty pages are not this run's cost.
	syscall.Sync()
	return st, nil
}

func (st *stack) close(err error) {
	if err != nil {
		st.s.Fail()
	}
	st.s.Close()
}

// ref is im's reference through the counting blob server (loopback) or
// the limited link in front of it.
func (b *bench) ref(im *harness.Image, link string) string {
	host := b.blobs.Host
	if link == "limited" {
		host = b.link.Host
	}
	return host + strings.TrimPrefix(im.Ref, b.reg.Host)
}

// served is the layer bytes the blob server served so far.
func (b *bench) served(im *harness.Image) int64 {
	var n int64
	for _, d := range im.LayerDigests() {
		n += b.blobs.Served(d)
	}
	return n
}

// firstOutput pulls and runs set's image in mode m over link on a fresh
// stack (lazy: no background completion, so that what the registry
// served was fetched for the container) and times its first line.
func (b *bench) firstOutput(ctx context.Context, set *imageSet, link string, m mode) (r firstOutput, err error) {
	st, err := b.newStack(ctx, fmt.Sprintf("%s-%s", link, m), m.lazy, false)
	defer func() { st.close(err) }()
	if err != nil {
		return r, err
	}
	im := set.image(m.encrypted)
	ref := b.ref(im, link)
	r = firstOutput{link: link, mode: m.String(), size: set.size}
	before := b.served(im)
	start := time.Now()
	if _, err := st.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotter, ref); err != nil {
		return r, err
	}
	r.pull = time.Since(start)
	line, err := st.firstLine(ctx, ref, func() {
		r.first = time.Since(start)
		r.fetched = b.served(im) - before
	})
	if err != nil {
		return r, err
	}
	if line != ready {
		return r, fmt.Errorf("the container's first line is %q, want %q", line, ready)
	}
	if err := checkMode(st, m); err != nil {
		return r, err
	}
	r.mem, err = st.memory()
	return r, err
}

// firstLine runs ref with ctr run --rm (as Containerd.Ctr does, with the
// stack's FIFO and runc directories), calls at when the first stdout line
// arrives, and returns that line once the container has exited.
func (st *stack) firstLine(ctx context.Context, ref string, at func()) (string, error) {
	id := fmt.Sprintf("lazybench-%d-%d", os.Getpid(), time.Now().UnixNano())
	cmd := exec.CommandContext(ctx, st.env.Tool("ctr"), "-a", st.ctrd.Address, "run", "--rm", "--fifo-dir", st.ctrd.FIFODir(),
		"--runc-root", st.ctrd.RuncRoot(), "--snapshotter", snapshotter, ref, id)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	br := bufio.NewReader(out)
	line, rerr := br.ReadString('\n')
	if rerr == nil {
		at()
	}
	_, _ = io.Copy(io.Discard, br)
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("ctr run %s: %w: %s", ref, err, stderr.String())
	}
	if rerr != nil {
		return "", fmt.Errorf("ctr run %s printed no line: %w", ref, rerr)
	}
	return strings.TrimSpace(line), nil
}

// checkMode refuses a measurement that did not pull the way it says:
// containerd never holds layer blobs (cocoon pulled), and cocoond logged
// lazy mounts exactly when lazy pull was on.
func checkMode(st *stack, m mode) error {
	lazyMounted := strings.Contains(st.cd.Proc.Log(), "lazy layer mounted and committed")
	if lazyMounted != m.lazy {
		return fmt.Errorf("%s: cocoond mounted layers lazily: %v", m, lazyMounted)
	}
	return nil
}

// memory reads the peak RSS of cocoond and of the lazy FUSE server, if
// one runs as a separate process under this stack's directory.
func (st *stack) memory() (mem, error) {
	var m mem
	var err error
	if m.cocoond, err = harness.ProcStatusBytes(st.cd.Proc.PID(), "VmHWM"); err != nil {
		return m, err
	}
	if pids := lazyServers(st.env.Dir); len(pids) > 0 {
		m.serverPID = pids[0]
		if m.server, err = harness.ProcStatusBytes(pids[0], "VmHWM"); err != nil {
			return m, err
		}
	}
	return m, nil
}

// reads pulls set's image in mode m over loopback (lazy: with background
// completion, waiting until every blob is verified and served locally),
// starts a container that sleeps, and reads the data files from the host
// through its root (/proc/PID/root: the container's overlay, whose lower
// layers are the FUSE mounts or the unpacked directories): one file
// sequentially twice, another by random 4 KiB preads.
func (b *bench) reads(ctx context.Context, set *imageSet, m mode) (r readResult, err error) {
	st, err := b.newStack(ctx, "reads-"+m.String(), m.lazy, true)
	defer func() { st.close(err) }()
	if err != nil {
		return r, err
	}
	im := set.image(m.encrypted)
	ref := b.ref(im, "loopback")
	r = readResult{mode: m.String(), size: set.size}
	start := time.Now()
	if _, err := st.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotter, ref); err != nil {
		return r, err
	}
	if m.lazy {
		if err := st.waitComplete(ctx, len(im.Manifest.Layers)); err != nil {
			return r, err
		}
		r.completeAfter = time.Since(start)
		if r.completeMem, err = st.memory(); err != nil {
			return r, err
		}
	}
	id := fmt.Sprintf("lazybench-reads-%d", os.Getpid())
	if _, err := st.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", snapshotter, ref, id, "/bin/sleep", "3600"); err != nil {
		return r, err
	}
	pid, err := st.taskPID(ctx, id)
	if err != nil {
		return r, err
	}
	root := fmt.Sprintf("/proc/%d/root", pid)
	seqFile := filepath.Join(root, bigPath(b.o.layers-1))
	if r.seqFirst, r.seqBytes, err = readSequential(ctx, seqFile); err != nil {
		return r, err
	}
	if r.seqAgain, _, err = readSequential(ctx, seqFile); err != nil {
		return r, err
	}
	randFile := filepath.Join(root, bigPath(0))
	if r.random, r.randomBytes, err = readRandom(ctx, randFile); err != nil {
		return r, err
	}
	if err := checkMode(st, m); err != nil {
		return r, err
	}
	r.mem, err = st.memory()
	return r, err
}

// waitComplete waits until cocoond or its lazy FUSE server logged n
// completed and verified blobs.
func (st *stack) waitComplete(ctx context.Context, n int) error {
	const complete = "blob complete, digest and diff ID verified"
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	for {
		log := st.cd.Proc.Log() + lazyServerLogs(st.env.Dir)
		if strings.Count(log, complete) >= n {
			return nil
		}
		if strings.Contains(log, "marked bad") {
			return errors.New("a lazy layer was marked bad during background completion")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("background completion: %d of %d blobs verified: %w", strings.Count(log, complete), n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// taskPID returns the PID of task id from `ctr tasks ls`.
func (st *stack) taskPID(ctx context.Context, id string) (int, error) {
	out, err := st.ctrd.Ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("task %s not running: %s", id, out)
}

// readSequential reads path whole in 1 MiB reads and returns MB/s and the
// bytes read.
func readSequential(ctx context.Context, path string) (float64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, ctxReader{ctx, f}, buf)
	if err != nil {
		return 0, n, fmt.Errorf("reading %s: %w", path, err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), n, nil
}

// ctxReader stops reading once ctx is done (and hides WriterTo, so that
// CopyBuffer uses the buffer).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// randomReads is how many 4 KiB preads readRandom makes (64 MiB).
const randomReads = 16384

// readRandom makes randomReads preads of 4 KiB at random 4 KiB-aligned
// offsets of path and returns MB/s and the bytes read.
func readRandom(ctx context.Context, path string) (float64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	pages := fi.Size() / 4096
	if pages < 1 {
		return 0, 0, fmt.Errorf("%s is smaller than 4 KiB", path)
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	var total int64
	start := time.Now()
	for i := 0; i < randomReads; i++ {
		if i%256 == 0 && ctx.Err() != nil {
			return 0, total, ctx.Err()
		}
		n, err := f.ReadAt(buf, rng.Int64N(pages)*4096)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, total, fmt.Errorf("reading %s: %w", path, err)
		}
		total += int64(n)
	}
	return float64(total) / 1e6 / time.Since(start).Seconds(), total, nil
}

// lazyServerState is the part of the lazy FUSE server's state file
// (fusefs/server, server.json in its state directory) used here.
type lazyServerState struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	Log       string `json:"log"`
}

// lazyServerStates finds the state files of lazy FUSE servers under dir
// (a cocoond root keeps its server's state directory a few levels down)
// and returns those whose process still runs.
func lazyServerStates(dir string) []lazyServerState {
	var out []lazyServerState
	for depth := 1; depth <= 4; depth++ {
		pattern := filepath.Join(append([]string{dir}, append(repeat("*", depth), "server.json")...)...)
		matches, _ := filepath.Glob(pattern)
		for _, p := range matches {
			data, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			var st lazyServerState
			if json.Unmarshal(data, &st) != nil || st.PID <= 0 || startTime(st.PID) != st.StartTime {
				continue
			}
			out = append(out, st)
		}
	}
	return out
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// lazyServers returns the PIDs of the live lazy FUSE servers under dir.
func lazyServers(dir string) []int {
	var pids []int
	for _, st := range lazyServerStates(dir) {
		pids = append(pids, st.PID)
	}
	return pids
}

// lazyServerLogs returns the logs of the live lazy FUSE servers under dir.
func lazyServerLogs(dir string) string {
	var b strings.Builder
	for _, st := range lazyServerStates(dir) {
		if data, err := os.ReadFile(st.Log); err == nil {
			b.Write(data)
		}
	}
	return b.String()
}

// stopLazyServers stops, by PID, the live lazy FUSE servers under dir:
// SIGTERM (they unmount their layers and exit), SIGKILL after 15 s.
func stopLazyServers(s *harness.Script, dir string) {
	for _, st := range lazyServerStates(dir) {
		if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
			continue
		}
		deadline := time.Now().Add(15 * time.Second)
		for startTime(st.PID) == st.StartTime && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if startTime(st.PID) == st.StartTime {
			s.Logf("cleanup: lazy FUSE server %d ignored SIGTERM; killing it", st.PID)
			_ = syscall.Kill(st.PID, syscall.SIGKILL)
		}
	}
}

// startTime is field 22 of /proc/PID/stat (0 when the process is gone or
// a zombie).
func startTime(pid int) uint64 {
	f := harness.ProcStatFields(pid)
	if len(f) < 20 || f[0] == "Z" {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// report renders the markdown tables.
func (b *bench) report(sets []*imageSet, firsts []firstOutput, reads []readResult) string {
	var w strings.Builder
	primary := sets[0]
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&w, "\n## Lazy pull benchmark (%s)\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&w, "Image: busybox + %d layers of random data, %s payload; entrypoint `cat %s` (%s, prioritized) then `echo %s`. "+
		"eStargz by `cocoonctl convert --estargz --compression-level 1` (chunks of at most %s; %s compressed plain, %s encrypted). "+
		"Full pull = the same eStargz image with `[lazy] enable = false`; lazy first-output runs without background completion. "+
		"Registry: crane on loopback, blobs served (ranges too) and counted by the bench from crane's disk store, since crane itself hashes the whole blob on every GET. "+
		"Links: loopback, and a token-bucket TCP proxy at %s (`-rate %s`). %d CPUs, kernel %s, %s. Lazy FUSE server: %s.\n\n",
		b.o.layers, human(primary.size), hotPath, human(b.o.hot), ready, chunkText(b.o.chunkSize), human(primary.plain.LayerBytes()), human(primary.enc.LayerBytes()),
		fmt.Sprintf("%.0f MB/s", b.o.rate/1e6), b.o.rateText, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), serverKind(firsts))

	fmt.Fprintf(&w, "### Time to first output (`ctr image pull` start to the container's first stdout line)\n\n"+
		"Median of %d runs per row (the modes alternate; a fresh cocoond and containerd each run); VmHWM is the highest of the runs.\n\n", b.o.runs)
	fmt.Fprintf(&w, "| image | link | mode | pull (s) | first output (s) | layer bytes served before first output | cocoond VmHWM | FUSE server VmHWM |\n")
	fmt.Fprintf(&w, "|---|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range firsts {
		fmt.Fprintf(&w, "| %s | %s | %s | %.2f | %.2f | %s (%.2f%%) | %s | %s |\n", human(r.size), r.link, r.mode, r.pull.Seconds(), r.first.Seconds(),
			human(r.fetched), 100*float64(r.fetched)/float64(imageBytes(sets, r)), human(r.cocoond), serverMem(r.mode, r.mem))
	}

	fmt.Fprintf(&w, "\n### Cached reads (host reads through the running container's overlay root, /proc/PID/root)\n\n")
	fmt.Fprintf(&w, "Full pull: the unpacked layer directories (the file was just written, so in the page cache). Lazy: the FUSE mount after background completion verified every blob (reads served from the local copy). "+
		"Sequential: %s (%s in the %s image) read twice in 1 MiB reads (the first read goes through the FUSE server, the second may hit the kernel's page cache). "+
		"Random: %d preads of 4 KiB (%s) at random offsets of %s.\n\n",
		bigPath(b.o.layers-1), human(reads[0].seqBytes), human(reads[0].size), randomReads, human(reads[0].randomBytes), bigPath(0))
	fmt.Fprintf(&w, "| image | mode | pull to all blobs verified (s) | VmHWM then: cocoond / FUSE server | sequential, first read (MB/s) | sequential, again (MB/s) | random 4 KiB (MB/s) | VmHWM after the reads: cocoond / FUSE server |\n")
	fmt.Fprintf(&w, "|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range reads {
		done, doneMem := "-", "-"
		if r.completeAfter > 0 {
			done = fmt.Sprintf("%.2f", r.completeAfter.Seconds())
			doneMem = human(r.completeMem.cocoond) + " / " + serverMem(r.mode, r.completeMem)
		}
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %.0f | %.0f | %.0f | %s / %s |\n", human(r.size), r.mode, done, doneMem, r.seqFirst, r.seqAgain, r.random, human(r.cocoond), serverMem(r.mode, r.mem))
	}

	fmt.Fprintf(&w, "\n### Ratios (same run) and goals\n\n| ratio | value | goal |\n|---|---:|---|\n")
	fo := func(size int64, link, m string) *firstOutput {
		for i := range firsts {
			if firsts[i].size == size && firsts[i].link == link && firsts[i].mode == m {
				return &firsts[i]
			}
		}
		return nil
	}
	for _, link := range []string{"limited", "loopback"} {
		for _, enc := range []string{"plain", "encrypted"} {
			full, lazy := fo(primary.size, link, "full-"+enc), fo(primary.size, link, "lazy-"+enc)
			if full == nil || lazy == nil {
				continue
			}
			goal := "-"
			if link == "limited" {
				goal = "≥ 10x sooner"
			}
			fmt.Fprintf(&w, "| first output, %s link, %s: full / lazy | %.1fx | %s |\n", link, enc, ratio(full.first, lazy.first), goal)
			fmt.Fprintf(&w, "| bytes before first output, %s link, %s: lazy / full | %.4f | - |\n", link, enc, float64(lazy.fetched)/float64(full.fetched))
		}
	}
	for _, link := range []string{"limited", "loopback"} {
		p, e := fo(primary.size, link, "lazy-plain"), fo(primary.size, link, "lazy-encrypted")
		if p != nil && e != nil {
			fmt.Fprintf(&w, "| first output, %s link: encrypted lazy / plain lazy | %.2f | ≤ 1.2 |\n", link, ratio(e.first, p.first))
		}
	}
	rd := func(size int64, m string) *readResult {
		for i := range reads {
			if reads[i].size == size && reads[i].mode == m {
				return &reads[i]
			}
		}
		return nil
	}
	if full := rd(primary.size, "full-plain"); full != nil {
		for _, m := range []string{"lazy-plain", "lazy-encrypted"} {
			if l := rd(primary.size, m); l != nil {
				fmt.Fprintf(&w, "| sequential read, first, %s / full-pull overlay | %.2f | ≥ 0.9 |\n", m, l.seqFirst/full.seqFirst)
				fmt.Fprintf(&w, "| sequential read, again, %s / full-pull overlay | %.2f | ≥ 0.9 |\n", m, l.seqAgain/full.seqAgain)
				fmt.Fprintf(&w, "| random 4 KiB reads, %s / full-pull overlay | %.2f | ≥ 0.9 |\n", m, l.random/full.random)
			}
		}
	}
	if len(sets) > 1 {
		small := sets[1]
		for _, m := range modes {
			big, sm := fo(primary.size, "loopback", m.String()), fo(small.size, "loopback", m.String())
			if big == nil || sm == nil {
				continue
			}
			fmt.Fprintf(&w, "| cocoond VmHWM after first output, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.cocoond)/float64(sm.cocoond))
			if big.serverPID != 0 && sm.serverPID != 0 {
				fmt.Fprintf(&w, "| FUSE server VmHWM after first output, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.server)/float64(sm.server))
			}
		}
		for _, m := range []string{"full-plain", "lazy-plain", "lazy-encrypted"} {
			big, sm := rd(primary.size, m), rd(small.size, m)
			if big == nil || sm == nil {
				continue
			}
			if big.completeAfter > 0 {
				fmt.Fprintf(&w, "| cocoond VmHWM after background completion, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.completeMem.cocoond)/float64(sm.completeMem.cocoond))
				if big.completeMem.serverPID != 0 && sm.completeMem.serverPID != 0 {
					fmt.Fprintf(&w, "| FUSE server VmHWM after background completion, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.completeMem.server)/float64(sm.completeMem.server))
				}
			}
			fmt.Fprintf(&w, "| cocoond VmHWM after complete + reads, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.cocoond)/float64(sm.cocoond))
			if big.serverPID != 0 && sm.serverPID != 0 {
				fmt.Fprintf(&w, "| FUSE server VmHWM after complete + reads, %s: %s image / %s image | %.2f | flat (≈ 1) |\n", m, human(primary.size), human(small.size), float64(big.server)/float64(sm.server))
			}
		}
	}
	fmt.Fprintf(&w, "\nCommand: `%s`\n", strings.TrimSpace("cd e2e && GOFLAGS= go run ./cmd/lazybench "+strings.Join(os.Args[1:], " ")))
	return w.String()
}

// imageBytes is the compressed layer bytes of r's image.
func imageBytes(sets []*imageSet, r firstOutput) int64 {
	for _, set := range sets {
		if set.size == r.size {
			return set.image(strings.HasSuffix(r.mode, "encrypted")).LayerBytes()
		}
	}
	return 0
}

func serverKind(firsts []firstOutput) string {
	for _, r := range firsts {
		if r.serverPID != 0 {
			return "a separate process (found by its state file server.json; its VmHWM is listed)"
		}
	}
	return "inside cocoond (no separate server process was found: its memory is in cocoond's VmHWM)"
}

func serverMem(mode string, m mem) string {
	if strings.HasPrefix(mode, "full") {
		return "-"
	}
	if m.serverPID == 0 {
		return "- (in cocoond)"
	}
	return human(m.server)
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return a.Seconds() / b.Seconds()
}

func chunkText(n int64) string {
	if n == 0 {
		return "4MiB, estargz's default"
	}
	return human(n)
}

func human(n int64) string { return units.BytesSize(float64(n)) }
