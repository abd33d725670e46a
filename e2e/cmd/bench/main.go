// Command bench measures guest pull: it builds a large multi-layer image
// (about 500 MB, mostly incompressible random data plus some compressible
// text, gzip), pushes it to a loopback registry, then pulls it alternately
// through cocoon (fresh cocoond and containerd each time) and through
// containerd's own overlayfs snapshotter (fresh containerd root each time).
// With -encrypted (the default) it also pulls the image encrypted by
// cocoonctl encrypt through cocoon, in the same rounds. With -kata (the
// default) it also pulls the plain image as the kata-agent does, through
// the CDH's PullImage of a fresh cocoond in kata-guest mode (no
// containerd) into a bundle, in the same rounds, and reports the median
// ratio PullImage/snapshotter. It reports the pull
// wall time of each run, the median ratios cocoon/overlayfs and
// encrypted/plain, the CPU time cocoond and the registry spent on each pull
// (a pull whose CPU time is twice its wall time was CPU-bound on 2 cores),
// and cocoond's peak RSS (VmRSS sampled during the pull and the kernel's
// VmHWM), prints a table and writes JSON to
// $COCOON_BIN/bench-guestpull.json. It needs root and the binaries of
// `make build` and `make e2e-tools`.
package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// generatorVersion names the cached layer files; bump it when the layer
// contents change.
const generatorVersion = "v1"

type options struct {
	iterations int
	layers     int
	sizeMB     int
	textShare  float64
	out        string
	cache      string
	encrypted  bool
	overlayfs  bool
	kata       bool
}

// Run is one measured pull.
type Run struct {
	Mode      string  `json:"mode"` // "cocoon", "overlayfs", "cocoon-encrypted" or "kata-pullimage"
	Iteration int     `json:"iteration"`
	PullSec   float64 `json:"pull_seconds"`
	// cocoond only (zero for overlayfs runs).
	CocoondPeakRSS int64 `json:"cocoond_peak_sampled_rss_bytes,omitempty"`
	CocoondHWM     int64 `json:"cocoond_vmhwm_bytes,omitempty"`
	CocoondBytes   int64 `json:"cocoond_fetched_bytes,omitempty"`
	// CPU time (user + system) cocoond and the registry spent during the
	// pull: with 2 cores, their sum against 2x the wall time says whether
	// the pull was CPU-bound.
	CocoondCPUSec  float64 `json:"cocoond_cpu_seconds,omitempty"`
	RegistryCPUSec float64 `json:"registry_cpu_seconds"`
	// containerd, both modes.
	ContainerdPeakRSS int64 `json:"containerd_peak_sampled_rss_bytes"`
	ContainerdHWM     int64 `json:"containerd_vmhwm_bytes"`
	// Layer blobs found in containerd's content store after the pull.
	LayerBlobsInContentStore int `json:"layer_blobs_in_content_store"`
}

// Report is the JSON output.
type Report struct {
	Time    string `json:"time"`
	Machine struct {
		CPUs      int    `json:"cpus"`
		GoVersion string `json:"go_version"`
		Kernel    string `json:"kernel"`
	} `json:"machine"`
	Image struct {
		Ref             string `json:"ref"`
		Layers          int    `json:"layers"`
		CompressedBytes int64  `json:"compressed_bytes"`
		PayloadBytes    int64  `json:"payload_bytes"`
		Compression     string `json:"compression"`
	} `json:"image"`
	Runs    []Run `json:"runs"`
	Summary struct {
		CocoonMedianSec    float64 `json:"cocoon_median_pull_seconds"`
		OverlayfsMedianSec float64 `json:"overlayfs_median_pull_seconds"`
		Ratio              float64 `json:"ratio_cocoon_over_overlayfs"`
		CocoondMaxHWM      int64   `json:"cocoond_max_vmhwm_bytes"`
		CocoondMaxRSS      int64   `json:"cocoond_max_sampled_rss_bytes"`
		// Encrypted image (when measured).
		EncryptedMedianSec     float64 `json:"encrypted_median_pull_seconds,omitempty"`
		EncryptedOverPlain     float64 `json:"ratio_encrypted_over_plain_cocoon,omitempty"`
		EncryptedMBps          float64 `json:"encrypted_pull_mb_per_second,omitempty"`
		PlainMBps              float64 `json:"plain_pull_mb_per_second,omitempty"`
		CryptoLimitMBps        float64 `json:"single_core_aes_ctr_hmac_mb_per_second,omitempty"`
		EncryptedOverCryptoMax float64 `json:"ratio_encrypted_throughput_over_crypto_limit,omitempty"`
		EncryptedCocoondMaxHWM int64   `json:"encrypted_cocoond_max_vmhwm_bytes,omitempty"`
		// Median cocoond CPU seconds per pull, plain and encrypted.
		CocoondCPUSec          float64 `json:"cocoond_median_cpu_seconds,omitempty"`
		EncryptedCocoondCPUSec float64 `json:"encrypted_cocoond_median_cpu_seconds,omitempty"`
		// (cocoond + registry CPU) encrypted over plain: the lowest
		// encrypted/plain wall-time ratio possible when both pulls keep
		// every core busy.
		EncryptedOverPlainCPU float64 `json:"ratio_encrypted_over_plain_cpu,omitempty"`
		// The CDH's PullImage into a bundle (kata-guest mode), when
		// measured, against the snapshotter path ("cocoon").
		KataMedianSec     float64 `json:"kata_pullimage_median_seconds,omitempty"`
		KataOverCocoon    float64 `json:"ratio_kata_pullimage_over_cocoon,omitempty"`
		KataCocoondCPU    float64 `json:"kata_cocoond_median_cpu_seconds,omitempty"`
		KataCocoondMaxHWM int64   `json:"kata_cocoond_max_vmhwm_bytes,omitempty"`
	} `json:"summary"`
}

