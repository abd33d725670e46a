package fusefs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
)

// Defaults of Options and Limits.
const (
	DefaultCacheBytes  = 64 << 20
	DefaultCoalesceGap = 256 << 10
	DefaultMaxFetch    = 8 << 20

	DefaultMaxTOCSize     = 32 << 20
	DefaultMaxTOCJSONSize = 256 << 20
	DefaultMaxEntries     = 1 << 22
	DefaultMaxChunkSize   = 32 << 20
)

// maxFileSize bounds the size a TOC may claim for one file (1 PiB): beyond
// it offsets overflow nothing yet but serve no real layer.
const maxFileSize = 1 << 50

// maxPathLen bounds entry names and link targets (PATH_MAX), and with them
// the depth of the tree the reader and the mount walk recursively.
const maxPathLen = 4096

// Errors a read or Open may wrap (test with errors.Is).
var (
	// ErrTOCDigest: the blob's TOC is not the one the manifest names.
	ErrTOCDigest = errors.New("TOC digest mismatch")
	// ErrChunkVerification: a chunk's bytes do not match its TOC digest
	// (or do not decompress); only reads of that chunk fail.
	ErrChunkVerification = errors.New("chunk verification failed")
	// ErrLayerBad: the completed blob failed its digest or diff ID check;
	// every read of the layer fails from then on.
	ErrLayerBad = errors.New("layer marked bad")
	// ErrLimit: an untrusted size or count exceeds a limit.
	ErrLimit = errors.New("limit exceeded")
)

// Limits bound what an untrusted blob and TOC can make the reader fetch,
// allocate or decompress. Zero fields take the defaults.
type Limits struct {
	MaxTOCSize     int64 // compressed TOC bytes
	MaxTOCJSONSize int64 // uncompressed TOC JSON bytes
	MaxEntries     int   // TOC entries
	MaxChunkSize   int64 // uncompressed bytes of one chunk; compressed spans get twice this
}

// Options configure a Layer.
type Options struct {
	// Digest is the compressed blob's digest (the layer descriptor's): it
	// names the layer in logs and Complete checks the blob against it.
	Digest digest.Digest
	// TOCDigest is the expected digest of the TOC JSON, from the
	// containerd.io/snapshot/stargz/toc.digest annotation of a manifest
	// that was fetched by digest and accepted by the image policy.
	TOCDigest digest.Digest
	// Cache holds verified uncompressed chunks; nil gives the layer its own
	// of DefaultCacheBytes. One cache may be shared by many layers.
	Cache *ChunkCache
	// CoalesceGap: chunks missing from the cache whose compressed ranges
	// are at most this far apart are fetched in one request (default
	// DefaultCoalesceGap; negative: never coalesce).
	CoalesceGap int64
	// MaxFetch stops a coalesced request from growing past this many
	// bytes (default DefaultMaxFetch); a single larger chunk is still one
	// request.
	MaxFetch int64
	// Metrics, when set, counts fetches and verification failures.
	Metrics *Metrics
	Limits  Limits
}

// Layer serves the files of one eStargz layer blob, verifying every chunk
// against the TOC before any byte of it is returned. It is safe for
// concurrent use.
type Layer struct {
	opts      Options
	id        uint64 // distinguishes this layer's chunks in a shared cache
	size      int64
	tocOffset int64
	r         *estargz.Reader
	verifier  estargz.TOCEntryVerifier
	format    *format
	// prioritized are the files before the prefetch landmark.
	prioritized []string
	log         *log.Entry

	src   atomic.Pointer[blobRef] // the registry, then the local copy
	local atomic.Bool

	mu      sync.Mutex
	flights map[chunkKey]*chunkFlight

	bad     atomic.Pointer[error]
	badOnce sync.Once

	completeMu sync.Mutex // one Complete at a time
	closeOnce  sync.Once

	plain plainFiles // whole files materialised for passthrough
}

type blobRef struct{ Blob }

type chunkFlight struct {
	done chan struct{}
	data []byte
	err  error
}

