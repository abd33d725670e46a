package luks2

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strconv"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/xts"
)

// Defaults for new headers.
const (
	DefaultCipher     = "aes-xts-plain64"
	DefaultKeySize    = 64 // aes-xts with two AES-256 keys
	DefaultSectorSize = 4096
	// DefaultPBKDF2Iterations is used for passphrase keyslots when the
	// caller does not choose (OWASP's figure for PBKDF2-HMAC-SHA256).
	DefaultPBKDF2Iterations = 600000
	// MinPBKDF2Iterations is cryptsetup's lower bound.
	MinPBKDF2Iterations = 1000
	afStripes           = 4000
	keyslotSectorSize   = 512
)

// Zero overwrites b with zeros. Callers use it on every key and passphrase.
func Zero(b []byte) { clear(b) }

// KDFParams chooses how a new passphrase keyslot derives its key.
type KDFParams struct {
	Type       string // "pbkdf2" (default), "argon2i" or "argon2id"
	Hash       string // for pbkdf2; default sha256
	Iterations int    // for pbkdf2; default DefaultPBKDF2Iterations
	Time       int    // for argon2
	MemoryKiB  int    // for argon2
	CPUs       int    // for argon2
}

// CreateOptions describes a new header.
type CreateOptions struct {
	// SegmentOffset is the byte offset of the encrypted data on the data
	// device: 0 for a detached header, MetadataSize for a header in place.
	SegmentOffset uint64
	SectorSize    int    // default DefaultSectorSize
	Cipher        string // default DefaultCipher
	// KeyslotsSize is the size of the keyslots area; default
	// DefaultKeyslotsSize (room for 64 keyslots, like cryptsetup).
	KeyslotsSize uint64
	Label        string
	// DigestIterations for the volume key digest; default 1000 (the key
	// is random, so stretching adds nothing).
	DigestIterations int
}

// Image is a header together with its keyslot areas: everything LUKS keeps
// at the start of the header device.
type Image struct {
	Header *Header
	areas  map[string][]byte // keyslot id -> encrypted area bytes
}

// Create builds a header for volumeKey with one crypt segment and a digest,
// but no keyslot yet.
func Create(volumeKey []byte, o CreateOptions) (*Image, error) {
	if o.SectorSize == 0 {
		o.SectorSize = DefaultSectorSize
	}
	if o.Cipher == "" {
		o.Cipher = DefaultCipher
	}
	if o.KeyslotsSize == 0 {
		o.KeyslotsSize = DefaultKeyslotsSize
	}
	if o.DigestIterations == 0 {
		o.DigestIterations = MinPBKDF2Iterations
	}
	if o.Cipher != DefaultCipher {
		return nil, fmt.Errorf("%w: cipher %q", ErrUnsupported, o.Cipher)
	}
	if len(volumeKey) != 32 && len(volumeKey) != 64 {
		return nil, fmt.Errorf("volume key is %d bytes, aes-xts needs 32 or 64", len(volumeKey))
	}
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("digest salt: %w", err)
	}
	digest, err := pbkdf2Key(context.Background(), volumeKey, salt, o.DigestIterations, 32, "sha256")
	if err != nil {
		return nil, err
	}
	h := &Header{
		HeaderSize: DefaultHeaderSize,
		SeqID:      1,
		Label:      o.Label,
		UUID:       uuid,
		CsumAlg:    "sha256",
		Metadata: Metadata{
			Keyslots: map[string]*Keyslot{},
			Tokens:   map[string]json.RawMessage{},
			Segments: map[string]*Segment{"0": {
				Type: "crypt", Offset: U64(o.SegmentOffset), Size: "dynamic",
				Encryption: o.Cipher, SectorSize: o.SectorSize,
			}},
			Digests: map[string]*Digest{"0": {
				Type: "pbkdf2", Keyslots: []string{}, Segments: []string{"0"},
				Hash: "sha256", Iterations: o.DigestIterations, Salt: salt, Digest: digest,
			}},
			Config: Config{JSONSize: DefaultHeaderSize - BinaryHeaderSize, KeyslotsSize: U64(o.KeyslotsSize)},
		},
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return &Image{Header: h, areas: map[string][]byte{}}, nil
}

