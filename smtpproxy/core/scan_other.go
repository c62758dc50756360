//go:build !amd64

package core

// haveLFBlocks says lfBlocks is fast here: verbatimLines uses it. It is
// not on this architecture, where lfBlocks is the portable statement of
// what the amd64 assembly does, for the tests.
const haveLFBlocks = false

// lfBlocks: see scan_amd64.go.
func lfBlocks(p []byte) (next int, bad bool) { return lfBlocksPortable(p) }
