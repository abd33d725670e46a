package fusefs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func readAll(t *testing.T, l *Layer, name string) ([]byte, error) {
	t.Helper()
	e, ok := l.Lookup(name)
	if !ok {
		t.Fatalf("%s not in the TOC", name)
	}
	buf := make([]byte, e.Size)
	n, err := l.ReadFile(context.Background(), name, buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

func TestReadFilesVerified(t *testing.T) {
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{})
	for name, want := range bl.files {
		e, ok := l.Lookup(name)
		if !ok || e.Type != "reg" {
			continue // whiteouts are regular in the TOC; checked below
		}
		got, err := readAll(t, l, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(got) != want {
			t.Errorf("%s: %d bytes differ from the %d written", name, len(got), len(want))
		}
	}
	// Unaligned reads across chunk boundaries.
	big := bl.files["bin/big"]
	for _, off := range []int64{0, testChunkSize - 3, 5*testChunkSize + 17, int64(len(big)) - 10} {
		p := make([]byte, 3*testChunkSize)
		n, err := l.ReadFile(context.Background(), "bin/big", p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if string(p[:n]) != big[off:min(int(off)+len(p), len(big))] {
			t.Errorf("read at %d differs", off)
		}
	}
	if _, err := l.ReadFile(context.Background(), "bin/big", make([]byte, 1), int64(len(big))); !errors.Is(err, io.EOF) {
		t.Errorf("read at the end: %v, want EOF", err)
	}
}

func TestWrongTOCDigestRefused(t *testing.T) {
	requireFUSE(t)
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(256<<10))
	blob := reg.push(t, bl)
	_, err := Open(context.Background(), blob, Options{Digest: bl.digest, TOCDigest: digest.FromString("another TOC")})
	if !errors.Is(err, ErrTOCDigest) {
		t.Fatalf("Open with a wrong TOC digest: %v, want ErrTOCDigest", err)
	}
	t.Logf("error: %v", err)
	// No layer, hence no mount: the refusal comes before Mount can run.
	dir := t.TempDir()
	if mounted(t, dir) {
		t.Fatal("a mount exists")
	}
	// Only the footer and the TOC were read.
	if got := reg.Requests.Load(); got != 2 {
		t.Errorf("blob requests = %d (%s), want 2 (footer, TOC)", got, fmtRanges(reg.Ranges()))
	}
}

func TestConcurrentReadsOfOneChunkMakeOneRequest(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, reg.push(t, bl), bl, Options{})
	reg.Reset()
	gate := make(chan struct{})
	reg.Gate.Store(&gate)
	const readers = 16
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			p := make([]byte, 100)
			if _, err := l.ReadFile(context.Background(), "bin/big", p, 3*testChunkSize+10); err != nil {
				errs <- err
				return
			}
			if string(p) != bl.files["bin/big"][3*testChunkSize+10:3*testChunkSize+110] {
				errs <- errors.New("wrong bytes")
			}
		})
	}
	time.Sleep(50 * time.Millisecond) // let the readers pile up on the held request
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := reg.Requests.Load(); got != 1 {
		t.Errorf("range requests = %d (%s), want 1", got, fmtRanges(reg.Ranges()))
	}
}

func TestNeighbouringChunksCoalesced(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	for _, tc := range []struct {
		gap  int64
		want int64
	}{{DefaultCoalesceGap, 1}, {-1, 8}} {
		l := mustOpen(t, reg.push(t, bl), bl, Options{CoalesceGap: tc.gap})
		reg.Reset() // count chunk fetches, not the footer and TOC
		p := make([]byte, 8*testChunkSize)
		if _, err := l.ReadFile(context.Background(), "bin/big", p, 0); err != nil {
			t.Fatal(err)
		}
		if got := reg.Requests.Load(); got != tc.want {
			t.Errorf("gap %d: requests for 8 chunks = %d, want %d", tc.gap, got, tc.want)
		}
	}
}