// ReadImage parses the header at the start of r and reads the key material
// of its keyslots: key_size x stripes bytes rounded up to 512-byte sectors,
// as cryptsetup reads them, never the whole area a header declares. Like
// cryptsetup it refuses a device shorter than the header copies plus the
// keyslots area. The size of r is learnt from a Size method
// (bytes.Reader, io.SectionReader) or by seeking to its end (*os.File,
// block devices included; the file offset is restored); a reader with
// neither must hold a byte at the last offset of the metadata.
func ReadImage(r io.ReaderAt) (*Image, error) {
	h, err := Parse(r)
	if err != nil {
		return nil, err
	}
	if err := checkDeviceSize(r, h.MetadataSize()); err != nil {
		return nil, err
	}
	im := &Image{Header: h, areas: map[string][]byte{}}
	for id, ks := range h.Metadata.Keyslots {
		b := make([]byte, ks.materialSize())
		if _, err := r.ReadAt(b, int64(ks.Area.Offset)); err != nil {
			im.Wipe()
			return nil, fmt.Errorf("%w: reading keyslot %s key material: %v", ErrInvalidHeader, id, err)
		}
		im.areas[id] = b
	}
	return im, nil
}

// materialSize is how many bytes of the keyslot area hold the encrypted
// split key (cryptsetup's AF_split_sectors x 512). validate bounds it by
// the area size, so it is at most 32 MiB and never more than the area.
func (ks *Keyslot) materialSize() uint64 {
	return roundUp(uint64(ks.KeySize)*uint64(ks.AF.Stripes), keyslotSectorSize)
}

// checkDeviceSize refuses a header device shorter than the metadata it
// declares (both header copies and the keyslots area).
func checkDeviceSize(r io.ReaderAt, need uint64) error {
	size, known := readerSize(r)
	if !known {
		var b [1]byte
		if _, err := r.ReadAt(b[:], int64(need-1)); err != nil {
			return fmt.Errorf("%w: header device ends before the %d bytes of LUKS2 metadata (two header copies and config keyslots_size) it declares: %v", ErrInvalidHeader, need, err)
		}
		return nil
	}
	if size < 0 || uint64(size) < need {
		return fmt.Errorf("%w: header device is %d bytes, smaller than the %d bytes of LUKS2 metadata (two header copies and config keyslots_size) it declares", ErrInvalidHeader, size, need)
	}
	return nil
}

func readerSize(r io.ReaderAt) (int64, bool) {
	if s, ok := r.(interface{ Size() int64 }); ok {
		return s.Size(), true
	}
	s, ok := r.(io.Seeker)
	if !ok {
		return 0, false
	}
	cur, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, false
	}
	end, err := s.Seek(0, io.SeekEnd)
	if _, rerr := s.Seek(cur, io.SeekStart); err != nil || rerr != nil {
		return 0, false
	}
	return end, true
}

// Encode returns the full metadata region: both header copies followed by
// the keyslots area (Header.MetadataSize bytes).
func (im *Image) Encode() ([]byte, error) {
	hdr, err := im.Header.Encode()
	if err != nil {
		return nil, err
	}
	out := make([]byte, im.Header.MetadataSize())
	copy(out, hdr)
	for id, ks := range im.Header.Metadata.Keyslots {
		a, ok := im.areas[id]
		if !ok {
			return nil, fmt.Errorf("keyslot %s has no area material", id)
		}
		copy(out[ks.Area.Offset:], a)
	}
	return out, nil
}

// Wipe zeroes the keyslot material held in memory and forgets the header.
func (im *Image) Wipe() {
	for id, a := range im.areas {
		Zero(a)
		delete(im.areas, id)
	}
	if im.Header != nil {
		for _, d := range im.Header.Metadata.Digests {
			Zero(d.Digest)
		}
	}
	im.Header = nil
}

// VerifyKey reports whether key is the volume key of the data segment.
func (im *Image) VerifyKey(key []byte) error {
	segID, _, err := im.Header.DataSegment()
	if err != nil {
		return err
	}
	for _, d := range im.Header.Metadata.Digests {
		if contains(d.Segments, segID) && d.check(context.Background(), key) == nil {
			return nil
		}
	}
	return errors.New("volume key does not match the header's digest")
}