func main() {
	var o options
	flag.IntVar(&o.iterations, "iterations", 3, "pulls per mode (alternating cocoon, overlayfs)")
	flag.IntVar(&o.layers, "layers", 5, "number of layers")
	flag.IntVar(&o.sizeMB, "size-mb", 500, "total uncompressed payload in MB (1e6 bytes)")
	flag.Float64Var(&o.textShare, "text-share", 0.1, "share of the payload that is compressible text")
	flag.StringVar(&o.out, "out", "", "JSON output (default $COCOON_BIN/bench-guestpull.json)")
	flag.BoolVar(&o.encrypted, "encrypted", true, "also pull the image encrypted by cocoonctl encrypt (key from a development KBS), against the single-core AES-256-CTR+HMAC-SHA256 limit")
	flag.BoolVar(&o.overlayfs, "overlayfs", true, "also pull through containerd's overlayfs snapshotter (the baseline of the cocoon/overlayfs ratio)")
	flag.BoolVar(&o.kata, "kata", true, "also pull through the CDH's PullImage of cocoond in kata-guest mode into a bundle (the kata-agent's path), against the snapshotter path")
	flag.StringVar(&o.cache, "cache", "", "directory caching the generated layers (default $COCOON_E2E_BIN/bench-cache)")
	flag.Parse()
	if o.iterations < 1 || o.layers < 1 || o.sizeMB < 1 || o.textShare < 0 || o.textShare > 1 {
		fmt.Fprintln(os.Stderr, "bench: -iterations, -layers and -size-mb must be positive, -text-share within [0,1]")
		os.Exit(2)
	}

	var rep *Report
	harness.RunScript("bench", false, func(ctx context.Context, s *harness.Script) (err error) {
		rep, err = run(ctx, s, o)
		return err
	})
	printReport(os.Stdout, rep)
}

