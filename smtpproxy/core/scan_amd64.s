#include "textflag.h"

// func lfBlocksSSE2(p []byte) (next int, bad bool)
//
// SSE2 (part of every amd64 CPU). For the block of 16
// positions [s, s+16) it compares p[s-1:s+15] with CR, p[s:s+16] with LF
// and p[s+1:s+17] with '.', so an LF is bad where the byte before it is
// not a CR or the byte after it is a dot. The first block has s = 1 and
// a block is read only while s+17 <= len(p): every load stays inside p.
TEXT ·lfBlocksSSE2(SB), NOSPLIT, $0-33
	MOVQ p_base+0(FP), SI
	MOVQ p_len+8(FP), BX
	MOVQ $1, AX
	MOVQ $0x0a0a0a0a0a0a0a0a, DX
	MOVQ DX, X1
	PUNPCKLQDQ X1, X1
	MOVQ $0x0d0d0d0d0d0d0d0d, DX
	MOVQ DX, X2
	PUNPCKLQDQ X2, X2
	MOVQ $0x2e2e2e2e2e2e2e2e, DX
	MOVQ DX, X3
	PUNPCKLQDQ X3, X3

	// 64 positions a step while they and one byte after them are in p,
	// without a branch per block: bad = LF AND NOT (CR before AND NOT
	// dot after), the four blocks' bad bytes ORed into one test. A step
	// with a bad LF goes on 16 at a time below, which finds it.
loop64:
	LEAQ 65(AX), CX
	CMPQ CX, BX
	JHI  loop
	MOVOU 0(SI)(AX*1), X4
	PCMPEQB X1, X4
	MOVOU -1(SI)(AX*1), X5
	PCMPEQB X2, X5
	MOVOU 1(SI)(AX*1), X6
	PCMPEQB X3, X6
	PANDN X5, X6
	PANDN X4, X6
	MOVOU 16(SI)(AX*1), X7
	PCMPEQB X1, X7
	MOVOU 15(SI)(AX*1), X8
	PCMPEQB X2, X8
	MOVOU 17(SI)(AX*1), X9
	PCMPEQB X3, X9
	PANDN X8, X9
	PANDN X7, X9
	MOVOU 32(SI)(AX*1), X10
	PCMPEQB X1, X10
	MOVOU 31(SI)(AX*1), X11
	PCMPEQB X2, X11
	MOVOU 33(SI)(AX*1), X12
	PCMPEQB X3, X12
	PANDN X11, X12
	PANDN X10, X12
	MOVOU 48(SI)(AX*1), X13
	PCMPEQB X1, X13
	MOVOU 47(SI)(AX*1), X14
	PCMPEQB X2, X14
	MOVOU 49(SI)(AX*1), X15
	PCMPEQB X3, X15
	PANDN X14, X15
	PANDN X13, X15
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
	MOVOU (SI)(AX*1), X4
	PCMPEQB X1, X4
	PMOVMSKB X4, R8
	TESTL R8, R8
	JZ   next
	MOVOU -1(SI)(AX*1), X5
	PCMPEQB X2, X5
	PMOVMSKB X5, R9
	MOVOU 1(SI)(AX*1), X6
	PCMPEQB X3, X6
	PMOVMSKB X6, R10
	NOTL R9
	ORL  R10, R9
	ANDL R8, R9
	JNZ  found

next:
	ADDQ $16, AX
	JMP  loop

found:
	BSFL R9, R9
	ADDQ R9, AX
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
	MOVQ $0x0a0a0a0a0a0a0a0a, DX
	MOVQ DX, X1
	VPBROADCASTQ X1, Y1
	MOVQ $0x0d0d0d0d0d0d0d0d, DX
	MOVQ DX, X2
	VPBROADCASTQ X2, Y2
	MOVQ $0x2e2e2e2e2e2e2e2e, DX
	MOVQ DX, X3
	VPBROADCASTQ X3, Y3

loop128:
	LEAQ 129(AX), CX
	CMPQ CX, BX
	JHI  stop
	VMOVDQU 0(SI)(AX*1), Y4
	VPCMPEQB Y1, Y4, Y4
	VMOVDQU -1(SI)(AX*1), Y5
	VPCMPEQB Y2, Y5, Y5
	VMOVDQU 1(SI)(AX*1), Y6
	VPCMPEQB Y3, Y6, Y6
	VPANDN Y5, Y6, Y6
	VPANDN Y4, Y6, Y6
	VMOVDQU 32(SI)(AX*1), Y7
	VPCMPEQB Y1, Y7, Y7
	VMOVDQU 31(SI)(AX*1), Y8
	VPCMPEQB Y2, Y8, Y8
	VMOVDQU 33(SI)(AX*1), Y9
	VPCMPEQB Y3, Y9, Y9
	VPANDN Y8, Y9, Y9
	VPANDN Y7, Y9, Y9
	VMOVDQU 64(SI)(AX*1), Y10
	VPCMPEQB Y1, Y10, Y10
	VMOVDQU 63(SI)(AX*1), Y11
	VPCMPEQB Y2, Y11, Y11
	VMOVDQU 65(SI)(AX*1), Y12
	VPCMPEQB Y3, Y12, Y12
	VPANDN Y11, Y12, Y12
	VPANDN Y10, Y12, Y12
	VMOVDQU 96(SI)(AX*1), Y13
	VPCMPEQB Y1, Y13, Y13
	VMOVDQU 95(SI)(AX*1), Y14
	VPCMPEQB Y2, Y14, Y14
	VMOVDQU 97(SI)(AX*1), Y15
	VPCMPEQB Y3, Y15, Y15
	VPANDN Y14, Y15, Y15
	VPANDN Y13, Y15, Y15
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
