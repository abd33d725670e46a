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
	AESENCLAST X8, X9; \
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
