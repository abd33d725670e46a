//go:build amd64 && !purego

package userspace

import (
	"encoding/binary"
	"math/bits"

	"golang.org/x/sys/cpu"
)

// aesniXTS is AES-XTS in assembly (xts_amd64.s) with AES-NI: eight blocks
// in flight per round instead of one crypto/aes call per block, sixteen
// (four per register) with VAES where the CPU has AVX-512, and its own key
// schedules so they can be wiped when the volume is detached.
type aesniXTS struct {
	enc    [15 * 16]byte // data key, encryption round keys
	dec    [15 * 16]byte // data key, AESDEC round keys (equivalent inverse cipher)
	tweak  [15 * 16]byte // tweak key, encryption round keys
	rounds int
	vaes   bool // use the AVX-512 VAES code for multiples of 16 blocks
}

// hasVAES reports whether the CPU (and the OS, for the ZMM state) can run
// xtsEncryptVAES: AVX-512 F and BW, VAES and VPCLMULQDQ.
var hasVAES = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ

//go:noescape
func xtsEncryptAESNI(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)

//go:noescape
func xtsDecryptAESNI(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)

// xtsEncryptVAES and xtsDecryptVAES need blocks to be a non-zero multiple
// of 16.
//
//go:noescape
func xtsEncryptVAES(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)

//go:noescape
func xtsDecryptVAES(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)

// aesSubWord applies the AES S-box to each byte of w (AESKEYGENASSIST:
// constant time, unlike a table lookup).
//
//go:noescape
func aesSubWord(w uint32) uint32

// aesInvMixColumns writes InvMixColumns(src) to dst (AESIMC).
//
//go:noescape
func aesInvMixColumns(dst, src *byte)

func newAESNIXTS(key []byte) sectorXTS {
	if !cpu.X86.HasAES {
		return nil
	}
	c := &aesniXTS{vaes: hasVAES}
	c.rounds = expandKeyAESNI(&c.enc, key[:len(key)/2])
	expandKeyAESNI(&c.tweak, key[len(key)/2:])
	n := c.rounds
	copy(c.dec[:16], c.enc[n*16:])
	for r := 1; r < n; r++ {
		aesInvMixColumns(&c.dec[r*16], &c.enc[(n-r)*16])
	}
	copy(c.dec[n*16:], c.enc[:16])
	return c
}

// expandKeyAESNI writes the FIPS-197 key schedule of a 16- or 32-byte key
// into rk (round keys in AESENC byte order) and returns the round count.
func expandKeyAESNI(rk *[15 * 16]byte, key []byte) int {
	nk := len(key) / 4
	rounds := nk + 6
	var w [60]uint32
	for i := 0; i < nk; i++ {
		w[i] = binary.LittleEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := nk; i < 4*(rounds+1); i++ {
		t := w[i-1]
		switch {
		case i%nk == 0:
			// RotWord moves the first byte (the low one here) to the end.
			t = aesSubWord(bits.RotateLeft32(t, -8)) ^ rcon
			rcon <<= 1
			if rcon&0x100 != 0 {
				rcon ^= 0x11b
			}
		case nk > 6 && i%nk == 4:
			t = aesSubWord(t)
		}
		w[i] = w[i-nk] ^ t
	}
	for i := 0; i < 4*(rounds+1); i++ {
		binary.LittleEndian.PutUint32(rk[4*i:], w[i])
	}
	clear(w[:])
	return rounds
}

func (c *aesniXTS) encrypt(dst, src []byte, sector uint64) {
	checkXTSLengths(dst, src)
	if len(src) == 0 {
		return
	}
	if blocks := len(src) / 16; c.vaes && blocks%16 == 0 {
		xtsEncryptVAES(&c.enc[0], &c.tweak[0], c.rounds, sector, &dst[0], &src[0], blocks)
	} else {
		xtsEncryptAESNI(&c.enc[0], &c.tweak[0], c.rounds, sector, &dst[0], &src[0], blocks)
	}
}

func (c *aesniXTS) decrypt(dst, src []byte, sector uint64) {
	checkXTSLengths(dst, src)
	if len(src) == 0 {
		return
	}
	if blocks := len(src) / 16; c.vaes && blocks%16 == 0 {
		xtsDecryptVAES(&c.dec[0], &c.tweak[0], c.rounds, sector, &dst[0], &src[0], blocks)
	} else {
		xtsDecryptAESNI(&c.dec[0], &c.tweak[0], c.rounds, sector, &dst[0], &src[0], blocks)
	}
}

func (c *aesniXTS) name() string {
	if c.vaes {
		return "vaes-avx512"
	}
	return "aes-ni"
}

func (c *aesniXTS) wipe() {
	clear(c.enc[:])
	clear(c.dec[:])
	clear(c.tweak[:])
}
