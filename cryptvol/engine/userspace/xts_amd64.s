//go:build amd64 && !purego

#include "textflag.h"

// AES-XTS with AES-NI: eight blocks in flight so the AES units stay busy
// (one block at a time waits on each round's latency), the tweak doubled
// in registers. The key schedules come from xts_amd64.go.

// Doubling mask as dwords {0x87, 0, 1, 0}: the reduction for a carry out
// of bit 127 and the carry from bit 63 into bit 64.
DATA xtsMask<>+0(SB)/4, $0x87
DATA xtsMask<>+4(SB)/4, $0
DATA xtsMask<>+8(SB)/4, $1
DATA xtsMask<>+12(SB)/4, $0
GLOBL xtsMask<>(SB), RODATA|NOPTR, $16

// T = T·x in GF(2^128), little-endian (IEEE 1619). M holds xtsMask.
#define DOUBLE(T, M, TMP) \
	PSHUFL $0x13, T, TMP; \
	PSRAL  $31, TMP; \
	PAND   M, TMP; \
	PADDQ  T, T; \
	PXOR   TMP, T

// Save the tweak of block i, load the block and whiten it, next tweak.
#define LOADTWEAK(i, X) \
	MOVOU X9, (i*16)(SP); \
	MOVOU (i*16)(SI), X; \
	PXOR  X9, X; \
	DOUBLE(X9, X10, X11)

// Whiten block i with its saved tweak and store it.
#define STORETWEAK(i, X) \
	MOVOU (i*16)(SP), X11; \
	PXOR  X11, X; \
	MOVOU X, (i*16)(DI)

// X9 = T = E_k2(sector as a 16-byte little-endian number) with the tweak
// round keys at BX, CX rounds, the sector in DX; X10 = xtsMask.
#define FIRSTTWEAK \
	MOVOU xtsMask<>(SB), X10; \
	MOVQ  DX, X9; \
	MOVOU (BX), X8; \
	PXOR  X8, X9; \
	LEAQ  16(BX), R10; \
	MOVQ  CX, R11; \
	DECQ  R11; \
tweakRounds: \
	MOVOU (R10), X8; \
	AESENC X8, X9; \
	ADDQ  $16, R10; \
	DECQ  R11; \
	JNZ   tweakRounds; \
	MOVOU (R10), X8; \
	AESENCLAST X8, X9

#define ROUND8(OP) \
	OP X8, X0; \
	OP X8, X1; \
	OP X8, X2; \
	OP X8, X3; \
	OP X8, X4; \
	OP X8, X5; \
	OP X8, X6; \
	OP X8, X7

// Body shared by encryption and decryption: AX round keys, BX tweak round
// keys, CX rounds, DX sector, DI dst, SI src, R9 blocks. OP and LAST are
// the round instructions for the data (AESENC/AESENCLAST or
// AESDEC/AESDECLAST); the tweak T = E_k2(sector as a 16-byte little-endian
// number) is always encrypted. At the end no tweak or data is left in the
// frame or the registers.
#define XTS(OP, LAST) \
	FIRSTTWEAK; \
	CMPQ  R9, $8; \
	JB    tail; \
loop8: \
	LOADTWEAK(0, X0); \
	LOADTWEAK(1, X1); \
	LOADTWEAK(2, X2); \
	LOADTWEAK(3, X3); \
	LOADTWEAK(4, X4); \
	LOADTWEAK(5, X5); \
	LOADTWEAK(6, X6); \
	LOADTWEAK(7, X7); \
	MOVOU (AX), X8; \
	ROUND8(PXOR); \
	LEAQ  16(AX), R10; \
	MOVQ  CX, R11; \
	DECQ  R11; \