func TestChunkCacheBounded(t *testing.T) {
	bl := buildLayer(t, testEntries(1<<20))
	c := NewChunkCache(4 * testChunkSize)
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: c})
	if _, err := readAll(t, l, "bin/big"); err != nil {
		t.Fatal(err)
	}
	if c.Used() > 4*testChunkSize || c.Used() == 0 {
		t.Errorf("cache holds %d bytes, bound %d", c.Used(), 4*testChunkSize)
	}
	_ = l.Close()
	if c.Used() != 0 {
		t.Errorf("cache holds %d bytes of a closed layer", c.Used())
	}
}

func TestTamperedChunkFailsThatReadOnly(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	reg2 := prometheus.NewRegistry()
	m, err := NewMetrics(reg2)
	if err != nil {
		t.Fatal(err)
	}
	l := mustOpen(t, reg.push(t, bl), bl, Options{Metrics: m})
	// Flip a byte in the middle of the big file's compressed data.
	ce, _ := l.r.ChunkEntryForOffset("bin/big", 7*testChunkSize)
	reg.TamperAt.Store(ce.Offset + (l.memberEnd(ce)-ce.Offset)/2)
	p := make([]byte, 10)
	_, err = l.ReadFile(context.Background(), "bin/big", p, 7*testChunkSize+5)
	if !errors.Is(err, ErrChunkVerification) {
		t.Fatalf("read of the tampered chunk: %v, want ErrChunkVerification", err)
	}
	if got := testutil.ToFloat64(m.verifyFailures); got != 1 {
		t.Errorf("verify failures = %v, want 1", got)
	}
	// Other chunks and files still read.
	if _, err := l.ReadFile(context.Background(), "bin/big", p, 0); err != nil {
		t.Errorf("other chunk: %v", err)
	}
	if got, err := readAll(t, l, "etc/motd"); err != nil || string(got) != bl.files["etc/motd"] {
		t.Errorf("other file: %v", err)
	}
	// The failure is not cached: once the registry is honest the chunk reads.
	reg.TamperAt.Store(-1)
	if _, err := l.ReadFile(context.Background(), "bin/big", p, 7*testChunkSize+5); err != nil {
		t.Errorf("after the registry is fixed: %v", err)
	}
}

func TestCompleteServesLocally(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, reg.push(t, bl), bl, Options{Cache: NewChunkCache(testChunkSize)})
	reg.Reset()
	dir := t.TempDir()
	if err := l.Complete(context.Background(), CompleteOptions{Dir: dir, DiffID: bl.diff, SegmentSize: 100 << 10, Concurrency: 3}); err != nil {
		t.Fatal(err)
	}
	if !l.Local() {
		t.Fatal("not local after Complete")
	}
	if got := reg.Served.Load(); got != int64(len(bl.blob)) {
		t.Errorf("Complete fetched %d bytes of a %d-byte blob", got, len(bl.blob))
	}
	local, err := os.ReadFile(filepath.Join(dir, bl.digest.Encoded()))
	if err != nil || !bytes.Equal(local, bl.blob) {
		t.Fatalf("local copy: %v", err)
	}
	reg.Reset()
	for name, want := range bl.files {
		if e, ok := l.Lookup(name); !ok || e.Type != "reg" {
			continue
		}
		got, err := readAll(t, l, name)
		if err != nil || string(got) != want {
			t.Fatalf("%s after Complete: %v", name, err)
		}
	}
	if got := reg.Requests.Load(); got != 0 {
		t.Errorf("registry requests after Complete = %d, want 0", got)
	}
}

