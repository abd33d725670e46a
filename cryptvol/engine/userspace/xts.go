package userspace

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"sync"
)

// sectorXTS is AES-XTS (IEEE 1619) over whole data units: the tweak of a
// unit is E_k2(sector as a 16-byte little-endian number), doubled in
// GF(2^128) for each 16-byte block. dst and src are the same slice or do
// not overlap; their length is a multiple of 16 (no ciphertext stealing:
// dm-crypt's sectors never need it).
type sectorXTS interface {
	encrypt(dst, src []byte, sector uint64)
	decrypt(dst, src []byte, sector uint64)
	// wipe overwrites the key schedules it owns; the cipher is unusable
	// afterwards.
	wipe()
	// name says which implementation runs, for the attach log.
	name() string
}

// newXTS expands a 32- or 64-byte XTS key (AES-128 or AES-256, the second
// half keying the tweak): with AES-NI when the CPU has it, through
// crypto/aes otherwise.
func newXTS(key []byte) (sectorXTS, error) {
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("aes-xts key must be 32 or 64 bytes, got %d", len(key))
	}
	if c := newAESNIXTS(key); c != nil {
		return c, nil
	}
	return newGenericXTS(key)
}

// genericXTS is the portable construction over crypto/aes. Unlike
// golang.org/x/crypto/xts, which doubles the tweak and XORs byte by byte,
// it computes all tweaks of a sector first (GF(2^128) doubling on two
// uint64 words) and applies them with the vectorized subtle.XORBytes, so
// only the AES block calls remain per block. Its key schedules live inside
// crypto/aes and cannot be wiped.
type genericXTS struct {
	k1, k2 cipher.Block
	// tweaks holds per-call tweak buffers.
	tweaks sync.Pool
}

func newGenericXTS(key []byte) (*genericXTS, error) {
	k1, err := aes.NewCipher(key[:len(key)/2])
	if err != nil {
		return nil, err
	}
	k2, err := aes.NewCipher(key[len(key)/2:])
	if err != nil {
		return nil, err
	}
	return &genericXTS{k1: k1, k2: k2}, nil
}

func (c *genericXTS) getTweaks(n int) *[]byte {
	p, _ := c.tweaks.Get().(*[]byte)
	if p == nil || cap(*p) < n {
		b := make([]byte, n)
		p = &b
	}
	*p = (*p)[:n]
	return p
}

// fillTweaks writes the tweak of every 16-byte block of a sector.
func (c *genericXTS) fillTweaks(tw []byte, sector uint64) {
	var t [16]byte
	binary.LittleEndian.PutUint64(t[:8], sector)
	c.k2.Encrypt(t[:], t[:])
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	for i := 0; i < len(tw); i += 16 {
		binary.LittleEndian.PutUint64(tw[i:], lo)
		binary.LittleEndian.PutUint64(tw[i+8:], hi)
		carry := hi >> 63
		hi = hi<<1 | lo>>63
		lo = lo<<1 ^ carry*0x87
	}
}

func (c *genericXTS) encrypt(dst, src []byte, sector uint64) { c.crypt(dst, src, sector, c.k1.Encrypt) }

func (c *genericXTS) decrypt(dst, src []byte, sector uint64) { c.crypt(dst, src, sector, c.k1.Decrypt) }

func (c *genericXTS) crypt(dst, src []byte, sector uint64, block func(dst, src []byte)) {
	checkXTSLengths(dst, src)
	p := c.getTweaks(len(src))
	tw := *p
	c.fillTweaks(tw, sector)
	dst = dst[:len(src)]
	subtle.XORBytes(dst, src, tw)
	for i := 0; i < len(dst); i += 16 {
		block(dst[i:i+16], dst[i:i+16])
	}
	subtle.XORBytes(dst, dst, tw)
	clear(tw)
	c.tweaks.Put(p)
}

func (c *genericXTS) wipe() {}

func (c *genericXTS) name() string { return "crypto/aes" }

func checkXTSLengths(dst, src []byte) {
	if len(src)%16 != 0 {
		panic("userspace: xts data is not a multiple of 16 bytes")
	}
	if len(dst) < len(src) {
		panic("userspace: xts output smaller than input")
	}
}