rounds8: \
	MOVOU (R10), X8; \
	ROUND8(OP); \
	ADDQ  $16, R10; \
	DECQ  R11; \
	JNZ   rounds8; \
	MOVOU (R10), X8; \
	ROUND8(LAST); \
	STORETWEAK(0, X0); \
	STORETWEAK(1, X1); \
	STORETWEAK(2, X2); \
	STORETWEAK(3, X3); \
	STORETWEAK(4, X4); \
	STORETWEAK(5, X5); \
	STORETWEAK(6, X6); \
	STORETWEAK(7, X7); \
	ADDQ  $128, SI; \
	ADDQ  $128, DI; \
	SUBQ  $8, R9; \
	CMPQ  R9, $8; \
	JAE   loop8; \
tail: \
	TESTQ R9, R9; \
	JZ    done; \
loop1: \
	MOVOU (SI), X0; \
	PXOR  X9, X0; \
	MOVOU (AX), X8; \
	PXOR  X8, X0; \
	LEAQ  16(AX), R10; \
	MOVQ  CX, R11; \
	DECQ  R11; \
rounds1: \
	MOVOU (R10), X8; \
	OP    X8, X0; \
	ADDQ  $16, R10; \
	DECQ  R11; \
	JNZ   rounds1; \
	MOVOU (R10), X8; \
	LAST  X8, X0; \
	PXOR  X9, X0; \
	MOVOU X0, (DI); \
	DOUBLE(X9, X10, X11); \
	ADDQ  $16, SI; \
	ADDQ  $16, DI; \
	DECQ  R9; \
	JNZ   loop1; \
done: \
	PXOR  X0, X0; \
	MOVOU X0, 0(SP); \
	MOVOU X0, 16(SP); \
	MOVOU X0, 32(SP); \
	MOVOU X0, 48(SP); \
	MOVOU X0, 64(SP); \
	MOVOU X0, 80(SP); \
	MOVOU X0, 96(SP); \
	MOVOU X0, 112(SP); \
	PXOR  X1, X1; \
	PXOR  X2, X2; \
	PXOR  X3, X3; \
	PXOR  X4, X4; \
	PXOR  X5, X5; \
	PXOR  X6, X6; \
	PXOR  X7, X7; \
	PXOR  X8, X8; \
	PXOR  X9, X9; \
	PXOR  X11, X11

// func xtsEncryptAESNI(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)
TEXT ·xtsEncryptAESNI(SB), NOSPLIT, $128-56
	MOVQ rk+0(FP), AX
	MOVQ tk+8(FP), BX
	MOVQ rounds+16(FP), CX
	MOVQ sector+24(FP), DX
	MOVQ dst+32(FP), DI
	MOVQ src+40(FP), SI
	MOVQ blocks+48(FP), R9
	XTS(AESENC, AESENCLAST)
	RET

// func xtsDecryptAESNI(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)
TEXT ·xtsDecryptAESNI(SB), NOSPLIT, $128-56
	MOVQ rk+0(FP), AX
	MOVQ tk+8(FP), BX
	MOVQ rounds+16(FP), CX
	MOVQ sector+24(FP), DX
	MOVQ dst+32(FP), DI
	MOVQ src+40(FP), SI
	MOVQ blocks+48(FP), R9
	XTS(AESDEC, AESDECLAST)
	RET

// func aesSubWord(w uint32) uint32
TEXT ·aesSubWord(SB), NOSPLIT, $0-12
	MOVL w+0(FP), AX
	MOVQ AX, X0
	PSHUFL $0, X0, X0
	AESKEYGENASSIST $0, X0, X1
	MOVQ X1, AX
	MOVL AX, ret+8(FP)
	PXOR X0, X0
	PXOR X1, X1
	RET

// func aesInvMixColumns(dst, src *byte)
TEXT ·aesInvMixColumns(SB), NOSPLIT, $0-16
	MOVQ  dst+0(FP), DI
	MOVQ  src+8(FP), SI
	MOVOU (SI), X0
	AESIMC X0, X1
	MOVOU X1, (DI)
	PXOR  X0, X0
	PXOR  X1, X1
	RET