func run(ctx context.Context, s *harness.Script, o options) (*Report, error) {
	env, err := harness.New(s)
	if err != nil {
		return nil, err
	}
	if o.out == "" {
		o.out = filepath.Join(env.Bin, "bench-guestpull.json")
	}
	if o.cache == "" {
		o.cache = filepath.Join(env.ToolBin, "bench-cache")
	}
	rep := &Report{Time: time.Now().UTC().Format(time.RFC3339)}
	rep.Machine.CPUs = runtime.NumCPU()
	rep.Machine.GoVersion = runtime.Version()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rep.Machine.Kernel = strings.TrimSpace(string(b))
	}

	files, payload, err := generateLayers(s, o)
	if err != nil {
		return nil, err
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		return nil, err
	}
	s.Logf("pushing %d layers to %s", len(files), reg.Host)
	im, err := reg.Push(ctx, harness.ImageSpec{Repo: "bench/guestpull", Tag: generatorVersion, Layers: files, Cmd: []string{"/bin/sh"}})
	if err != nil {
		return nil, err
	}
	rep.Image.Ref = im.Ref
	rep.Image.Layers = len(im.Manifest.Layers)
	rep.Image.CompressedBytes = im.LayerBytes()
	rep.Image.PayloadBytes = payload
	rep.Image.Compression = "gzip"

	modes := []string{"cocoon"}
	if o.overlayfs {
		modes = append(modes, "overlayfs")
	}
	var enc *harness.Image
	var kbs *harness.KBS
	if o.encrypted {
		if kbs, enc, err = encryptImage(ctx, env, reg, im); err != nil {
			return nil, fmt.Errorf("encrypt the bench image: %w", err)
		}
		modes = append(modes, "cocoon-encrypted")
		rep.Summary.CryptoLimitMBps = cryptoLimit()
		s.Logf("single-core AES-256-CTR + HMAC-SHA256: %.0f MB/s", rep.Summary.CryptoLimitMBps)
	}
	if o.kata {
		modes = append(modes, modeKata)
	}
	for i := 1; i <= o.iterations; i++ {
		for _, mode := range modes {
			target, kbsURL := im, ""
			if mode == "cocoon-encrypted" {
				target, kbsURL = enc, kbs.URL
			}
			pull := pullOnce
			if mode == modeKata {
				pull = pullImageOnce
			}
			r, err := pull(ctx, s, reg, target, mode, i, i == 1, kbsURL)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", mode, i, err)
			}
			s.Logf("%s run %d: pull %.2f s", mode, i, r.PullSec)
			rep.Runs = append(rep.Runs, r)
		}
	}
	summarize(rep)
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(o.out, append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	s.Logf("wrote %s", o.out)
	return rep, nil
}

// pullOnce starts fresh daemons (and a fresh work directory) for one pull
// and tears them down afterwards.
func pullOnce(ctx context.Context, parent *harness.Script, reg *harness.Registry, im *harness.Image, mode string, iteration int, verify bool, kbsURL string) (r Run, err error) {
	s := harness.NewScript(fmt.Sprintf("bench-%s-%d", mode, iteration), true)
	defer func() {
		if err != nil {
			s.Fail()
		}
		s.Close()
	}()
	env, err := harness.New(s)
	if err != nil {
		return r, err
	}
	r = Run{Mode: mode, Iteration: iteration}
	var cd *harness.Cocoond
	var opts harness.ContainerdOptions
	pullArgs := []string{"image", "pull", "--plain-http"}
	runArgs := []string{"run", "--rm"}
	if mode != "overlayfs" {
		var extra []string
		if kbsURL != "" {
			extra = []string{"--kbs-url", kbsURL, "--tee", "sample"}
		}
		cd, err = env.StartCocoond(ctx, harness.CocoondOptions{InsecureRegistries: []string{reg.Host}, LogLevel: "info", ExtraArgs: extra})
		if err != nil {
			return r, err
		}
		frag, err := cd.ContainerdConfig(ctx)
		if err != nil {
			return r, err
		}
		opts.Fragments = []string{frag}
		pullArgs = append(pullArgs, "--snapshotter", "cocoon")
		runArgs = append(runArgs, "--snapshotter", "cocoon")
	}
	ctrd, err := env.StartContainerd(ctx, opts)
	if err != nil {
		return r, err
	}
	// Flush the previous run's dirty pages so that their writeback does
	// not land in this run's time.
	syscall.Sync()
	var before map[string]float64
	var cdMem *harness.MemorySampler
	if cd != nil {
		if before, err = cd.Metrics(ctx); err != nil {
			return r, err
		}
		cdMem = cd.Proc.SampleMemory(20 * time.Millisecond)
	}
	ctrdMem := ctrd.Proc.SampleMemory(20 * time.Millisecond)
	cpuBefore := [2]float64{cpuSeconds(reg.Proc.PID()), -1}
	if cd != nil {
		cpuBefore[1] = cpuSeconds(cd.Proc.PID())
	}

	start := time.Now()
	_, err = ctrd.Ctr(ctx, append(pullArgs, im.Ref)...)
	r.PullSec = time.Since(start).Seconds()
	r.RegistryCPUSec = cpuSeconds(reg.Proc.PID()) - cpuBefore[0]
	if cd != nil {
		r.CocoondCPUSec = cpuSeconds(cd.Proc.PID()) - cpuBefore[1]
	}
	ctrdStats := ctrdMem.Stop()
	r.ContainerdPeakRSS, r.ContainerdHWM = ctrdStats.PeakSampledRSS, ctrdStats.FinalHWM
	if cdMem != nil {
		st := cdMem.Stop()
		r.CocoondPeakRSS, r.CocoondHWM = st.PeakSampledRSS, st.FinalHWM
	}
	if err != nil {
		return r, err
	}

	content, err := ctrd.ContentDigests(ctx)
	if err != nil {
		return r, err
	}
	for _, d := range im.LayerDigests() {
		if slices.Contains(content, d) {
			r.LayerBlobsInContentStore++
		}
	}
	if cd != nil {
		after, err := cd.Metrics(ctx)
		if err != nil {
			return r, err
		}
		r.CocoondBytes = int64(harness.MetricSum(after, "cocoon_pull_bytes_total") - harness.MetricSum(before, "cocoon_pull_bytes_total"))
		// Like stargz's benchmark, refuse to report a "cocoon" time for a
		// pull that containerd did itself.
		if r.LayerBlobsInContentStore > 0 {
			return r, fmt.Errorf("%d layer blobs in containerd's content store: the pull did not go through cocoon", r.LayerBlobsInContentStore)
		}
	} else if r.LayerBlobsInContentStore != len(im.Manifest.Layers) {
		return r, fmt.Errorf("overlayfs pull left %d of %d layer blobs in the content store", r.LayerBlobsInContentStore, len(im.Manifest.Layers))
	}
	if verify {
		// Not timed: the unpacked rootfs must hold the last layer's data.
		last := len(im.Manifest.Layers) - 1
		out, err := ctrd.Ctr(ctx, append(runArgs, im.Ref, fmt.Sprintf("bench-%s-%d-%d", mode, iteration, os.Getpid()),
			"/bin/sh", "-c", fmt.Sprintf("wc -c < /data/layer%d/random.bin", last))...)
		if err != nil {
			return r, fmt.Errorf("running the pulled image: %w", err)
		}
		parent.Logf("%s: the pulled image runs; /data/layer%d/random.bin has %s bytes", mode, last, strings.TrimSpace(out))
	}
	return r, nil
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat (100
// on every Linux architecture Go supports).
const clockTicks = 100

// cpuSeconds is the user + system CPU time process pid has used so far
// (its threads included), or 0 when /proc cannot tell.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after its
	// closing parenthesis start with field 3 (state). utime and stime are
	// fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0
	}
	return float64(utime+stime) / clockTicks
}

