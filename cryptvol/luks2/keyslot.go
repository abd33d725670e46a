package luks2

import (
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
	// maxArgon2MemoryKiB is cryptsetup's maximum (4 GiB): a hostile header
	// must not make us allocate more.
	maxArgon2MemoryKiB = 4 * 1024 * 1024
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
	digest, err := pbkdf2Key(volumeKey, salt, o.DigestIterations, 32, "sha256")
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

// ReadImage parses the header at the start of r and reads its keyslot areas.
func ReadImage(r io.ReaderAt) (*Image, error) {
	h, err := Parse(r)
	if err != nil {
		return nil, err
	}
	im := &Image{Header: h, areas: map[string][]byte{}}
	for id, ks := range h.Metadata.Keyslots {
		b := make([]byte, ks.Area.Size)
		if _, err := r.ReadAt(b, int64(ks.Area.Offset)); err != nil {
			return nil, fmt.Errorf("%w: reading keyslot %s area: %v", ErrInvalidHeader, id, err)
		}
		im.areas[id] = b
	}
	return im, nil
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
		if contains(d.Segments, segID) && d.check(key) {
			return nil
		}
	}
	return errors.New("volume key does not match the header's digest")
}

func (d *Digest) check(key []byte) bool {
	if d.Type != "pbkdf2" || d.Iterations <= 0 {
		return false
	}
	got, err := pbkdf2Key(key, d.Salt, d.Iterations, len(d.Digest), d.Hash)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(got, d.Digest) == 1
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
	ks := &Keyslot{
		Type: "luks2", KeySize: len(volumeKey),
		AF:   AF{Type: "luks1", Stripes: afStripes, Hash: "sha256"},
		Area: Area{Type: "raw", Offset: U64(off), Size: U64(areaSize), Encryption: DefaultCipher, KeySize: DefaultKeySize},
		KDF:  kdf,
	}
	slotKey, err := deriveKey(&ks.KDF, passphrase, ks.Area.KeySize)
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

// Unlock returns the volume key that passphrase opens, trying keyslots by
// priority. The caller zeroizes the result.
func (im *Image) Unlock(passphrase []byte) (key []byte, slot string, err error) {
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
	for _, id := range ids {
		key, err := im.unlockSlot(id, passphrase)
		if err == nil {
			return key, id, nil
		}
		if errors.Is(err, ErrUnsupported) && unsupported == nil {
			unsupported = fmt.Errorf("keyslot %s: %w", id, err)
		}
	}
	if unsupported != nil {
		return nil, "", fmt.Errorf("%w (%v)", ErrWrongPassphrase, unsupported)
	}
	return nil, "", ErrWrongPassphrase
}

func (im *Image) unlockSlot(id string, passphrase []byte) ([]byte, error) {
	ks := im.Header.Metadata.Keyslots[id]
	if ks.Type != "luks2" || ks.AF.Type != "luks1" || ks.Area.Type != "raw" {
		return nil, fmt.Errorf("%w: keyslot type %s/%s/%s", ErrUnsupported, ks.Type, ks.AF.Type, ks.Area.Type)
	}
	if ks.Area.Encryption != DefaultCipher {
		return nil, fmt.Errorf("%w: keyslot cipher %q", ErrUnsupported, ks.Area.Encryption)
	}
	slotKey, err := deriveKey(&ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer Zero(slotKey)
	n := roundUp(uint64(ks.KeySize)*uint64(ks.AF.Stripes), keyslotSectorSize)
	area := im.areas[id]
	if uint64(len(area)) < n {
		return nil, fmt.Errorf("%w: keyslot %s area shorter than its key material", ErrInvalidHeader, id)
	}
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
		if contains(d.Keyslots, id) && d.check(key) {
			return key, nil
		}
	}
	Zero(key)
	return nil, ErrWrongPassphrase
}

// deriveKey runs the keyslot's KDF.
func deriveKey(k *KDF, passphrase []byte, size int) ([]byte, error) {
	switch k.Type {
	case "pbkdf2":
		if k.Iterations <= 0 {
			return nil, fmt.Errorf("%w: pbkdf2 iterations %d", ErrInvalidHeader, k.Iterations)
		}
		return pbkdf2Key(passphrase, k.Salt, k.Iterations, size, k.Hash)
	case "argon2i", "argon2id":
		if k.Time <= 0 || k.Memory <= 0 || k.Memory > maxArgon2MemoryKiB || k.CPUs <= 0 || k.CPUs > 255 {
			return nil, fmt.Errorf("%w: argon2 parameters time=%d memory=%d cpus=%d", ErrInvalidHeader, k.Time, k.Memory, k.CPUs)
		}
		if k.Type == "argon2i" {
			return argon2.Key(passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(size)), nil
		}
		return argon2.IDKey(passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(size)), nil
	}
	return nil, fmt.Errorf("%w: KDF %q", ErrUnsupported, k.Type)
}

// pbkdf2Key is PBKDF2 (RFC 8018) over a byte-slice password, so no
// immutable string copy of a passphrase is ever made.
func pbkdf2Key(password, salt []byte, iter, keyLen int, hashName string) ([]byte, error) {
	newHash, err := hashFor(hashName)
	if err != nil {
		return nil, err
	}
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