func TestCompleteMismatchMarksBad(t *testing.T) {
	bl := buildLayer(t, testEntries(512<<10))
	for _, tc := range []struct {
		name   string
		tamper bool
		diffID digest.Digest
	}{
		{"tampered blob", true, bl.diff},
		{"wrong diff ID", false, digest.FromString("other layer")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := startRegistry(t)
			reg2 := prometheus.NewRegistry()
			m, _ := NewMetrics(reg2)
			l := mustOpen(t, reg.push(t, bl), bl, Options{Metrics: m})
			if _, err := readAll(t, l, "etc/motd"); err != nil {
				t.Fatal(err)
			}
			if tc.tamper {
				reg.TamperAt.Store(int64(len(bl.blob)) / 3)
			}
			dir := t.TempDir()
			err := l.Complete(context.Background(), CompleteOptions{Dir: dir, DiffID: tc.diffID})
			if !errors.Is(err, ErrLayerBad) {
				t.Fatalf("Complete: %v, want ErrLayerBad", err)
			}
			t.Logf("error: %v", err)
			if _, err := readAll(t, l, "etc/motd"); !errors.Is(err, ErrLayerBad) {
				t.Errorf("read of a bad layer: %v", err)
			}
			if l.Local() {
				t.Error("bad layer switched to the local copy")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("bad copy left in %s: %v", dir, ents)
			}
			if got := testutil.ToFloat64(m.badLayers); got != 1 {
				t.Errorf("bad layers = %v", got)
			}
		})
	}
}

// hostileBlob writes one payload member, then a TOC member holding tocJSON
// and a footer pointing at it.
func hostileBlob(t testing.TB, payload, tocJSON []byte, footerOff func(tocOff int64) int64) ([]byte, digest.Digest) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(payload)
	_ = zw.Close()
	tocOff := int64(buf.Len())
	zw = gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: int64(len(tocJSON))})
	_, _ = tw.Write(tocJSON)
	_ = tw.Close()
	_ = zw.Close()
	buf.Write(footer(footerOff(tocOff)))
	return buf.Bytes(), digest.FromBytes(tocJSON)
}

func footer(tocOff int64) []byte {
	sub := fmt.Sprintf("%016xSTARGZ", tocOff)
	extra := append([]byte{'S', 'G', byte(len(sub)), 0}, sub...)
	return estargz.CreateGzipFooter(extra)
}