// AES-XTS with VAES on AVX-512: sixteen blocks per iteration, four per
// ZMM register, every round key broadcast into a register of its own
// (Z16..Z30), and the four tweak vectors advanced by x^16 each with one
// carry-less multiply per lane. Only for whole multiples of sixteen
// blocks (every sector size dm-crypt allows); the rest goes through the
// AES-NI code above.

// Reduction polynomial for the carry-less multiply: x^128 = x^7+x^2+x+1.
DATA xtsPoly<>+0(SB)/8, $0x87
DATA xtsPoly<>+8(SB)/8, $0
GLOBL xtsPoly<>(SB), RODATA|NOPTR, $16

// DST = SRC·x^K in every 128-bit lane (K < 57): shift the lane left by K,
// carry the low quadword's top K bits into the high one and fold the high
// quadword's top K bits back in times 0x87. Z12 holds xtsPoly.
#define MULXK(SRC, DST, K) \
	VPSRLQ     $(64-K), SRC, Z8; \
	VPSLLQ     $K, SRC, DST; \
	VPSLLDQ    $8, Z8, Z9; \
	VPSRLDQ    $8, Z8, Z8; \
	VPCLMULQDQ $0x00, Z12, Z8, Z8; \
	VPTERNLOGQ $0x96, Z8, Z9, DST

#define ROUND16(OP, K) \
	OP K, Z0, Z0; \
	OP K, Z1, Z1; \
	OP K, Z2, Z2; \
	OP K, Z3, Z3

// Registers as in XTS above; OP/LAST are the VAES forms.
#define XTSVAES(OP, LAST) \
	FIRSTTWEAK; \
	MOVOU X9, X0; \
	MOVOU X9, X1; \
	DOUBLE(X1, X10, X11); \
	MOVOU X1, X2; \
	DOUBLE(X2, X10, X11); \
	MOVOU X2, X3; \
	DOUBLE(X3, X10, X11); \
	VINSERTI64X2 $1, X1, Z0, Z4; \
	VINSERTI64X2 $2, X2, Z4, Z4; \
	VINSERTI64X2 $3, X3, Z4, Z4; \
	VBROADCASTI32X4 xtsPoly<>(SB), Z12; \
	MULXK(Z4, Z5, 4); \
	MULXK(Z5, Z6, 4); \
	MULXK(Z6, Z7, 4); \
	VBROADCASTI32X4 0(AX), Z16; \
	VBROADCASTI32X4 16(AX), Z17; \
	VBROADCASTI32X4 32(AX), Z18; \
	VBROADCASTI32X4 48(AX), Z19; \
	VBROADCASTI32X4 64(AX), Z20; \
	VBROADCASTI32X4 80(AX), Z21; \
	VBROADCASTI32X4 96(AX), Z22; \
	VBROADCASTI32X4 112(AX), Z23; \
	VBROADCASTI32X4 128(AX), Z24; \
	VBROADCASTI32X4 144(AX), Z25; \
	VBROADCASTI32X4 160(AX), Z26; \
	VBROADCASTI32X4 176(AX), Z27; \
	VBROADCASTI32X4 192(AX), Z28; \
	VBROADCASTI32X4 208(AX), Z29; \
	VBROADCASTI32X4 224(AX), Z30; \
loop16: \
	VMOVDQU64  0(SI), Z0; \
	VMOVDQU64  64(SI), Z1; \
	VMOVDQU64  128(SI), Z2; \
	VMOVDQU64  192(SI), Z3; \
	VPTERNLOGQ $0x96, Z16, Z4, Z0; \
	VPTERNLOGQ $0x96, Z16, Z5, Z1; \
	VPTERNLOGQ $0x96, Z16, Z6, Z2; \
	VPTERNLOGQ $0x96, Z16, Z7, Z3; \
	ROUND16(OP, Z17); \
	ROUND16(OP, Z18); \
	ROUND16(OP, Z19); \
	ROUND16(OP, Z20); \
	ROUND16(OP, Z21); \
	ROUND16(OP, Z22); \
	ROUND16(OP, Z23); \
	ROUND16(OP, Z24); \
	ROUND16(OP, Z25); \
	CMPQ  CX, $10; \
	JEQ   last10; \
	ROUND16(OP, Z26); \
	ROUND16(OP, Z27); \
	ROUND16(OP, Z28); \
	ROUND16(OP, Z29); \
	ROUND16(LAST, Z30); \
	JMP   whiten; \
