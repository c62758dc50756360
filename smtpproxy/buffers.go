package smtpproxy

import "sync"

// Read buffers. A session reads each connection into a small buffer while
// commands and replies flow, and the client into a large one only while
// message data flows: an idle session holds 8 KiB of buffers, a streaming
// one 72 KiB. Buffers are pooled per Server, so a connection per message
// (Postfix's way with a filter) does not allocate and clear them each time.
const (
	// commandBufferSize is the read buffer of each connection outside
	// message data. A command line is at most 2050 octets with its line
	// end (MaxCommandLine; longer ones are refused), a reply a few hundred
	// (an EHLO reply about 300), so one read nearly always holds a whole
	// one; anything longer is assembled by the core over several reads.
	commandBufferSize = 4 << 10
	// dataBufferSize is the client's read buffer while message data
	// flows. Larger reads mean fewer system calls and fewer hand-overs
	// between the reader goroutine and the session per megabyte, and the
	// core's output bound (64 KiB) lets one read go upstream in one write.
	dataBufferSize = 64 << 10
)

// DataReadSize is the size of the client reads while message data flows.
// The benchmarks' copying relay (package perf) copies through a buffer of
// this size: the floor of a proxy that reads every byte the way this one
// does.
const DataReadSize = dataBufferSize

// bufferPools holds the read buffers not in use, as pointers so that
// putting one back does not allocate.
type bufferPools struct {
	command, data sync.Pool
}

func newBufferPools() *bufferPools {
	p := &bufferPools{}
	p.command.New = func() any { b := make([]byte, commandBufferSize); return &b }
	p.data.New = func() any { b := make([]byte, dataBufferSize); return &b }
	return p
}

func (p *bufferPools) getCommand() *[]byte  { return p.command.Get().(*[]byte) }
func (p *bufferPools) putCommand(b *[]byte) { p.command.Put(b) }
func (p *bufferPools) getData() *[]byte     { return p.data.Get().(*[]byte) }
func (p *bufferPools) putData(b *[]byte)    { p.data.Put(b) }

// put returns b to the pool it came from.
func (p *bufferPools) put(b *[]byte) {
	if cap(*b) == dataBufferSize {
		p.putData(b)
	} else {
		p.putCommand(b)
	}
}
