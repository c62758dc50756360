#include "textflag.h"

// func lfBlocks(p []byte) (next int, bad bool)
//
// SSE2 (part of every amd64 CPU), 16 positions a step. For the block of
// positions [s, s+16) it compares p[s-1:s+15] with CR, p[s:s+16] with LF
// and p[s+1:s+17] with '.', so an LF is bad where the byte before it is
// not a CR or the byte after it is a dot. The first step has s = 1 and a
// step runs only while s+17 <= len(p): every load stays inside p.
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