// errDigestMismatch: a candidate volume key does not match a digest.
var errDigestMismatch = errors.New("volume key does not match the digest")

// check returns nil when key matches the digest, errDigestMismatch when it
// does not, and another error when the digest cannot be computed (an
// unsupported type or hash, ctx done).
func (d *Digest) check(ctx context.Context, key []byte) error {
	if d.Type != "pbkdf2" {
		return fmt.Errorf("%w: digest type %q", ErrUnsupported, d.Type)
	}
	got, err := pbkdf2Key(ctx, key, d.Salt, d.Iterations, len(d.Digest), d.Hash)
	if err != nil {
		return err
	}
	defer Zero(got)
	if subtle.ConstantTimeCompare(got, d.Digest) != 1 {
		return errDigestMismatch
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// AddKeyslot stores volumeKey in a new keyslot opened by passphrase and
// returns its id. The header's sequence number is bumped.
func (im *Image) AddKeyslot(volumeKey, passphrase []byte, p KDFParams) (string, error) {
	if err := im.VerifyKey(volumeKey); err != nil {
		return "", err
	}
	h := im.Header
	id := ""
	for i := 0; i < 32; i++ {
		if _, used := h.Metadata.Keyslots[strconv.Itoa(i)]; !used {
			id = strconv.Itoa(i)
			break
		}
	}
	if id == "" {
		return "", errors.New("no free keyslot")
	}
	areaSize := roundUp(uint64(len(volumeKey))*afStripes, 4096)
	off, err := im.freeArea(areaSize)
	if err != nil {
		return "", err
	}
	kdf := KDF{Type: p.Type, Salt: make([]byte, 32)}
	if _, err := rand.Read(kdf.Salt); err != nil {
		return "", fmt.Errorf("keyslot salt: %w", err)
	}
	switch p.Type {
	case "", "pbkdf2":
		kdf.Type, kdf.Hash, kdf.Iterations = "pbkdf2", p.Hash, p.Iterations
		if kdf.Hash == "" {
			kdf.Hash = "sha256"
		}
		if kdf.Iterations == 0 {
			kdf.Iterations = DefaultPBKDF2Iterations
		}
		if kdf.Iterations < MinPBKDF2Iterations {
			return "", fmt.Errorf("pbkdf2 iterations %d below cryptsetup's minimum %d", kdf.Iterations, MinPBKDF2Iterations)
		}
	case "argon2i", "argon2id":
		kdf.Time, kdf.Memory, kdf.CPUs = p.Time, p.MemoryKiB, p.CPUs
	default:
		return "", fmt.Errorf("%w: KDF %q", ErrUnsupported, p.Type)
	}
	if err := kdf.validate(); err != nil {
		return "", fmt.Errorf("keyslot KDF: %w", err)
	}
	ks := &Keyslot{
		Type: "luks2", KeySize: len(volumeKey),
		AF:   AF{Type: "luks1", Stripes: afStripes, Hash: "sha256"},
		Area: Area{Type: "raw", Offset: U64(off), Size: U64(areaSize), Encryption: DefaultCipher, KeySize: DefaultKeySize},
		KDF:  kdf,
	}
	slotKey, err := deriveKey(context.Background(), &ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		return "", err
	}
	defer Zero(slotKey)
	material, err := afSplit(volumeKey, afStripes, ks.AF.Hash)
	if err != nil {
		return "", err
	}
	defer Zero(material)
	area := make([]byte, areaSize)
	if _, err := rand.Read(area); err != nil {
		return "", fmt.Errorf("keyslot area padding: %w", err)
	}
	copy(area, material)
	n := roundUp(uint64(len(material)), keyslotSectorSize)
	if err := cryptArea(slotKey, area[:n], true); err != nil {
		return "", err
	}
	h.Metadata.Keyslots[id] = ks
	for _, d := range h.Metadata.Digests {
		if !contains(d.Keyslots, id) {
			d.Keyslots = append(d.Keyslots, id)
		}
	}
	if err := h.validate(); err != nil {
		delete(h.Metadata.Keyslots, id)
		return "", err
	}
	im.areas[id] = area
	h.SeqID++
	return id, nil
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// freeArea returns the lowest offset in the keyslots area with size free bytes.
func (im *Image) freeArea(size uint64) (uint64, error) {
	h := im.Header
	type span struct{ lo, hi uint64 }
	var used []span
	for _, ks := range h.Metadata.Keyslots {
		used = append(used, span{uint64(ks.Area.Offset), uint64(ks.Area.Offset + ks.Area.Size)})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].lo < used[j].lo })
	off := 2 * h.HeaderSize
	for _, s := range used {
		if off+size <= s.lo {
			break
		}
		if s.hi > off {
			off = s.hi
		}
	}
	if off+size > h.MetadataSize() {
		return 0, fmt.Errorf("keyslots area (%d bytes) is full", h.Metadata.Config.KeyslotsSize)
	}
	return off, nil
}

// Unlock is UnlockContext without cancellation.
func (im *Image) Unlock(passphrase []byte) (key []byte, slot string, err error) {
	return im.UnlockContext(context.Background(), passphrase)
}

// UnlockContext returns the volume key that passphrase opens, trying
// keyslots by priority. The caller zeroizes the result.
//
// Errors: ErrWrongPassphrase when every keyslot tried rejects the
// passphrase; ErrUnsupported when no keyslot could be tried; ErrInvalidHeader
// when a keyslot turns out malformed; ctx's error once ctx is done.
//
// Cancellation: PBKDF2 (ours) checks ctx every few thousand iterations and
// stops. Argon2 (golang.org/x/crypto) cannot be interrupted, so it runs in
// a goroutine and UnlockContext returns as soon as ctx is done; the
// abandoned derivation finishes in the background (bounded by the cost
// limits Parse enforces, at most MaxArgon2MemoryKiB) and zeroizes its
// copy of the passphrase and its result. A process that exits on the
// error (cocoonctl's engine process on SIGTERM) ends it at once.
func (im *Image) UnlockContext(ctx context.Context, passphrase []byte) (key []byte, slot string, err error) {
	ids := make([]string, 0, len(im.Header.Metadata.Keyslots))
	for id, ks := range im.Header.Metadata.Keyslots {
		if ks.Priority != nil && *ks.Priority == 0 {
			continue // "ignore" priority: not tried without an explicit slot
		}
		ids = append(ids, id)
	}
	prio := func(id string) int {
		if p := im.Header.Metadata.Keyslots[id].Priority; p != nil {
			return *p
		}
		return 1
	}
	sort.Slice(ids, func(i, j int) bool {
		if prio(ids[i]) != prio(ids[j]) {
			return prio(ids[i]) > prio(ids[j])
		}
		a, _ := strconv.Atoi(ids[i])
		b, _ := strconv.Atoi(ids[j])
		return a < b
	})
	var unsupported error
	tried := 0
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, "", fmt.Errorf("unlocking: %w", err)
		}
		key, err := im.unlockSlot(ctx, id, passphrase)
		switch {
		case err == nil:
			return key, id, nil
		case errors.Is(err, ErrWrongPassphrase):
			tried++
		case errors.Is(err, ErrUnsupported):
			if unsupported == nil {
				unsupported = fmt.Errorf("keyslot %s: %w", id, err)
			}
		default: // a malformed keyslot, ctx done, an I/O or cipher failure
			return nil, "", fmt.Errorf("keyslot %s: %w", id, err)
		}
	}
	switch {
	case tried == 0 && unsupported != nil:
		return nil, "", fmt.Errorf("no keyslot can be tried: %w", unsupported)
	case unsupported != nil:
		return nil, "", fmt.Errorf("%w (%v)", ErrWrongPassphrase, unsupported)
	}
	return nil, "", ErrWrongPassphrase
}