// generateLayers writes (or reuses) the layer files: layer 0 also holds
// busybox, every layer holds data/layerN/random.bin (incompressible) and
// data/layerN/text.log (compressible). Returns the files and the total
// payload size.
func generateLayers(s *harness.Script, o options) ([]string, int64, error) {
	dir := filepath.Join(o.cache, fmt.Sprintf("%s-%dx%dMB-text%.2f", generatorVersion, o.layers, o.sizeMB, o.textShare))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	per := int64(o.sizeMB) * 1e6 / int64(o.layers)
	textSize := int64(float64(per) * o.textShare)
	randSize := per - textSize
	var files []string
	var total int64
	for i := 0; i < o.layers; i++ {
		path := filepath.Join(dir, fmt.Sprintf("layer%d.tar.gz", i))
		files = append(files, path)
		total += per
		if _, err := os.Stat(path); err == nil {
			continue
		}
		l := harness.NewLayer()
		if i == 0 {
			bb, err := harness.BusyboxLayer()
			if err != nil {
				return nil, 0, err
			}
			l = bb
		}
		seed := uint64(i + 1)
		l.Dir("data/").Dir(fmt.Sprintf("data/layer%d/", i)).
			StreamFile(fmt.Sprintf("data/layer%d/random.bin", i), randSize, func() io.Reader { return harness.RandomReader(seed) }).
			StreamFile(fmt.Sprintf("data/layer%d/text.log", i), textSize, func() io.Reader { return newTextReader(i) })
		s.Logf("generating layer %d (%d MB random, %d MB text) in %s", i, randSize/1e6, textSize/1e6, path)
		tmp := path + ".tmp"
		if err := l.WriteFile(tmp, harness.Gzip); err != nil {
			os.Remove(tmp)
			return nil, 0, err
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, 0, err
		}
	}
	return files, total, nil
}