func TestHostileTOCRefused(t *testing.T) {
	payload := []byte("0123456789abcdef")
	pd := digest.FromBytes(payload)
	toc := func(ents ...map[string]any) []byte {
		b, _ := json.Marshal(map[string]any{"version": 1, "entries": ents})
		return b
	}
	reg := func(name string, size, offset int64, extra map[string]any) map[string]any {
		m := map[string]any{"name": name, "type": "reg", "size": size, "offset": offset, "chunkDigest": pd.String()}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	same := func(off int64) int64 { return off }
	for _, tc := range []struct {
		name   string
		toc    []byte
		off    func(int64) int64
		limits Limits
		want   error
	}{
		{"valid", toc(reg("f", 16, 0, nil)), same, Limits{}, nil},
		{"TOC offset beyond the blob", toc(reg("f", 16, 0, nil)), func(int64) int64 { return 1 << 40 }, Limits{}, errdefs.ErrInvalidArgument},
		{"TOC offset negative", toc(reg("f", 16, 0, nil)), func(int64) int64 { return -5 }, Limits{}, errdefs.ErrInvalidArgument},
		{"TOC too big", toc(reg("f", 16, 0, nil)), same, Limits{MaxTOCSize: 64}, ErrLimit},
		{"TOC JSON too big", toc(reg("f", 16, 0, nil)), same, Limits{MaxTOCJSONSize: 32}, ErrLimit},
		{"too many entries", toc(reg("f", 16, 0, nil), reg("g", 0, 0, nil), reg("h", 0, 0, nil)), same, Limits{MaxEntries: 2}, ErrLimit},
		{"chunk offset beyond the TOC", toc(reg("f", 16, 1<<30, nil)), same, Limits{}, ErrLimit},
		{"negative offset", toc(reg("f", 16, -1, nil)), same, Limits{}, ErrLimit},
		{"huge file", toc(reg("f", 1<<40, 0, nil)), same, Limits{}, ErrLimit},
		{"huge chunk", toc(reg("f", 1<<30, 0, map[string]any{"chunkSize": 1 << 29})), same, Limits{}, ErrLimit},
		{"chunk past the file", toc(reg("f", 16, 0, nil), map[string]any{"type": "chunk", "offset": 0, "chunkOffset": 10, "chunkSize": 100, "chunkDigest": pd.String()}), same, Limits{}, ErrLimit},
		{"inner offset huge", toc(reg("f", 16, 0, map[string]any{"innerOffset": 1 << 40})), same, Limits{}, ErrLimit},
		{"not JSON", []byte("{nope"), same, Limits{}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob, td := hostileBlob(t, payload, tc.toc, tc.off)
			l, err := Open(context.Background(), memBlob(blob), Options{Digest: digest.FromBytes(blob), TOCDigest: td, Limits: tc.limits})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				got, err := readAll(t, l, "f")
				if err != nil || string(got) != string(payload) {
					t.Fatalf("valid hand-made layer: %q, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestOpenNeedsDigests(t *testing.T) {
	bl := buildLayer(t, testEntries(1024))
	for _, o := range []Options{{Digest: bl.digest}, {TOCDigest: bl.tocDigest}, {Digest: bl.digest, TOCDigest: "sha256:zz"}} {
		if _, err := Open(context.Background(), memBlob(bl.blob), o); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Open(%+v): %v", o, err)
		}
	}
	if _, err := Open(context.Background(), memBlob("short"), Options{Digest: bl.digest, TOCDigest: bl.tocDigest}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Open of a 5-byte blob: %v", err)
	}
}

func FuzzOpenTOC(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"name":"f","type":"reg","size":16,"offset":0,"chunkDigest":"sha256:` +
		digest.FromString("0123456789abcdef").Encoded() + `"}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"name":"a/b","type":"hardlink","linkName":"a/b"},{"name":"../x","type":"chunk","chunkSize":3}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"name":"f","type":"reg","size":100,"chunkSize":10,"offset":0},{"type":"chunk","chunkOffset":10,"offset":0}]}`))
	f.Fuzz(func(t *testing.T, tocJSON []byte) {
		blob, td := hostileBlob(t, []byte("0123456789abcdef"), tocJSON, func(o int64) int64 { return o })
		l, err := Open(context.Background(), memBlob(blob), Options{Digest: digest.FromBytes(blob), TOCDigest: td,
			Limits: Limits{MaxEntries: 1000, MaxChunkSize: 1 << 20}})
		if err != nil {
			return
		}
		var walk func(e *estargz.TOCEntry, depth int)
		walk = func(e *estargz.TOCEntry, depth int) {
			if depth > 50 {
				return
			}
			e.ForeachChild(func(_ string, c *estargz.TOCEntry) bool {
				if c.Type == "reg" {
					_, _ = l.readEntry(context.Background(), c, make([]byte, 64), 0)
				}
				if c.Type == "dir" {
					walk(c, depth+1)
				}
				return true
			})
		}
		root, _ := l.Lookup("")
		walk(root, 0)
	})
}

// A decrypting Blob's bytes are not the descriptor's: the Verifier, fed
// the whole local copy in order, stands in for the compressed digest, and
// its verdict decides.
func TestCompleteWithVerifier(t *testing.T) {
	bl := buildLayer(t, testEntries(256<<10))
	for _, tc := range []struct {
		name    string
		verdict error
		wantBad bool
	}{
		{"ciphertext verified", nil, false},
		{"HMAC mismatch", fmt.Errorf("HMAC differs: %w", errdefs.ErrFailedPrecondition), true},
		{"verifier failed otherwise", errors.New("key cleared"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ciphertext := digest.FromString("the encrypted blob")
			l, err := Open(context.Background(), memBlob(bl.blob), Options{Digest: ciphertext, TOCDigest: bl.tocDigest})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			v := &recordingVerifier{verdict: tc.verdict}
			err = l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff,
				Verifier: func() (BlobVerifier, error) { return v, nil }})
			if !bytes.Equal(v.got.Bytes(), bl.blob) || !v.verified {
				t.Fatalf("the verifier saw %d of %d bytes (verified: %v)", v.got.Len(), len(bl.blob), v.verified)
			}
			if (tc.verdict == nil) != (err == nil) || errors.Is(err, ErrLayerBad) != tc.wantBad {
				t.Fatalf("Complete: %v", err)
			}
			if l.Local() != (tc.verdict == nil) {
				t.Errorf("local = %v", l.Local())
			}
			if !tc.wantBad {
				if _, err := readAll(t, l, "etc/motd"); err != nil {
					t.Errorf("read: %v", err)
				}
			}
		})
	}
}

