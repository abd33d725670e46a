package luks2

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // LUKS2 headers may name sha1 (cryptsetup interop), never chosen by us
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"reflect"
	"sort"
	"strconv"
)

// BinaryHeaderSize is the size of the fixed binary part of each header copy.
const BinaryHeaderSize = 4096

// DefaultHeaderSize is cryptsetup's default size of one header copy (binary
// header plus JSON area).
const DefaultHeaderSize = 16384

// DefaultKeyslotsSize is cryptsetup's default keyslots area size for a 16 MiB
// metadata region.
const DefaultKeyslotsSize = 16<<20 - 2*DefaultHeaderSize

var (
	// ErrInvalidHeader reports a header that is not a valid LUKS2 header:
	// wrong magic or version, bad checksum, malformed or inconsistent JSON.
	ErrInvalidHeader = errors.New("invalid LUKS2 header")
	// ErrWrongPassphrase reports that no keyslot opens with the passphrase.
	ErrWrongPassphrase = errors.New("no keyslot opens with this passphrase")
	// ErrUnsupported reports a valid header using a feature we do not
	// implement (integrity, reencryption, an unknown KDF or cipher).
	ErrUnsupported = errors.New("unsupported LUKS2 feature")
)

var (
	magicPrimary   = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	magicSecondary = []byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
	validHdrSizes  = []uint64{16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304}
)

// Binary header field offsets (cryptsetup docs/on-disk-format-luks2.pdf).
const (
	offMagic     = 0
	offVersion   = 6
	offHdrSize   = 8
	offSeqID     = 16
	offLabel     = 24
	offCsumAlg   = 72
	offSalt      = 104
	offUUID      = 168
	offSubsystem = 208
	offHdrOffset = 256
	offCsum      = 448
	lenLabel     = 48
	lenCsumAlg   = 32
	lenSalt      = 64
	lenUUID      = 40
	lenSubsystem = 48
	lenCsum      = 64
)

// Limits from cryptsetup (lib/crypto_backend/pbkdf_check.c,
// crypt_pbkdf_get_limits; lib/luks2/luks2.h, LUKS2_MAX_KEYSLOTS_SIZE).
// cryptsetup never writes a header outside them, and they bound what one
// unlock attempt on an untrusted header can cost: Parse refuses a header
// beyond any of them, naming the field, before a key derivation runs.
const (
	// MaxKeyslotsSize is the largest keyslots area (config keyslots_size).
	MaxKeyslotsSize = 128 << 20
	// MaxIterations bounds PBKDF2 iterations of keyslots and digests and
	// the argon2 time cost.
	MaxIterations = math.MaxUint32
	// MaxArgon2MemoryKiB is the largest argon2 memory cost (4 GiB).
	MaxArgon2MemoryKiB = 4 << 20
	// MaxArgon2Threads is the largest argon2 parallelism (kdf cpus).
	MaxArgon2Threads = 4
)

// U64 is a 64-bit number that LUKS2 JSON stores as a decimal string: an
// offset or a size (or a segment's iv_tweak). Every such value ends up as
// an int64 file offset, so Parse refuses values above math.MaxInt64 by
// field name; decoding refuses only what does not fit a uint64.
type U64 uint64

// MarshalJSON encodes the number as a JSON string.
func (u U64) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatUint(uint64(u), 10) + `"`), nil
}

// UnmarshalJSON decodes a decimal string.
func (u *U64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("expected a decimal string: %w", err)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		// An UnmarshalTypeError makes the decoder add the field's path.
		return &json.UnmarshalTypeError{Value: strconv.Quote(s) + " (want a decimal number up to 2^64-1)", Type: reflect.TypeFor[U64]()}
	}
	*u = U64(v)
	return nil
}