// textReader produces log-like, compressible lines forever.
type textReader struct {
	layer int
	n     int
	buf   []byte
}

func newTextReader(layer int) io.Reader { return &textReader{layer: layer} }

func (t *textReader) Read(p []byte) (int, error) {
	for len(t.buf) < len(p) {
		t.buf = fmt.Appendf(t.buf, "2026-01-01T00:00:%02d.%06dZ layer=%d seq=%d level=info msg=\"request served\" status=200 bytes=%d\n",
			t.n%60, t.n%1000000, t.layer, t.n, (t.n*7919)%65536)
		t.n++
	}
	n := copy(p, t.buf)
	t.buf = t.buf[n:]
	return n, nil
}

func summarize(rep *Report) {
	var c, o, e, k, cCPU, eCPU, kCPU, cAll, eAll []float64
	for _, r := range rep.Runs {
		switch r.Mode {
		case "cocoon":
			c = append(c, r.PullSec)
			cCPU = append(cCPU, r.CocoondCPUSec)
			cAll = append(cAll, r.CocoondCPUSec+r.RegistryCPUSec)
			rep.Summary.CocoondMaxHWM = max(rep.Summary.CocoondMaxHWM, r.CocoondHWM)
			rep.Summary.CocoondMaxRSS = max(rep.Summary.CocoondMaxRSS, r.CocoondPeakRSS)
		case modeKata:
			k = append(k, r.PullSec)
			kCPU = append(kCPU, r.CocoondCPUSec)
			rep.Summary.KataCocoondMaxHWM = max(rep.Summary.KataCocoondMaxHWM, r.CocoondHWM)
		case "cocoon-encrypted":
			e = append(e, r.PullSec)
			eCPU = append(eCPU, r.CocoondCPUSec)
			eAll = append(eAll, r.CocoondCPUSec+r.RegistryCPUSec)
			rep.Summary.EncryptedCocoondMaxHWM = max(rep.Summary.EncryptedCocoondMaxHWM, r.CocoondHWM)
		default:
			o = append(o, r.PullSec)
		}
	}
	rep.Summary.CocoonMedianSec = median(c)
	rep.Summary.CocoondCPUSec, rep.Summary.EncryptedCocoondCPUSec = median(cCPU), median(eCPU)
	rep.Summary.OverlayfsMedianSec = median(o)
	if rep.Summary.KataMedianSec = median(k); rep.Summary.KataMedianSec > 0 && rep.Summary.CocoonMedianSec > 0 {
		rep.Summary.KataOverCocoon = rep.Summary.KataMedianSec / rep.Summary.CocoonMedianSec
		rep.Summary.KataCocoondCPU = median(kCPU)
	}
	if rep.Summary.OverlayfsMedianSec > 0 {
		rep.Summary.Ratio = rep.Summary.CocoonMedianSec / rep.Summary.OverlayfsMedianSec
	}
	mb := float64(rep.Image.CompressedBytes) / 1e6
	if rep.Summary.CocoonMedianSec > 0 {
		rep.Summary.PlainMBps = mb / rep.Summary.CocoonMedianSec
	}
	if rep.Summary.EncryptedMedianSec = median(e); rep.Summary.EncryptedMedianSec > 0 {
		rep.Summary.EncryptedMBps = mb / rep.Summary.EncryptedMedianSec
		rep.Summary.EncryptedOverPlain = rep.Summary.EncryptedMedianSec / rep.Summary.CocoonMedianSec
		if m := median(cAll); m > 0 {
			rep.Summary.EncryptedOverPlainCPU = median(eAll) / m
		}
		if rep.Summary.CryptoLimitMBps > 0 {
			rep.Summary.EncryptedOverCryptoMax = rep.Summary.EncryptedMBps / rep.Summary.CryptoLimitMBps
		}
	}
}

// encryptImage starts a development KBS holding a fresh KEK and encrypts
// the bench image with cocoonctl encrypt, wrapping its layer keys for
// kbs:///default/bench/kek.
func encryptImage(ctx context.Context, env *harness.Env, reg *harness.Registry, im *harness.Image) (*harness.KBS, *harness.Image, error) {
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return nil, nil, err
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{Policy: harness.AllowAllPolicy, Resources: map[string][]byte{"default/bench/kek": kek}})
	if err != nil {
		return nil, nil, err
	}
	kekFile := env.Path("bench.kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		return nil, nil, err
	}
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		return nil, nil, err
	}
	if out, err := exec.CommandContext(ctx, cocoonctl, "encrypt", "--insecure", "--tmpdir", env.Dir, "--kid", "kbs:///default/bench/kek", "--key-file", kekFile,
		im.Ref, reg.Ref(im.Repo, "encrypted")).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("cocoonctl encrypt: %w: %s", err, out)
	}
	enc, err := reg.Image(ctx, im.Repo, "encrypted")
	return kbs, enc, err
}

