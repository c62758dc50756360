//go:build !purego

package core

import (
	"testing"

	"golang.org/x/sys/cpu"
)

// lfBlocksImpls are the ways lfBlocks is computed here, each to agree
// with lfBlocksPortable: as dispatched (with AVX2 where the CPU has it)
// and with SSE2 alone.
func lfBlocksImpls() map[string]func([]byte) (int, bool) {
	return map[string]func([]byte) (int, bool){"lfBlocks": lfBlocks, "lfBlocksSSE2": lfBlocksSSE2}
}

// The AVX2 path is the one production takes on this machine; say so when
// it cannot be tested here.
func TestAVX2Tested(t *testing.T) {
	if !cpu.X86.HasAVX2 {
		t.Skip("this CPU has no AVX2: lfSkipAVX2 is not tested here (lfBlocks uses SSE2 alone)")
	}
	p := []byte("a\r\n" + string(make([]byte, 300)) + "\n")
	if next := lfSkipAVX2(p); next != 1+128*2 {
		t.Errorf("lfSkipAVX2 stopped at %d in %d bytes with no bad LF before the last 129, want %d", next, len(p), 1+128*2)
	}
}
