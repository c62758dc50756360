//go:build !purego

#include "textflag.h"

// The test, for each position i of a block: p[i] is an LF, and p[i-1] is
// not a CR or p[i+1] is a dot. With the block's bytes compared with LF,
// the bytes one before with CR and the bytes one after with '.':
// bad = LF AND NOT (CR before AND NOT dot after). Both macros leave the
// block's bad bytes (0xff) in dot; lf and cr are scratch. X1/Y1, X2/Y2
// and X3/Y3 hold LF, CR and '.' in every byte; SI is p, AX the position.

// BAD16: the 16 positions from AX+off, SSE2.
#define BAD16(off, lf, cr, dot) \
	MOVOU off(SI)(AX*1), lf \
	PCMPEQB X1, lf \
	MOVOU off-1(SI)(AX*1), cr \
	PCMPEQB X2, cr \
	MOVOU off+1(SI)(AX*1), dot \
	PCMPEQB X3, dot \
	PANDN cr, dot \
	PANDN lf, dot

// BAD32: the 32 positions from AX+off, AVX2.
#define BAD32(off, lf, cr, dot) \
	VMOVDQU off(SI)(AX*1), lf \
	VPCMPEQB Y1, lf, lf \
	VMOVDQU off-1(SI)(AX*1), cr \
	VPCMPEQB Y2, cr, cr \
	VMOVDQU off+1(SI)(AX*1), dot \
	VPCMPEQB Y3, dot, dot \
	VPANDN cr, dot, dot \
	VPANDN lf, dot, dot

// LOADCHARS puts LF, CR and '.' in every byte of X1, X2 and X3.
#define LOADCHARS \
	MOVQ $0x0a0a0a0a0a0a0a0a, DX \
	MOVQ DX, X1 \
	PUNPCKLQDQ X1, X1 \
	MOVQ $0x0d0d0d0d0d0d0d0d, DX \
	MOVQ DX, X2 \
	PUNPCKLQDQ X2, X2 \
	MOVQ $0x2e2e2e2e2e2e2e2e, DX \
	MOVQ DX, X3 \
	PUNPCKLQDQ X3, X3

// func lfBlocksSSE2(p []byte) (next int, bad bool)
//
// SSE2 (part of every amd64 CPU). Blocks of 16 positions [s, s+16) from
// s = 1; a block is read only while s+17 <= len(p), so every load (from
// p[s-1] to p[s+16]) stays inside p.
TEXT ·lfBlocksSSE2(SB), NOSPLIT, $0-33
	MOVQ p_base+0(FP), SI
	MOVQ p_len+8(FP), BX
	MOVQ $1, AX
	LOADCHARS

	// 64 positions a step while they and one byte after them are in p,
	// without a branch per block: the four blocks' bad bytes ORed into
	// one test. A step with a bad LF goes on 16 at a time below, which
	// finds it.
loop64:
	LEAQ 65(AX), CX
	CMPQ CX, BX
	JHI  loop
	BAD16(0, X4, X5, X6)
	BAD16(16, X7, X8, X9)
	BAD16(32, X10, X11, X12)
	BAD16(48, X13, X14, X15)
	POR  X9, X6
	POR  X12, X6
	POR  X15, X6
	PMOVMSKB X6, R8
	TESTL R8, R8
	JNZ  loop
	ADDQ $64, AX
	JMP  loop64

loop:
	LEAQ 17(AX), CX
	CMPQ CX, BX
	JHI  done
	BAD16(0, X4, X5, X6)
	PMOVMSKB X6, R8
	TESTL R8, R8
	JNZ  found
	ADDQ $16, AX
	JMP  loop

found:
	BSFL R8, R8
	ADDQ R8, AX
	MOVQ AX, next+24(FP)
	MOVB $1, bad+32(FP)
	RET

done:
	MOVQ AX, next+24(FP)
	MOVB $0, bad+32(FP)
	RET

// func lfSkipAVX2(p []byte) (next int)
//
// AVX2, 128 positions a step, the same test as lfBlocksSSE2's 64-position
// step on 32-byte blocks. It returns the first position of the step that
// holds a bad LF, or where fewer than 129 bytes remain after the position
// it would look at next; lfBlocks goes on from there with SSE2. Positions
// start at 1, so next is on lfBlocksSSE2's 16-position lattice.
TEXT ·lfSkipAVX2(SB), NOSPLIT, $0-32
	MOVQ p_base+0(FP), SI
	MOVQ p_len+8(FP), BX
	MOVQ $1, AX
	LOADCHARS
	VPBROADCASTQ X1, Y1
	VPBROADCASTQ X2, Y2
	VPBROADCASTQ X3, Y3

loop128:
	LEAQ 129(AX), CX
	CMPQ CX, BX
	JHI  stop
	BAD32(0, Y4, Y5, Y6)
	BAD32(32, Y7, Y8, Y9)
	BAD32(64, Y10, Y11, Y12)
	BAD32(96, Y13, Y14, Y15)
	VPOR Y9, Y6, Y6
	VPOR Y12, Y6, Y6
	VPOR Y15, Y6, Y6
	VPTEST Y6, Y6
	JNZ  stop
	ADDQ $128, AX
	JMP  loop128

stop:
	VZEROUPPER
	MOVQ AX, next+24(FP)
	RET
