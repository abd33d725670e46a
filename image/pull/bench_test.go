package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/encrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// benchLayerSize is the payload of the benchmark layer: like `make bench`'s
// layers, 90% incompressible data and 10% log text, in gzip.
const benchLayerSize = 128 << 20

// benchTar builds an uncompressed layer tar of about size bytes: a few
// random files and one compressible text file.
func benchTar(tb testing.TB, size int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	buf.Grow(size + 64<<10)
	tw := tar.NewWriter(&buf)
	text := size / 10
	const files = 4
	add := func(name string, body []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}); err != nil {
		tb.Fatal(err)
	}
	for i := range files {
		body := make([]byte, (size-text)/files)
		if _, err := rand.Read(body); err != nil {
			tb.Fatal(err)
		}
		add(fmt.Sprintf("data/random%d.bin", i), body)
	}
	var lines []byte
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	for n := 0; len(lines) < text; n++ {
		lines = fmt.Appendf(lines, "2026-01-01T00:00:%02d.%06dZ seq=%d level=info msg=\"request served\" status=200 bytes=%d\n", n%60, n%1000000, n, rng.IntN(65536))
	}
	add("data/text.log", lines[:text])
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// benchKEK serves the one KEK the benchmark image is wrapped for.
type benchKEK struct {
	kid string
	kek []byte
}

func (k benchKEK) GetResource(_ context.Context, uri string) ([]byte, error) {
	if uri != k.kid {
		return nil, fmt.Errorf("resource %s: not found", uri)
	}
	return bytes.Clone(k.kek), nil
}

