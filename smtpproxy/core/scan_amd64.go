package core

// lfBlocks looks at the positions of p from 1 on, 16 at a time with SSE2,
// for an LF that is not the end of a CRLF or that a '.' follows. It stops
// at the first such LF (next is its position, bad is true) or where fewer
// than 17 bytes remain after the position it would look at next (next is
// that position, bad is false; positions from next on are not examined).
// In scan_amd64.s.
//
//go:noescape
func lfBlocks(p []byte) (next int, bad bool)

// haveLFBlocks says lfBlocks is fast here: verbatimLines uses it.
const haveLFBlocks = true