// cryptoLimit measures single-core AES-256-CTR with HMAC-SHA256 (ocicrypt's
// layer cipher) over 256 MiB in memory: the ceiling for decrypting a layer
// on this machine, measured in the same run as the pulls.
func cryptoLimit() float64 {
	key := make([]byte, 32)
	iv := make([]byte, aes.BlockSize)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	ctr := cipher.NewCTR(block, iv)
	mac := hmac.New(sha256.New, key)
	buf := make([]byte, 1<<20)
	const total = 256
	start := time.Now()
	for i := 0; i < total; i++ {
		mac.Write(buf)
		ctr.XORKeyStream(buf, buf)
	}
	mac.Sum(nil)
	return float64(total<<20) / 1e6 / time.Since(start).Seconds()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func cpu(s float64) string {
	if s == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", s)
}

func mib(n int64) string {
	if n == 0 {
		return "-"
	}
	return units.BytesSize(float64(n))
}

func printReport(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "\nguest pull: %s, %d layers, %s compressed (%s), %s payload; registry on loopback; %d CPUs\n\n",
		rep.Image.Ref, rep.Image.Layers, units.HumanSize(float64(rep.Image.CompressedBytes)), rep.Image.Compression, units.HumanSize(float64(rep.Image.PayloadBytes)), rep.Machine.CPUs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tmode\tpull (s)\tcocoond CPU (s)\tregistry CPU (s)\tcocoond peak RSS (sampled)\tcocoond VmHWM\tcontainerd peak RSS\tlayer blobs in content store\t")
	for _, r := range rep.Runs {
		fmt.Fprintf(tw, "%d\t%s\t%.2f\t%s\t%.2f\t%s\t%s\t%s\t%d\t\n", r.Iteration, r.Mode, r.PullSec, cpu(r.CocoondCPUSec), r.RegistryCPUSec, mib(r.CocoondPeakRSS), mib(r.CocoondHWM), mib(r.ContainerdPeakRSS), r.LayerBlobsInContentStore)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nmedian pull: cocoon %.2f s (cocoond CPU %.2f s), overlayfs %.2f s; ratio cocoon/overlayfs %.2f; cocoond peak RSS %s (VmHWM %s)\n",
		rep.Summary.CocoonMedianSec, rep.Summary.CocoondCPUSec, rep.Summary.OverlayfsMedianSec, rep.Summary.Ratio, mib(rep.Summary.CocoondMaxRSS), mib(rep.Summary.CocoondMaxHWM))
	if rep.Summary.EncryptedMedianSec > 0 {
		fmt.Fprintf(w, "encrypted image: median pull %.2f s (cocoond CPU %.2f s; %.0f MB/s; plain %.0f MB/s); ratio encrypted/plain %.2f (CPU of cocoond and registry: %.2f); single-core AES-256-CTR+HMAC-SHA256 limit %.0f MB/s (pull throughput %.2f of it); cocoond VmHWM %s\n",
			rep.Summary.EncryptedMedianSec, rep.Summary.EncryptedCocoondCPUSec, rep.Summary.EncryptedMBps, rep.Summary.PlainMBps, rep.Summary.EncryptedOverPlain, rep.Summary.EncryptedOverPlainCPU,
			rep.Summary.CryptoLimitMBps, rep.Summary.EncryptedOverCryptoMax, mib(rep.Summary.EncryptedCocoondMaxHWM))
	}
	if rep.Summary.KataMedianSec > 0 {
		fmt.Fprintf(w, "kata guest: median PullImage into a bundle %.2f s (cocoond CPU %.2f s, VmHWM %s); ratio PullImage/snapshotter path (containerd + cocoon) %.2f\n",
			rep.Summary.KataMedianSec, rep.Summary.KataCocoondCPU, mib(rep.Summary.KataCocoondMaxHWM), rep.Summary.KataOverCocoon)
	}
}