// pushEncrypted encrypts img (as `cocoonctl encrypt` does) and pushes it
// next to it; it returns the reference.
func pushEncrypted(tb testing.TB, reg *regtest.Registry, repo string, img v1.Image, kek []byte, kid string) string {
	tb.Helper()
	enc, err := encrypt.Image(context.Background(), img, encrypt.Options{KEK: kek, KID: kid, TmpDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	defer enc.Close()
	encImg, err := enc.Image()
	if err != nil {
		tb.Fatal(err)
	}
	ref := fmt.Sprintf("%s/%s:encrypted", reg.Host, repo)
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(tag, encImg); err != nil {
		tb.Fatal(err)
	}
	return ref
}

// imageRequests resolves ref and returns the layer requests of its image.
func imageRequests(tb testing.TB, ref string) []Request {
	tb.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		tb.Fatal(err)
	}
	return requests(tb, ref, img)
}

// pullAll pulls every layer of reqs with a fresh Puller (nothing cached) and
// discards what it staged; serial runs the stages of each layer in one
// goroutine.
func pullAll(tb testing.TB, host, staging string, o Options, reqs []Request, serial bool) time.Duration {
	tb.Helper()
	o.Registry = registry.New(registry.Options{Insecure: []string{host}})
	o.StagingDir = staging
	p, err := New(o)
	if err != nil {
		tb.Fatal(err)
	}
	p.serial = serial
	defer p.Close()
	var took time.Duration
	for _, r := range reqs {
		start := time.Now()
		st, err := p.Layer(context.Background(), r)
		if err != nil {
			tb.Fatal(err)
		}
		took += time.Since(start) // discarding is not pulling
		if err := st.Discard(); err != nil {
			tb.Fatal(err)
		}
	}
	return took
}

// benchRounds is how many times one benchmark iteration pulls each of the
// four variants, so that even -benchtime 1x gives medians.
const benchRounds = 3

// BenchmarkPullEncryptedOverPlain pulls one ~128 MiB gzip layer from an
// in-process registry, plain and encrypted (ocicrypt AES-256-CTR +
// HMAC-SHA256, key unwrapped from an attestation-agent packet), with a
// fresh Puller each time, each with the stages pipelined across goroutines
// and run serially in one goroutine (the pull before the pipeline), all
// four in turn in every iteration. It reports the median time of each as
// throughput over the plain blob size and the ratios "enc/plain" (1.0 =
// encryption costs nothing; the goal is at most 1.10 on 2 cores),
// "serial-enc/plain" (the same without the pipeline), and the speedup of
// the pipeline for each. The CPU time the process used per pull (registry
// included, "cpu-s/plain", "cpu-s/enc") tells whether a pull was CPU-bound:
// with 2 cores, a pull cannot take less than half its CPU time.
func BenchmarkPullEncryptedOverPlain(b *testing.B) {
	// Per-layer info lines would drown the benchmark's own output.
	if err := log.SetLevel("warn"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = log.SetLevel("info") })
	reg := regtest.Start(b)
	plainRef, img := reg.Push(b, "bench/pull", compression.GZip, true, benchTar(b, benchLayerSize))
	kek := make([]byte, decrypt.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		b.Fatal(err)
	}
	const kid = "kbs:///default/bench/kek"
	encRef := pushEncrypted(b, reg, "bench/pull", img, kek, kid)
	plainReqs, encReqs := imageRequests(b, plainRef), imageRequests(b, encRef)
	m, err := img.Manifest()
	if err != nil {
		b.Fatal(err)
	}
	var blobBytes int64
	for _, l := range m.Layers {
		blobBytes += l.Size
	}
	staging := filepath.Join(b.TempDir(), "staging")
	o := Options{Decrypt: decrypt.Options{Resources: benchKEK{kid: kid, kek: kek}}}
	// Warm up both paths (page cache, registry, key unwrap code).
	pullAll(b, reg.Host, staging, o, plainReqs, false)
	pullAll(b, reg.Host, staging, o, encReqs, false)

	type run struct {
		reqs   []Request
		serial bool
		wall   []time.Duration
		cpu    []time.Duration
	}
	plain, enc := &run{reqs: plainReqs}, &run{reqs: encReqs}
	serialPlain, serialEnc := &run{reqs: plainReqs, serial: true}, &run{reqs: encReqs, serial: true}
	runs := []*run{plain, enc, serialPlain, serialEnc}
	b.ResetTimer()
	for b.Loop() {
		for range benchRounds {
			for _, r := range runs {
				cpu := processCPU(b)
				r.wall = append(r.wall, pullAll(b, reg.Host, staging, o, r.reqs, r.serial))
				r.cpu = append(r.cpu, processCPU(b)-cpu)
			}
		}
	}
	b.StopTimer()
	if e, err := os.ReadDir(staging); err != nil || len(e) != 0 {
		b.Fatalf("staging left %d entries (%v)", len(e), err)
	}
	med := func(r *run) float64 { return medianDuration(r.wall).Seconds() }
	mb := float64(blobBytes) / 1e6
	b.ReportMetric(mb/med(plain), "plain-MB/s")
	b.ReportMetric(mb/med(enc), "enc-MB/s")
	b.ReportMetric(med(enc)/med(plain), "enc/plain")
	b.ReportMetric(med(serialEnc)/med(serialPlain), "serial-enc/plain")
	b.ReportMetric(med(serialPlain)/med(plain), "speedup-plain")
	b.ReportMetric(med(serialEnc)/med(enc), "speedup-enc")
	b.ReportMetric(medianDuration(plain.cpu).Seconds(), "cpu-s/plain")
	b.ReportMetric(medianDuration(enc.cpu).Seconds(), "cpu-s/enc")
	b.ReportMetric(medianDuration(serialPlain.cpu).Seconds(), "cpu-s/serial-plain")
	b.ReportMetric(medianDuration(serialEnc.cpu).Seconds(), "cpu-s/serial-enc")
}

// processCPU is the user and system CPU time of this process so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func medianDuration(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	if len(d)%2 == 1 {
		return d[len(d)/2]
	}
	return (d[len(d)/2-1] + d[len(d)/2]) / 2
}
