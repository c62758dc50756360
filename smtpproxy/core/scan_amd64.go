//go:build !purego

package core

// The scan under verbatimLines with SSE2 and AVX2 (scan_amd64.s); the
// portable statement of what it computes is lfBlocksPortable (scan.go),
// and the purego build tag leaves this file out.

import "golang.org/x/sys/cpu"

// lfBlocks looks at the positions of p from 1 on for an LF that is not
// the end of a CRLF or that a '.' follows. It stops at the first such LF
// (next is its position, bad is true) or where fewer than 17 bytes remain
// after the position it would look at next (next is that position, bad is
// false; positions from next on are not examined). Positions advance by
// 16 from 1 (lfBlocksPortable states it in Go); the work is done 128
// positions a step with AVX2 where the CPU has it, then 64 and 16 at a
// time with SSE2, which every amd64 CPU has.
func lfBlocks(p []byte) (next int, bad bool) {
	s := 1
	if cpu.X86.HasAVX2 && len(p) >= lfSkipMin {
		s = lfSkipAVX2(p)
	}
	next, bad = lfBlocksSSE2(p[s-1:])
	return next + s - 1, bad
}

// lfSkipMin is the shortest input lfSkipAVX2 takes a step in.
const lfSkipMin = 129

// lfBlocksSSE2 is lfBlocks with SSE2 alone. In scan_amd64.s.
//
//go:noescape
func lfBlocksSSE2(p []byte) (next int, bad bool)

// lfSkipAVX2 takes lfBlocks's first steps, 128 positions each, and
// returns where lfBlocksSSE2 goes on (on its 16-position lattice): at the
// step that holds a bad LF, or where fewer than 129 bytes remain. In
// scan_amd64.s; only where the CPU has AVX2.
//
//go:noescape
func lfSkipAVX2(p []byte) (next int)

// haveLFBlocks says lfBlocks is fast here: verbatimLines uses it.
const haveLFBlocks = true
