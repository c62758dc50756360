package core

// The scan under verbatimLines (framer.go), stated in plain Go: the amd64
// assembly (scan_amd64.s) must compute the same, and without it (other
// architectures, or the purego build tag) this is what runs.

// lfBlocksPortable is lfBlocks (scan_amd64.go) in plain Go, a byte at a
// time: what the assembly must compute, on every architecture.
func lfBlocksPortable(p []byte) (next int, bad bool) {
	s := 1
	for ; s+17 <= len(p); s += 16 {
		for i := s; i < s+16; i++ {
			if badLF(p, i) {
				return i, true
			}
		}
	}
	return s, false
}