var layerIDs atomic.Uint64

// Open reads the footer and TOC of the eStargz blob by range, checks the
// TOC's digest against opts.TOCDigest before anything parses it, checks the
// sizes and offsets the TOC gives against the limits and the blob, and
// returns the Layer. No file byte is fetched.
func Open(ctx context.Context, blob Blob, opts Options) (*Layer, error) {
	if err := opts.TOCDigest.Validate(); err != nil {
		return nil, fmt.Errorf("fusefs: TOC digest %q: %w: %w", opts.TOCDigest, err, errdefs.ErrInvalidArgument)
	}
	if err := opts.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("fusefs: layer digest %q: %w: %w", opts.Digest, err, errdefs.ErrInvalidArgument)
	}
	opts = opts.withDefaults()
	l := &Layer{
		opts:    opts,
		id:      layerIDs.Add(1),
		size:    blob.Size(),
		flights: map[chunkKey]*chunkFlight{},
		log:     log.G(ctx).WithField("layer", opts.Digest),
	}
	l.src.Store(&blobRef{blob})
	if err := l.open(ctx, blob); err != nil {
		return nil, fmt.Errorf("fusefs: open layer %s: %w", opts.Digest, err)
	}
	return l, nil
}

func (o Options) withDefaults() Options {
	if o.Cache == nil {
		o.Cache = NewChunkCache(DefaultCacheBytes)
	}
	if o.CoalesceGap == 0 {
		o.CoalesceGap = DefaultCoalesceGap
	}
	if o.MaxFetch <= 0 {
		o.MaxFetch = DefaultMaxFetch
	}
	if o.Limits.MaxTOCSize <= 0 {
		o.Limits.MaxTOCSize = DefaultMaxTOCSize
	}
	if o.Limits.MaxTOCJSONSize <= 0 {
		o.Limits.MaxTOCJSONSize = DefaultMaxTOCJSONSize
	}
	if o.Limits.MaxEntries <= 0 {
		o.Limits.MaxEntries = DefaultMaxEntries
	}
	if o.Limits.MaxChunkSize <= 0 {
		o.Limits.MaxChunkSize = DefaultMaxChunkSize
	}
	return o
}

func (l *Layer) open(ctx context.Context, blob Blob) error {
	lim := l.opts.Limits
	const minFooter = zstdchunked.FooterSize
	if l.size < minFooter {
		return fmt.Errorf("blob of %d bytes is smaller than a footer: %w", l.size, errdefs.ErrInvalidArgument)
	}
	footer := make([]byte, min(maxFooterSize, l.size))
	if _, err := blob.ReadAt(ctx, footer, l.size-int64(len(footer))); err != nil {
		return fmt.Errorf("read footer: %w", err)
	}
	f, tocOffset, tocSize, err := parseFooter(footer, l.size)
	if err != nil {
		return err
	}
	if tocSize > lim.MaxTOCSize {
		return fmt.Errorf("TOC of %d bytes exceeds %d: %w", tocSize, lim.MaxTOCSize, ErrLimit)
	}
	// One read from the TOC to the end (footer included), starting early
	// enough that estargz.Open finds its footer bytes in it too.
	tailOff := min(tocOffset, l.size-int64(len(footer)))
	tail := make([]byte, l.size-tailOff)
	if _, err := blob.ReadAt(ctx, tail, tailOff); err != nil {
		return fmt.Errorf("read TOC: %w", err)
	}
	if !bytes.Equal(tail[int64(len(tail))-int64(len(footer)):], footer) {
		return fmt.Errorf("footer changed between two reads: %w", errdefs.ErrFailedPrecondition)
	}
	tocJSON, err := decompressTOC(f, tail[tocOffset-tailOff:tocOffset-tailOff+tocSize], lim.MaxTOCJSONSize)
	if err != nil {
		return err
	}
	// The digest is checked on the bytes before JSON parses them.
	if got := l.opts.TOCDigest.Algorithm().FromBytes(tocJSON); got != l.opts.TOCDigest {
		return fmt.Errorf("%w: the blob's TOC is %s, the manifest names %s", ErrTOCDigest, got, l.opts.TOCDigest)
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(tocJSON, &toc); err != nil {
		return fmt.Errorf("TOC JSON: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := checkEntries(toc.Entries, tocOffset, lim); err != nil {
		return err
	}
	sr := io.NewSectionReader(tailReaderAt{tail: tail, off: tailOff}, 0, l.size)
	r, err := estargz.Open(sr, estargz.WithDecompressors(f.dec))
	if err != nil {
		return fmt.Errorf("parse TOC: %w", err)
	}
	if root, ok := r.Lookup(""); !ok || root.Type != "dir" {
		return fmt.Errorf("TOC has no root directory: %w", errdefs.ErrInvalidArgument)
	}
	v, err := r.VerifyTOC(l.opts.TOCDigest)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTOCDigest, err)
	}
	l.r, l.verifier, l.tocOffset, l.format = r, v, tocOffset, f
	l.prioritized = prioritized(toc.Entries)
	return nil
}