func (im *Image) unlockSlot(ctx context.Context, id string, passphrase []byte) ([]byte, error) {
	ks := im.Header.Metadata.Keyslots[id]
	if ks.Type != "luks2" || ks.AF.Type != "luks1" || ks.Area.Type != "raw" {
		return nil, fmt.Errorf("%w: keyslot type %s/%s/%s", ErrUnsupported, ks.Type, ks.AF.Type, ks.Area.Type)
	}
	if ks.Area.Encryption != DefaultCipher {
		return nil, fmt.Errorf("%w: keyslot cipher %q", ErrUnsupported, ks.Area.Encryption)
	}
	if ks.Area.KeySize != 32 && ks.Area.KeySize != 64 {
		return nil, fmt.Errorf("%w: keyslot area key_size %d for %s", ErrUnsupported, ks.Area.KeySize, DefaultCipher)
	}
	if _, err := hashFor(ks.AF.Hash); err != nil {
		return nil, fmt.Errorf("af: %w", err)
	}
	n := ks.materialSize()
	area := im.areas[id]
	if uint64(len(area)) < n {
		return nil, fmt.Errorf("%w: keyslot %s area shorter than its key material", ErrInvalidHeader, id)
	}
	slotKey, err := deriveKey(ctx, &ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer Zero(slotKey)
	material := make([]byte, n)
	defer Zero(material)
	copy(material, area)
	if err := cryptArea(slotKey, material, false); err != nil {
		return nil, err
	}
	key, err := afMerge(material[:ks.KeySize*ks.AF.Stripes], ks.KeySize, ks.AF.Stripes, ks.AF.Hash)
	if err != nil {
		return nil, err
	}
	for _, d := range im.Header.Metadata.Digests {
		if !contains(d.Keyslots, id) {
			continue
		}
		switch err := d.check(ctx, key); {
		case err == nil:
			return key, nil
		case !errors.Is(err, errDigestMismatch):
			Zero(key)
			return nil, fmt.Errorf("digest: %w", err)
		}
	}
	Zero(key)
	return nil, ErrWrongPassphrase
}

// validate checks the KDF parameters against cryptsetup's limits, so a
// header cannot make one unlock attempt cost more than cryptsetup would
// ever ask for. Errors name the field. An unknown KDF type is left to
// unlocking (ErrUnsupported for that keyslot).
func (k *KDF) validate() error {
	switch k.Type {
	case "pbkdf2":
		return checkRange("kdf iterations", k.Iterations, "", 1, MaxIterations)
	case "argon2i", "argon2id":
		if err := checkRange("kdf time", k.Time, "", 1, MaxIterations); err != nil {
			return err
		}
		if err := checkRange("kdf memory", k.Memory, " KiB", 1, MaxArgon2MemoryKiB); err != nil {
			return err
		}
		return checkRange("kdf cpus", k.CPUs, "", 1, MaxArgon2Threads)
	}
	return nil
}

// checkRange reports a key derivation cost outside [lo, hi], naming the field.
func checkRange(field string, v int, unit string, lo, hi int) error {
	switch {
	case v < lo:
		return fmt.Errorf("%s %d%s is below %d", field, v, unit, lo)
	case v > hi:
		return fmt.Errorf("%s %d%s exceeds cryptsetup's maximum %d", field, v, unit, hi)
	}
	return nil
}

// argon2Derive computes argon2i or argon2id; tests replace it to hold a
// derivation in flight.
var argon2Derive = func(argon2id bool, password, salt []byte, time, memory uint32, threads uint8, keyLen uint32) []byte {
	if argon2id {
		return argon2.IDKey(password, salt, time, memory, threads, keyLen)
	}
	return argon2.Key(password, salt, time, memory, threads, keyLen)
}

// deriveKey runs the keyslot's KDF (parameters already checked by
// KDF.validate through Parse or AddKeyslot) and returns early with ctx's
// error once ctx is done; see UnlockContext for how.
func deriveKey(ctx context.Context, k *KDF, passphrase []byte, size int) ([]byte, error) {
	switch k.Type {
	case "pbkdf2":
		if err := k.validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidHeader, err)
		}
		return pbkdf2Key(ctx, passphrase, k.Salt, k.Iterations, size, k.Hash)
	case "argon2i", "argon2id":
		if err := k.validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidHeader, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// The goroutine owns a copy of the passphrase: the caller may
		// zeroize its own as soon as we return.
		pw := bytes.Clone(passphrase)
		out := make(chan []byte)
		abandoned := make(chan struct{})
		go func() {
			key := argon2Derive(k.Type == "argon2id", pw, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(size))
			Zero(pw)
			select {
			case out <- key:
			case <-abandoned:
				Zero(key)
			}
		}()
		select {
		case key := <-out:
			return key, nil
		case <-ctx.Done():
			close(abandoned)
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("%w: KDF %q", ErrUnsupported, k.Type)
}

// pbkdf2Key is PBKDF2 (RFC 8018) over a byte-slice password, so no
// immutable string copy of a passphrase is ever made.
// It checks ctx every pbkdf2CheckEvery iterations and returns ctx's
// error once ctx is done.
func pbkdf2Key(ctx context.Context, password, salt []byte, iter, keyLen int, hashName string) ([]byte, error) {
	newHash, err := hashFor(hashName)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	done := ctx.Done() // nil (never ready) for a context that cannot end
	prf := hmac.New(newHash, password)
	hLen := prf.Size()
	out := make([]byte, 0, roundUp(uint64(keyLen), uint64(hLen)))
	u := make([]byte, hLen)
	t := make([]byte, hLen)
	defer Zero(u)
	defer Zero(t)
	var idx [4]byte
	for block := uint32(1); len(out) < keyLen; block++ {
		prf.Reset()
		prf.Write(salt)
		binary.BigEndian.PutUint32(idx[:], block)
		prf.Write(idx[:])
		u = prf.Sum(u[:0])
		copy(t, u)
		for i := 1; i < iter; i++ {
			if i%pbkdf2CheckEvery == 0 && done != nil {
				select {
				case <-done:
					Zero(out[:cap(out)])
					return nil, ctx.Err()
				default:
				}
			}
			prf.Reset()
			prf.Write(u)
			u = prf.Sum(u[:0])
			subtle.XORBytes(t, t, u)
		}
		out = append(out, t...)
	}
	Zero(out[keyLen:cap(out)])
	return out[:keyLen], nil
}

// pbkdf2CheckEvery is how often PBKDF2 looks at its context: a few
// milliseconds of work, so cancellation is prompt and costs nothing.
const pbkdf2CheckEvery = 1 << 12

// cryptArea en- or decrypts keyslot material in place: aes-xts-plain64 with
// 512-byte sectors numbered from 0 at the start of the area.
func cryptArea(key, b []byte, encrypt bool) error {
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		return fmt.Errorf("keyslot cipher: %w", err)
	}
	for s := 0; s*keyslotSectorSize < len(b); s++ {
		sec := b[s*keyslotSectorSize : (s+1)*keyslotSectorSize]
		if encrypt {
			c.Encrypt(sec, sec, uint64(s))
		} else {
			c.Decrypt(sec, sec, uint64(s))
		}
	}
	return nil
}