// recordingVerifier keeps what it was written and answers a set verdict.
type recordingVerifier struct {
	got      bytes.Buffer
	verdict  error
	verified bool
}

func (v *recordingVerifier) Write(p []byte) (int, error) { return v.got.Write(p) }
func (v *recordingVerifier) Verify() error               { v.verified = true; return v.verdict }

// A read that joined another's fetch does not fail because the other read
// was interrupted.
func TestJoinedReadSurvivesLeaderCancel(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, reg.push(t, bl), bl, Options{})
	gate := make(chan struct{})
	reg.Gate.Store(&gate)
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := l.ReadFile(leaderCtx, "bin/big", make([]byte, 10), 2*testChunkSize)
		leaderErr <- err
	}()
	time.Sleep(30 * time.Millisecond) // the leader's request is held at the gate
	joinErr := make(chan error, 1)
	go func() {
		p := make([]byte, 10)
		_, err := l.ReadFile(context.Background(), "bin/big", p, 2*testChunkSize)
		if err == nil && string(p) != bl.files["bin/big"][2*testChunkSize:2*testChunkSize+10] {
			err = errors.New("wrong bytes")
		}
		joinErr <- err
	}()
	time.Sleep(30 * time.Millisecond) // the joiner waits on the leader's flight
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v, want context.Canceled", err)
	}
	reg.Gate.Store(nil)
	close(gate)
	if err := <-joinErr; err != nil {
		t.Fatalf("joined read: %v", err)
	}
}

// Mirrors come first; a location without the blob is skipped, and the one
// that answered is asked first from then on.
func TestRegistryBlobFallsBackAcrossLocations(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(64<<10))
	reg.push(t, bl)
	mirror, err := reg.client.ParseRepository(reg.Host + "/mirror/empty")
	if err != nil {
		t.Fatal(err)
	}
	origin, err := reg.client.ParseRepository(reg.Host + "/lazy/img")
	if err != nil {
		t.Fatal(err)
	}
	blob, err := NewRegistryBlob(reg.client, []name.Repository{mirror, origin}, bl.desc())
	if err != nil {
		t.Fatal(err)
	}
	l := mustOpen(t, blob, bl, Options{})
	reg.Reset()
	if got, err := readAll(t, l, "etc/motd"); err != nil || string(got) != bl.files["etc/motd"] {
		t.Fatalf("read: %v", err)
	}
	if got := reg.Requests.Load(); got != 1 {
		t.Errorf("requests after the fallback = %d, want 1 (straight to the location that answered)", got)
	}
	if _, err := NewRegistryBlob(reg.client, nil, bl.desc()); err == nil {
		t.Error("a blob without locations was accepted")
	}
}