// prioritized lists the regular files before the .prefetch.landmark, in
// blob order.
func prioritized(entries []*estargz.TOCEntry) []string {
	var names []string
	seen := map[string]bool{}
	for _, e := range entries {
		name := strings.TrimPrefix(path.Clean("/"+e.Name), "/")
		if name == estargz.PrefetchLandmark {
			return names
		}
		if name == estargz.NoPrefetchLandmark {
			return nil
		}
		if e.Type == "reg" && e.Size > 0 && !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return nil // no landmark: nothing was prioritized
}

// decompressTOC returns the TOC JSON of a compressed TOC, refusing more
// than max bytes.
func decompressTOC(f *format, compressed []byte, max int64) ([]byte, error) {
	rc, err := f.tocJSON(compressed)
	if err != nil {
		return nil, fmt.Errorf("%s TOC: %w: %w", f.name, err, errdefs.ErrInvalidArgument)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("decompress %s TOC: %w: %w", f.name, err, errdefs.ErrInvalidArgument)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("TOC JSON larger than %d bytes: %w", max, ErrLimit)
	}
	return b, nil
}

// checkEntries refuses counts, sizes and offsets no sane layer has, before
// the estargz reader indexes the entries and before a read relies on them.
func checkEntries(entries []*estargz.TOCEntry, tocOffset int64, lim Limits) error {
	if len(entries) > lim.MaxEntries {
		return fmt.Errorf("TOC has %d entries, limit %d: %w", len(entries), lim.MaxEntries, ErrLimit)
	}
	var lastReg *estargz.TOCEntry
	for i, e := range entries {
		if e == nil {
			return fmt.Errorf("TOC entry %d is null: %w", i, errdefs.ErrInvalidArgument)
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("TOC entry %d (%q): %s: %w", i, e.Name, fmt.Sprintf(format, a...), ErrLimit)
		}
		if len(e.Name) > maxPathLen || len(e.LinkName) > maxPathLen {
			return bad("name or link target longer than %d bytes", maxPathLen)
		}
		if e.Size < 0 || e.Size > maxFileSize || e.ChunkOffset < 0 || e.ChunkSize < 0 || e.InnerOffset < 0 || e.Offset < 0 {
			return bad("negative or huge size or offset")
		}
		switch e.Type {
		case "reg":
			lastReg = e
			if e.Size == 0 {
				continue
			}
			first := e.ChunkSize
			if first == 0 {
				first = e.Size
			}
			if first > lim.MaxChunkSize || first > e.Size {
				return bad("chunk of %d bytes (file %d, limit %d)", first, e.Size, lim.MaxChunkSize)
			}
		case "chunk":
			if lastReg == nil {
				return bad("chunk without a regular file before it")
			}
			size := e.ChunkSize
			if size == 0 {
				size = lastReg.Size - e.ChunkOffset
			}
			if size <= 0 || size > lim.MaxChunkSize || e.ChunkOffset+size > lastReg.Size {
				return bad("chunk of %d bytes at %d (file %d, limit %d)", size, e.ChunkOffset, lastReg.Size, lim.MaxChunkSize)
			}
		default:
			continue
		}
		if e.Offset >= tocOffset {
			return bad("data offset %d at or beyond the TOC at %d", e.Offset, tocOffset)
		}
		if e.InnerOffset > lim.MaxChunkSize {
			return bad("inner offset %d exceeds %d", e.InnerOffset, lim.MaxChunkSize)
		}
	}
	return nil
}

// tailReaderAt serves estargz.Open the footer and TOC already fetched (and
// digest-checked); Open reads nothing else.
type tailReaderAt struct {
	tail []byte
	off  int64
}

func (t tailReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < t.off || off-t.off > int64(len(t.tail)) {
		return 0, fmt.Errorf("read at %d outside the TOC fetched at %d", off, t.off)
	}
	n := copy(p, t.tail[off-t.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Digest returns the layer's compressed blob digest.
func (l *Layer) Digest() digest.Digest { return l.opts.Digest }

// Lookup returns the TOC entry of a path relative to the layer root ("" is
// the root); a hardlink resolves to its target's entry.
func (l *Layer) Lookup(name string) (*estargz.TOCEntry, bool) { return l.r.Lookup(name) }

// Local reports whether reads are served from the verified local copy.
func (l *Layer) Local() bool { return l.local.Load() }

// ReadFile reads the regular file name at off, verified. It returns
// io.EOF at the end of the file like io.ReaderAt.
func (l *Layer) ReadFile(ctx context.Context, name string, p []byte, off int64) (int, error) {
	e, ok := l.r.Lookup(name)
	if !ok {
		return 0, fmt.Errorf("%s: %w", name, errdefs.ErrNotFound)
	}
	if e.Type != "reg" {
		return 0, fmt.Errorf("%s is not a regular file: %w", name, errdefs.ErrInvalidArgument)
	}
	return l.readEntry(ctx, e, p, off)
}

// readEntry reads a regular file's entry (never a hardlink: Lookup has
// resolved those).
func (l *Layer) readEntry(ctx context.Context, e *estargz.TOCEntry, p []byte, off int64) (int, error) {
	parts, err := l.slices(ctx, e, int64(len(p)), off)
	n := 0
	for _, b := range parts {
		n += copy(p[n:], b)
	}
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// slices returns the verified bytes of [off, off+size) of a regular file's
// entry as slices of cached chunks (read-only: callers copy or send them),
// and io.EOF when the range passes the end of the file.
func (l *Layer) slices(ctx context.Context, e *estargz.TOCEntry, size, off int64) ([][]byte, error) {
	if err := l.badErr(); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("negative offset %d: %w", off, errdefs.ErrInvalidArgument)
	}
	if off >= e.Size {
		return nil, io.EOF
	}
	end := min(off+size, e.Size)
	var chunks []*estargz.TOCEntry
	for o := off; o < end; {
		ce, ok := l.r.ChunkEntryForOffset(e.Name, o)
		if !ok || ce.ChunkSize <= 0 || ce.ChunkOffset > o || ce.ChunkOffset+ce.ChunkSize <= o {
			return nil, fmt.Errorf("%s: the TOC has no chunk for offset %d: %w", e.Name, o, errdefs.ErrInvalidArgument)
		}
		chunks = append(chunks, ce)
		o = ce.ChunkOffset + ce.ChunkSize
	}
	data, err := l.chunkData(ctx, chunks)
	if err != nil {
		return nil, err
	}
	parts := make([][]byte, len(chunks))
	for i, ce := range chunks {
		lo := max(off, ce.ChunkOffset) - ce.ChunkOffset
		hi := min(end, ce.ChunkOffset+ce.ChunkSize) - ce.ChunkOffset
		parts[i] = data[i][lo:hi]
	}
	if end < off+size {
		return parts, io.EOF
	}
	return parts, nil
}

type chunkKey struct {
	layer         uint64
	offset, inner int64
}

func (l *Layer) key(ce *estargz.TOCEntry) chunkKey {
	return chunkKey{layer: l.id, offset: ce.Offset, inner: ce.InnerOffset}
}

// chunkData returns the verified uncompressed bytes of each chunk: from the
// cache, from a fetch another read has in flight, or fetched now with
// neighbouring chunks coalesced into one request.
func (l *Layer) chunkData(ctx context.Context, chunks []*estargz.TOCEntry) ([][]byte, error) {
	out := make([][]byte, len(chunks))
	var mine []int
	type wait struct {
		i int
		f *chunkFlight
	}
	var waits []wait
	own := map[int]*chunkFlight{}
	l.mu.Lock()
	for i, ce := range chunks {
		k := l.key(ce)
		if b, ok := l.opts.Cache.get(k); ok {
			out[i] = b
			continue
		}
		if f, ok := l.flights[k]; ok {
			waits = append(waits, wait{i, f})
			continue
		}
		f := &chunkFlight{done: make(chan struct{})}
		l.flights[k] = f
		own[i] = f
		mine = append(mine, i)
	}
	l.mu.Unlock()

	// Every flight this call opened is closed, whatever happens.
	finish := func(i int, data []byte, err error) {
		f := own[i]
		if f == nil {
			return
		}
		delete(own, i)
		f.data, f.err = data, err
		l.mu.Lock()
		if err == nil {
			l.opts.Cache.add(l.key(chunks[i]), data)
		}
		delete(l.flights, l.key(chunks[i]))
		l.mu.Unlock()
		close(f.done)
	}
	defer func() {
		for i := range own {
			finish(i, nil, errors.New("chunk fetch abandoned"))
		}
	}()

	var firstErr error
	for _, span := range l.spans(chunks, mine) {
		if err := l.fetchSpan(ctx, chunks, span, out, finish); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	for _, w := range waits {
		select {
		case <-w.f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if w.f.err != nil {
			if !cancelled(w.f.err) || ctx.Err() != nil {
				return nil, w.f.err
			}
			// The read that fetched it was interrupted, not this one: fetch
			// it again.
			again, err := l.chunkData(ctx, chunks[w.i:w.i+1])
			if err != nil {
				return nil, err
			}
			out[w.i] = again[0]
			continue
		}
		out[w.i] = w.f.data
	}
	return out, nil
}

func cancelled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// span is chunks (indexes) fetched by one request of [start, end).
type span struct {
	idx        []int
	start, end int64
}

// spans groups the chunks to fetch into requests: neighbours at most
// CoalesceGap apart share one, up to MaxFetch bytes.
func (l *Layer) spans(chunks []*estargz.TOCEntry, mine []int) []span {
	sort.Slice(mine, func(a, b int) bool { return chunks[mine[a]].Offset < chunks[mine[b]].Offset })
	var out []span
	for _, i := range mine {
		s, e := chunks[i].Offset, l.memberEnd(chunks[i])
		if n := len(out); n > 0 {
			cur := &out[n-1]
			if l.opts.CoalesceGap >= 0 && s-cur.end <= l.opts.CoalesceGap && max(e, cur.end)-cur.start <= l.opts.MaxFetch {
				cur.idx = append(cur.idx, i)
				cur.end = max(cur.end, e)
				continue
			}
		}
		out = append(out, span{idx: []int{i}, start: s, end: e})
	}
	return out
}

// memberEnd is where the compressed data of a chunk ends: the next data
// entry's offset, never past the TOC.
func (l *Layer) memberEnd(ce *estargz.TOCEntry) int64 {
	return min(ce.NextOffset(), l.tocOffset)
}

func (l *Layer) fetchSpan(ctx context.Context, chunks []*estargz.TOCEntry, sp span, out [][]byte, finish func(int, []byte, error)) error {
	maxCompressed := 2 * l.opts.Limits.MaxChunkSize
	for _, i := range sp.idx {
		ce := chunks[i]
		if n := l.memberEnd(ce) - ce.Offset; n <= 0 || n > maxCompressed {
			err := fmt.Errorf("%s at %d: compressed chunk of %d bytes at %d (limit %d): %w", ce.Name, ce.ChunkOffset, n, ce.Offset, maxCompressed, ErrLimit)
			for _, j := range sp.idx {
				finish(j, nil, err)
			}
			return err
		}
	}
	buf := make([]byte, sp.end-sp.start)
	src := l.src.Load()
	if l.opts.Metrics != nil && !l.local.Load() {
		l.opts.Metrics.requests.Inc()
		l.opts.Metrics.fetched.Add(float64(len(buf)))
	}
	if _, err := src.ReadAt(ctx, buf, sp.start); err != nil {
		err = fmt.Errorf("%s: fetch bytes %d-%d of the layer: %w", chunks[sp.idx[0]].Name, sp.start, sp.end-1, err)
		for _, i := range sp.idx {
			finish(i, nil, err)
		}
		return err
	}
	var firstErr error
	for _, i := range sp.idx {
		ce := chunks[i]
		data, err := l.decode(ce, buf[ce.Offset-sp.start:l.memberEnd(ce)-sp.start])
		if err != nil {
			l.log.WithFields(log.Fields{"file": ce.Name, "offset": ce.ChunkOffset, "size": ce.ChunkSize}).WithError(err).
				Error("lazy layer: chunk verification failed, read refused")
			if l.opts.Metrics != nil {
				l.opts.Metrics.verifyFailures.Inc()
			}
			err = fmt.Errorf("%s at offset %d: %w: %w", ce.Name, ce.ChunkOffset, ErrChunkVerification, err)
			if firstErr == nil {
				firstErr = err
			}
		} else {
			out[i] = data
		}
		finish(i, data, err)
	}
	return firstErr
}

// decode decompresses one chunk from its gzip member and checks it against
// the TOC's chunk digest; unverified bytes never leave this function.
func (l *Layer) decode(ce *estargz.TOCEntry, member []byte) ([]byte, error) {
	if ce.ChunkSize > l.opts.Limits.MaxChunkSize || ce.InnerOffset > l.opts.Limits.MaxChunkSize {
		return nil, fmt.Errorf("chunk of %d bytes at inner offset %d: %w", ce.ChunkSize, ce.InnerOffset, ErrLimit)
	}
	v, err := l.verifier.Verifier(ce)
	if err != nil {
		return nil, err
	}
	zr, err := l.format.stream(bytes.NewReader(member), true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.format.name, err)
	}
	defer zr.Close()
	if _, err := io.CopyN(io.Discard, zr, ce.InnerOffset); err != nil {
		return nil, fmt.Errorf("%s: skip to inner offset %d: %w", l.format.name, ce.InnerOffset, err)
	}
	data := make([]byte, ce.ChunkSize)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("%s: %w", l.format.name, err)
	}
	if _, err := v.Write(data); err != nil {
		return nil, err
	}
	if !v.Verified() {
		return nil, errors.New("digest differs from the TOC's chunkDigest")
	}
	return data, nil
}

func (l *Layer) badErr() error {
	if p := l.bad.Load(); p != nil {
		return *p
	}
	return nil
}

// markBad makes every further read fail with cause; it logs once.
func (l *Layer) markBad(cause error) {
	l.badOnce.Do(func() {
		err := fmt.Errorf("layer %s: %w: %w", l.opts.Digest, ErrLayerBad, cause)
		l.bad.Store(&err)
		if l.opts.Metrics != nil {
			l.opts.Metrics.badLayers.Inc()
		}
		l.log.WithError(cause).Error("lazy layer: marked bad, every read fails from now on")
	})
}

// Bad returns the error every read of a bad layer gets, or nil.
func (l *Layer) Bad() error { return l.badErr() }

// Close releases the local copy's file (not the file itself: its
// directory belongs to the caller) and the layer's cached chunks.
func (l *Layer) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.opts.Cache.dropLayer(l.id)
		if fb, ok := l.src.Load().Blob.(*FileBlob); ok {
			err = fb.Close()
		}
	})
	return err
}