// diffuse is the LUKS anti-forensic diffusion: each digest-sized chunk i
// becomes H(be32(i) || chunk), the last partial chunk truncated.
func diffuse(newHash func() hash.Hash, b []byte) {
	h := newHash()
	ds := h.Size()
	var idx [4]byte
	for i := 0; i*ds < len(b); i++ {
		end := min((i+1)*ds, len(b))
		h.Reset()
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Write(idx[:])
		h.Write(b[i*ds : end])
		sum := h.Sum(nil)
		copy(b[i*ds:end], sum)
		Zero(sum)
	}
}

func afSplit(key []byte, stripes int, hashName string) ([]byte, error) {
	newHash, err := hashFor(hashName)
	if err != nil {
		return nil, err
	}
	n := len(key)
	out := make([]byte, n*stripes)
	if _, err := rand.Read(out[:n*(stripes-1)]); err != nil {
		return nil, fmt.Errorf("AF split random stripes: %w", err)
	}
	d := make([]byte, n)
	defer Zero(d)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(d, d, out[i*n:(i+1)*n])
		diffuse(newHash, d)
	}
	subtle.XORBytes(out[(stripes-1)*n:], d, key)
	return out, nil
}

func afMerge(material []byte, n, stripes int, hashName string) ([]byte, error) {
	newHash, err := hashFor(hashName)
	if err != nil {
		return nil, err
	}
	if len(material) != n*stripes {
		return nil, fmt.Errorf("%w: AF material size", ErrInvalidHeader)
	}
	d := make([]byte, n)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(d, d, material[i*n:(i+1)*n])
		diffuse(newHash, d)
	}
	subtle.XORBytes(d, d, material[(stripes-1)*n:])
	return d, nil
}