// zstd:chunked blobs (the same TOC in a zstd layout) read, fail on a
// tampered chunk, and complete like eStargz ones.
func TestZstdChunked(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20), estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}}))
	m, _ := NewMetrics(prometheus.NewRegistry())
	l := mustOpen(t, reg.push(t, bl), bl, Options{Metrics: m, Cache: NewChunkCache(testChunkSize)})
	if l.format != zstdFormat {
		t.Fatalf("format %s", l.format.name)
	}
	for _, name := range []string{"bin/big", "etc/motd", "medium", "etc/hostname"} {
		got, err := readAll(t, l, name)
		if err != nil || string(got) != bl.files[name] {
			t.Fatalf("%s: %v", name, err)
		}
	}
	ce, _ := l.r.ChunkEntryForOffset("bin/big", 5*testChunkSize)
	reg.TamperAt.Store(ce.Offset + (l.memberEnd(ce)-ce.Offset)/2)
	if _, err := l.ReadFile(context.Background(), "bin/big", make([]byte, 10), 5*testChunkSize); !errors.Is(err, ErrChunkVerification) {
		t.Fatalf("tampered chunk: %v", err)
	}
	if got := testutil.ToFloat64(m.verifyFailures); got != 1 {
		t.Errorf("verify failures = %v", got)
	}
	reg.TamperAt.Store(-1)
	if err := l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	if got, err := readAll(t, l, "bin/big"); err != nil || string(got) != bl.files["bin/big"] {
		t.Fatalf("after Complete: %v", err)
	}
	if got := reg.Requests.Load(); got != 0 {
		t.Errorf("requests after Complete = %d", got)
	}
}

type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func TestHostileZstdFooterRefused(t *testing.T) {
	zfooter := func(off, size uint64) []byte {
		f := make([]byte, zstdchunked.FooterSize)
		binary.LittleEndian.PutUint64(f, off)
		binary.LittleEndian.PutUint64(f[8:], size)
		binary.LittleEndian.PutUint64(f[24:], 1)
		copy(f[32:], []byte{0x47, 0x6e, 0x55, 0x6c, 0x49, 0x6e, 0x55, 0x78})
		return f
	}
	body := bytes.Repeat([]byte{7}, 1000)
	for _, tc := range []struct {
		name      string
		off, size uint64
		limits    Limits
		want      error
	}{
		{"TOC beyond the blob", 900, 1 << 40, Limits{}, errdefs.ErrInvalidArgument},
		{"TOC offset past the end", 1 << 50, 10, Limits{}, errdefs.ErrInvalidArgument},
		{"TOC too big", 100, 800, Limits{MaxTOCSize: 100}, ErrLimit},
		{"TOC not zstd", 100, 800, Limits{}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := append(append([]byte{}, body...), zfooter(tc.off, tc.size)...)
			_, err := Open(context.Background(), memBlob(blob), Options{Digest: digest.FromBytes(blob), TOCDigest: digest.FromString("x"), Limits: tc.limits})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPrefetchPrioritizedFiles(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20), estargz.WithPrioritizedFiles([]string{"etc/motd", "medium"}))
	l := mustOpen(t, reg.push(t, bl), bl, Options{})
	if got := l.Prioritized(); !slices.Equal(got, []string{"etc/motd", "medium"}) {
		t.Fatalf("prioritized = %v", got)
	}
	reg.Reset()
	n, err := l.Prefetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(len(bl.files["etc/motd"]) + len(bl.files["medium"])); n != want {
		t.Errorf("prefetched %d bytes, want %d", n, want)
	}
	if got := reg.Requests.Load(); got != 1 {
		t.Errorf("prefetch made %d requests, want 1 (the files are neighbours)", got)
	}
	reg.Reset()
	for _, name := range []string{"etc/motd", "medium"} {
		if got, err := readAll(t, l, name); err != nil || string(got) != bl.files[name] {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if got := reg.Requests.Load(); got != 0 {
		t.Errorf("reading prefetched files made %d requests", got)
	}
	// Without a landmark nothing is prioritized.
	plain := buildLayer(t, testEntries(1024))
	if got := mustOpen(t, memBlob(plain.blob), plain, Options{}).Prioritized(); len(got) != 0 {
		t.Errorf("no landmark: prioritized = %v", got)
	}
}