// Metadata is the JSON area of a LUKS2 header.
type Metadata struct {
	Keyslots map[string]*Keyslot        `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]*Segment        `json:"segments"`
	Digests  map[string]*Digest         `json:"digests"`
	Config   Config                     `json:"config"`
}

// Keyslot is one passphrase keyslot.
type Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	AF       AF     `json:"af"`
	Area     Area   `json:"area"`
	KDF      KDF    `json:"kdf"`
	Priority *int   `json:"priority,omitempty"`
}

// AF is the anti-forensic splitter of a keyslot.
type AF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

// Area is where a keyslot's split key material lives in the keyslots area.
type Area struct {
	Type       string `json:"type"`
	Offset     U64    `json:"offset"`
	Size       U64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

// KDF derives the keyslot key from a passphrase.
type KDF struct {
	Type       string `json:"type"` // pbkdf2, argon2i, argon2id
	Hash       string `json:"hash,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Time       int    `json:"time,omitempty"`
	Memory     int    `json:"memory,omitempty"` // KiB
	CPUs       int    `json:"cpus,omitempty"`
	Salt       []byte `json:"salt"`
}

// Segment is a data segment.
type Segment struct {
	Type       string          `json:"type"`
	Offset     U64             `json:"offset"`
	Size       string          `json:"size"` // "dynamic" or a decimal byte count
	IVTweak    U64             `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
	Flags      []string        `json:"flags,omitempty"`
}

// Digest verifies a volume key.
type Digest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       []byte   `json:"salt"`
	Digest     []byte   `json:"digest"`
}

// Config holds the metadata area sizes.
type Config struct {
	JSONSize     U64             `json:"json_size"`
	KeyslotsSize U64             `json:"keyslots_size"`
	Flags        []string        `json:"flags,omitempty"`
	Requirements json.RawMessage `json:"requirements,omitempty"`
}

// Header is a parsed LUKS2 header (one consistent copy).
type Header struct {
	HeaderSize uint64 // size of one copy: binary header plus JSON area
	SeqID      uint64
	Label      string
	Subsystem  string
	UUID       string
	CsumAlg    string
	Metadata   Metadata
}

// MetadataSize is the size of both header copies plus the keyslots area:
// the bytes at the start of the header device that belong to LUKS.
func (h *Header) MetadataSize() uint64 {
	return 2*h.HeaderSize + uint64(h.Metadata.Config.KeyslotsSize)
}

func hashFor(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha256":
		return sha256.New, nil
	case "sha384":
		return sha512.New384, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("%w: hash %q", ErrUnsupported, name)
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Parse reads and validates the header at the start of r. It tries the
// primary copy and every possible secondary copy and returns the valid copy
// with the highest sequence number, so a damaged primary is survivable.
func Parse(r io.ReaderAt) (*Header, error) {
	var best *Header
	var firstErr error
	try := func(off uint64) {
		h, err := parseCopy(r, off)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("header copy at offset %d: %w", off, err)
			}
			return
		}
		if best == nil || h.SeqID > best.SeqID {
			best = h
		}
	}
	try(0)
	for _, s := range validHdrSizes {
		try(s)
		if best != nil && best.HeaderSize == s {
			break
		}
	}
	if best == nil {
		return nil, firstErr
	}
	return best, nil
}

// ParseBytes is Parse over an in-memory image.
func ParseBytes(b []byte) (*Header, error) { return Parse(bytes.NewReader(b)) }

func parseCopy(r io.ReaderAt, off uint64) (*Header, error) {
	bin := make([]byte, BinaryHeaderSize)
	if _, err := r.ReadAt(bin, int64(off)); err != nil {
		return nil, fmt.Errorf("%w: reading binary header: %v", ErrInvalidHeader, err)
	}
	magic := magicPrimary
	if off != 0 {
		magic = magicSecondary
	}
	if !bytes.Equal(bin[offMagic:offMagic+6], magic) {
		return nil, fmt.Errorf("%w: bad magic", ErrInvalidHeader)
	}
	if v := binary.BigEndian.Uint16(bin[offVersion:]); v != 2 {
		return nil, fmt.Errorf("%w: version %d, want 2", ErrInvalidHeader, v)
	}
	h := &Header{
		HeaderSize: binary.BigEndian.Uint64(bin[offHdrSize:]),
		SeqID:      binary.BigEndian.Uint64(bin[offSeqID:]),
		Label:      cstring(bin[offLabel : offLabel+lenLabel]),
		CsumAlg:    cstring(bin[offCsumAlg : offCsumAlg+lenCsumAlg]),
		UUID:       cstring(bin[offUUID : offUUID+lenUUID]),
		Subsystem:  cstring(bin[offSubsystem : offSubsystem+lenSubsystem]),
	}
	valid := false
	for _, s := range validHdrSizes {
		valid = valid || s == h.HeaderSize
	}
	if !valid {
		return nil, fmt.Errorf("%w: header size %d", ErrInvalidHeader, h.HeaderSize)
	}
	if got := binary.BigEndian.Uint64(bin[offHdrOffset:]); got != off {
		return nil, fmt.Errorf("%w: header offset field %d at offset %d", ErrInvalidHeader, got, off)
	}
	if off != 0 && off != h.HeaderSize {
		return nil, fmt.Errorf("%w: secondary header at %d but header size %d", ErrInvalidHeader, off, h.HeaderSize)
	}
	newHash, err := hashFor(h.CsumAlg)
	if err != nil {
		return nil, fmt.Errorf("%w: checksum algorithm: %v", ErrInvalidHeader, err)
	}
	jsonArea := make([]byte, h.HeaderSize-BinaryHeaderSize)
	if _, err := r.ReadAt(jsonArea, int64(off+BinaryHeaderSize)); err != nil {
		return nil, fmt.Errorf("%w: reading JSON area: %v", ErrInvalidHeader, err)
	}
	want := make([]byte, lenCsum)
	copy(want, bin[offCsum:offCsum+lenCsum])
	sum := checksum(newHash, bin, jsonArea)
	if subtle.ConstantTimeCompare(sum, want[:len(sum)]) != 1 {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrInvalidHeader)
	}
	end := bytes.IndexByte(jsonArea, 0)
	if end < 0 {
		return nil, fmt.Errorf("%w: JSON area not NUL-terminated", ErrInvalidHeader)
	}
	dec := json.NewDecoder(bytes.NewReader(jsonArea[:end]))
	if err := dec.Decode(&h.Metadata); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fmt.Errorf("%w: JSON metadata field %s: cannot hold %s", ErrInvalidHeader, te.Field, te.Value)
		}
		return nil, fmt.Errorf("%w: JSON metadata: %v", ErrInvalidHeader, err)
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return h, nil
}

// checksum hashes the binary header with its checksum field zeroed, then
// the JSON area.
func checksum(newHash func() hash.Hash, bin, jsonArea []byte) []byte {
	tmp := make([]byte, len(bin))
	copy(tmp, bin)
	clear(tmp[offCsum : offCsum+lenCsum])
	d := newHash()
	d.Write(tmp)
	d.Write(jsonArea)
	return d.Sum(nil)
}

const (
	maxKeySize = 512
	maxStripes = 1 << 16
)

// fitsInt64 reports whether an offset or size from the JSON metadata can
// be used as an int64 file offset.
func fitsInt64(v U64) bool { return uint64(v) <= math.MaxInt64 }

func (h *Header) validate() error {
	m := &h.Metadata
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidHeader, fmt.Sprintf(format, a...))
	}
	for _, f := range []struct {
		name string
		v    U64
	}{{"json_size", m.Config.JSONSize}, {"keyslots_size", m.Config.KeyslotsSize}} {
		if !fitsInt64(f.v) {
			return bad("config %s %d does not fit in an int64", f.name, f.v)
		}
	}
	if uint64(m.Config.JSONSize) != h.HeaderSize-BinaryHeaderSize {
		return bad("config json_size %d does not match header size %d", m.Config.JSONSize, h.HeaderSize)
	}
	if m.Config.KeyslotsSize > MaxKeyslotsSize {
		return bad("config keyslots_size %d exceeds cryptsetup's maximum %d", m.Config.KeyslotsSize, MaxKeyslotsSize)
	}
	if m.Config.KeyslotsSize%4096 != 0 {
		return bad("config keyslots_size %d is not a multiple of 4096", m.Config.KeyslotsSize)
	}
	areaStart := 2 * h.HeaderSize
	areaEnd := areaStart + uint64(m.Config.KeyslotsSize)
	if m.Keyslots == nil || m.Segments == nil || m.Digests == nil || m.Tokens == nil {
		return bad("missing keyslots, segments, digests or tokens object")
	}
	type span struct{ lo, hi uint64 }
	var spans []span
	for id, ks := range m.Keyslots {
		if ks == nil {
			return bad("keyslot %s is null", id)
		}
		if _, err := strconv.ParseUint(id, 10, 8); err != nil {
			return bad("keyslot id %q", id)
		}
		if !fitsInt64(ks.Area.Offset) {
			return bad("keyslot %s: area offset %d does not fit in an int64", id, ks.Area.Offset)
		}
		if !fitsInt64(ks.Area.Size) {
			return bad("keyslot %s: area size %d does not fit in an int64", id, ks.Area.Size)
		}
		if ks.KeySize <= 0 || ks.KeySize > maxKeySize {
			return bad("keyslot %s: key_size %d, want 1 to %d", id, ks.KeySize, maxKeySize)
		}
		if ks.AF.Stripes <= 0 || ks.AF.Stripes > maxStripes {
			return bad("keyslot %s: af stripes %d, want 1 to %d", id, ks.AF.Stripes, maxStripes)
		}
		if ks.Area.KeySize <= 0 || ks.Area.KeySize > maxKeySize {
			return bad("keyslot %s: area key_size %d, want 1 to %d", id, ks.Area.KeySize, maxKeySize)
		}
		lo, size := uint64(ks.Area.Offset), uint64(ks.Area.Size)
		if lo < areaStart || size > areaEnd || lo > areaEnd-size {
			return bad("keyslot %s: area [%d,+%d) outside keyslots area [%d,%d)", id, lo, size, areaStart, areaEnd)
		}
		if n := ks.materialSize(); n > size {
			return bad("keyslot %s: area size %d too small for its key material (%d bytes: key_size %d x stripes %d in 512-byte sectors)", id, size, n, ks.KeySize, ks.AF.Stripes)
		}
		if err := ks.KDF.validate(); err != nil {
			return bad("keyslot %s: %v", id, err)
		}
		for _, s := range spans {
			if lo < s.hi && s.lo < lo+size {
				return bad("keyslot %s area overlaps another keyslot", id)
			}
		}
		spans = append(spans, span{lo, lo + size})
		if len(ks.KDF.Salt) > 1024 {
			return bad("keyslot %s salt too long", id)
		}
	}
	for id, s := range m.Segments {
		if s == nil {
			return bad("segment %s is null", id)
		}
		if !fitsInt64(s.Offset) {
			return bad("segment %s: offset %d does not fit in an int64", id, s.Offset)
		}
		if !fitsInt64(s.IVTweak) {
			return bad("segment %s: iv_tweak %d does not fit in an int64", id, s.IVTweak)
		}
		switch s.SectorSize {
		case 512, 1024, 2048, 4096:
		default:
			return bad("segment %s: sector_size %d", id, s.SectorSize)
		}
		if uint64(s.Offset)%uint64(s.SectorSize) != 0 {
			return bad("segment %s: offset %d not aligned to its sector size", id, s.Offset)
		}
		if s.Size != "dynamic" {
			n, err := strconv.ParseUint(s.Size, 10, 64)
			if err != nil {
				return bad("segment %s: size %q is neither \"dynamic\" nor a decimal number", id, s.Size)
			}
			if n > math.MaxInt64 {
				return bad("segment %s: size %d does not fit in an int64", id, n)
			}
			if n%uint64(s.SectorSize) != 0 {
				return bad("segment %s: size %d not a multiple of its sector size", id, n)
			}
		}
		if s.Offset != 0 && uint64(s.Offset) < areaEnd && s.Type == "crypt" {
			return bad("segment %s: offset %d inside the metadata area", id, s.Offset)
		}
	}
	for id, d := range m.Digests {
		if d == nil {
			return bad("digest %s is null", id)
		}
		for _, k := range d.Keyslots {
			if _, ok := m.Keyslots[k]; !ok {
				return bad("digest %s names missing keyslot %s", id, k)
			}
		}
		for _, s := range d.Segments {
			if _, ok := m.Segments[s]; !ok {
				return bad("digest %s names missing segment %s", id, s)
			}
		}
		if len(d.Digest) == 0 || len(d.Digest) > 64 || len(d.Salt) > 1024 {
			return bad("digest %s: digest or salt length", id)
		}
		if d.Type == "pbkdf2" {
			if err := checkRange("iterations", d.Iterations, "", 1, MaxIterations); err != nil {
				return bad("digest %s: %v", id, err)
			}
		}
	}
	return nil
}

// DataSegment returns the single crypt segment a volume is opened with.
func (h *Header) DataSegment() (id string, s *Segment, err error) {
	ids := make([]string, 0, len(h.Metadata.Segments))
	for k := range h.Metadata.Segments {
		ids = append(ids, k)
	}
	sort.Strings(ids)
	if len(ids) != 1 {
		return "", nil, fmt.Errorf("%w: %d data segments (reencryption in progress?)", ErrUnsupported, len(ids))
	}
	s = h.Metadata.Segments[ids[0]]
	if s.Type != "crypt" {
		return "", nil, fmt.Errorf("%w: segment type %q", ErrUnsupported, s.Type)
	}
	if len(s.Integrity) > 0 && string(s.Integrity) != "null" {
		return "", nil, fmt.Errorf("%w: authenticated encryption (dm-integrity)", ErrUnsupported)
	}
	if len(h.Metadata.Config.Requirements) > 0 && string(h.Metadata.Config.Requirements) != "null" {
		return "", nil, fmt.Errorf("%w: header requirements %s", ErrUnsupported, h.Metadata.Config.Requirements)
	}
	return ids[0], s, nil
}

// Encode returns both header copies (2*HeaderSize bytes) with a fresh salt
// and checksums. It does not include the keyslots area.
func (h *Header) Encode() ([]byte, error) {
	if h.HeaderSize == 0 {
		h.HeaderSize = DefaultHeaderSize
	}
	if h.CsumAlg == "" {
		h.CsumAlg = "sha256"
	}
	h.Metadata.Config.JSONSize = U64(h.HeaderSize - BinaryHeaderSize)
	if h.Metadata.Tokens == nil {
		h.Metadata.Tokens = map[string]json.RawMessage{}
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("refusing to write: %w", err)
	}
	js, err := json.Marshal(&h.Metadata)
	if err != nil {
		return nil, fmt.Errorf("encoding LUKS2 JSON metadata: %w", err)
	}
	if uint64(len(js)) >= h.HeaderSize-BinaryHeaderSize {
		return nil, fmt.Errorf("LUKS2 JSON metadata is %d bytes, does not fit %d", len(js), h.HeaderSize-BinaryHeaderSize)
	}
	newHash, err := hashFor(h.CsumAlg)
	if err != nil {
		return nil, err
	}
	if len(h.Label) >= lenLabel || len(h.Subsystem) >= lenSubsystem || len(h.UUID) >= lenUUID || len(h.CsumAlg) >= lenCsumAlg {
		return nil, fmt.Errorf("LUKS2 label, subsystem, UUID or checksum name too long")
	}
	out := make([]byte, 2*h.HeaderSize)
	for i, magic := range [][]byte{magicPrimary, magicSecondary} {
		off := uint64(i) * h.HeaderSize
		cp := out[off : off+h.HeaderSize]
		bin, jsonArea := cp[:BinaryHeaderSize], cp[BinaryHeaderSize:]
		copy(bin[offMagic:], magic)
		binary.BigEndian.PutUint16(bin[offVersion:], 2)
		binary.BigEndian.PutUint64(bin[offHdrSize:], h.HeaderSize)
		binary.BigEndian.PutUint64(bin[offSeqID:], h.SeqID)
		copy(bin[offLabel:], h.Label)
		copy(bin[offCsumAlg:], h.CsumAlg)
		if _, err := rand.Read(bin[offSalt : offSalt+lenSalt]); err != nil {
			return nil, fmt.Errorf("header salt: %w", err)
		}
		copy(bin[offUUID:], h.UUID)
		copy(bin[offSubsystem:], h.Subsystem)
		binary.BigEndian.PutUint64(bin[offHdrOffset:], off)
		copy(jsonArea, js)
		copy(bin[offCsum:], checksum(newHash, bin, jsonArea))
	}
	return out, nil
}

// newUUID returns a random RFC 4122 version 4 UUID string.
func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("generating UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}
