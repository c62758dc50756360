//go:build !amd64 || purego

package core

// haveLFBlocks says lfBlocks is fast here: verbatimLines uses it. It is
// not on this architecture, or with the purego build tag (the portable
// path alone, as CI runs it), where lfBlocks is the portable statement of
// what the amd64 assembly does, for the tests.
const haveLFBlocks = false

// lfBlocks: see scan_amd64.go.
func lfBlocks(p []byte) (next int, bad bool) { return lfBlocksPortable(p) }