last10: \
	ROUND16(LAST, Z26); \
whiten: \
	VPXORQ     Z4, Z0, Z0; \
	VPXORQ     Z5, Z1, Z1; \
	VPXORQ     Z6, Z2, Z2; \
	VPXORQ     Z7, Z3, Z3; \
	VMOVDQU64  Z0, 0(DI); \
	VMOVDQU64  Z1, 64(DI); \
	VMOVDQU64  Z2, 128(DI); \
	VMOVDQU64  Z3, 192(DI); \
	MULXK(Z4, Z4, 16); \
	MULXK(Z5, Z5, 16); \
	MULXK(Z6, Z6, 16); \
	MULXK(Z7, Z7, 16); \
	ADDQ  $256, SI; \
	ADDQ  $256, DI; \
	SUBQ  $16, R9; \
	JNZ   loop16; \
	VPXORQ Z0, Z0, Z0; \
	VPXORQ Z1, Z1, Z1; \
	VPXORQ Z2, Z2, Z2; \
	VPXORQ Z3, Z3, Z3; \
	VPXORQ Z4, Z4, Z4; \
	VPXORQ Z5, Z5, Z5; \
	VPXORQ Z6, Z6, Z6; \
	VPXORQ Z7, Z7, Z7; \
	VPXORQ Z8, Z8, Z8; \
	VPXORQ Z9, Z9, Z9; \
	VPXORQ Z16, Z16, Z16; \
	VPXORQ Z17, Z17, Z17; \
	VPXORQ Z18, Z18, Z18; \
	VPXORQ Z19, Z19, Z19; \
	VPXORQ Z20, Z20, Z20; \
	VPXORQ Z21, Z21, Z21; \
	VPXORQ Z22, Z22, Z22; \
	VPXORQ Z23, Z23, Z23; \
	VPXORQ Z24, Z24, Z24; \
	VPXORQ Z25, Z25, Z25; \
	VPXORQ Z26, Z26, Z26; \
	VPXORQ Z27, Z27, Z27; \
	VPXORQ Z28, Z28, Z28; \
	VPXORQ Z29, Z29, Z29; \
	VPXORQ Z30, Z30, Z30; \
	VZEROUPPER; \
	PXOR  X9, X9; \
	PXOR  X11, X11

// func xtsEncryptVAES(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)
TEXT ·xtsEncryptVAES(SB), NOSPLIT, $0-56
	MOVQ rk+0(FP), AX
	MOVQ tk+8(FP), BX
	MOVQ rounds+16(FP), CX
	MOVQ sector+24(FP), DX
	MOVQ dst+32(FP), DI
	MOVQ src+40(FP), SI
	MOVQ blocks+48(FP), R9
	XTSVAES(VAESENC, VAESENCLAST)
	RET

// func xtsDecryptVAES(rk, tk *byte, rounds int, sector uint64, dst, src *byte, blocks int)
TEXT ·xtsDecryptVAES(SB), NOSPLIT, $0-56
	MOVQ rk+0(FP), AX
	MOVQ tk+8(FP), BX
	MOVQ rounds+16(FP), CX
	MOVQ sector+24(FP), DX
	MOVQ dst+32(FP), DI
	MOVQ src+40(FP), SI
	MOVQ blocks+48(FP), R9
	XTSVAES(VAESDEC, VAESDECLAST)
	RET
