#include "textflag.h"

// func lfBlocks(p []byte) (next int, bad bool)
//
// SSE2 (part of every amd64 CPU). For the block of 16
// positions [s, s+16) it compares p[s-1:s+15] with CR, p[s:s+16] with LF
// and p[s+1:s+17] with '.', so an LF is bad where the byte before it is
// not a CR or the byte after it is a dot. The first block has s = 1 and
// a block is read only while s+17 <= len(p): every load stays inside p.
TEXT ·lfBlocks(SB), NOSPLIT, $0-33
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
