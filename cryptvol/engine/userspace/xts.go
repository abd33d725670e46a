package userspace

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"sync"
)

// xtsCipher is AES-XTS (IEEE 1619) for whole sectors. Unlike
// golang.org/x/crypto/xts, which doubles the tweak and XORs byte by byte,
// it computes all tweaks of a sector first (GF(2^128) doubling on two
// uint64 words) and applies them with the vectorized subtle.XORBytes, so
// only the AES block calls remain per block. Results are identical to
// x/crypto/xts (tested), which stays the reference.
type xtsCipher struct {
	k1, k2 cipher.Block
	// tweaks holds per-call tweak buffers.
	tweaks sync.Pool
}

func newXTS(key []byte) (*xtsCipher, error) {
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("aes-xts key must be 32 or 64 bytes, got %d", len(key))
	}
	k1, err := aes.NewCipher(key[:len(key)/2])
	if err != nil {
		return nil, err
	}
	k2, err := aes.NewCipher(key[len(key)/2:])
	if err != nil {
		return nil, err
	}
	return &xtsCipher{k1: k1, k2: k2}, nil
}

func (c *xtsCipher) getTweaks(n int) *[]byte {
	p, _ := c.tweaks.Get().(*[]byte)
	if p == nil || cap(*p) < n {
		b := make([]byte, n)
		p = &b
	}
	*p = (*p)[:n]
	return p
}

// fillTweaks writes the tweak of every 16-byte block of a sector.
func (c *xtsCipher) fillTweaks(tw []byte, sector uint64) {
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

// encryptSector encrypts b (a multiple of 16 bytes) in place.
func (c *xtsCipher) encryptSector(b []byte, sector uint64) { c.crypt(b, sector, c.k1.Encrypt) }

// decryptSector decrypts b (a multiple of 16 bytes) in place.
func (c *xtsCipher) decryptSector(b []byte, sector uint64) { c.crypt(b, sector, c.k1.Decrypt) }

func (c *xtsCipher) crypt(b []byte, sector uint64, block func(dst, src []byte)) {
	p := c.getTweaks(len(b))
	tw := *p
	c.fillTweaks(tw, sector)
	subtle.XORBytes(b, b, tw)
	for i := 0; i < len(b); i += 16 {
		block(b[i:i+16], b[i:i+16])
	}
	subtle.XORBytes(b, b, tw)
	c.tweaks.Put(p)
}
