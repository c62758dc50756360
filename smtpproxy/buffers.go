package smtpproxy

import "sync"

// Read buffers. A session reads each connection into a small buffer while
// commands and replies flow, the client into a larger one while a message's
// header section flows, and into a large one while its body streams: an
// idle session holds 8 KiB of buffers, one reading a header 68 KiB (with
// the header buffer, up to -max-header-bytes, which sets the memory bound),
// one streaming a body 260 KiB. Buffers are pooled per Server, so a
// connection per message (Postfix's way with a filter) does not allocate
// and clear them each time.
const (
	// commandBufferSize is the read buffer of each connection outside
	// message data. A command line is at most 2050 octets with its line
	// end (MaxCommandLine; longer ones are refused), a reply a few hundred
	// (an EHLO reply about 300), so one read nearly always holds a whole
	// one; anything longer is assembled by the core over several reads.
	commandBufferSize = 4 << 10
	// dataBufferSize is the client's read buffer while a header section
	// flows (and while refused data is read and thrown away).
	dataBufferSize = 64 << 10
	// streamBufferSize is the client's read buffer while a body streams.
	// The core lends canonical data straight from it to the upstream, so
	// a read of it goes upstream in one write. The benchmarks' 1 MiB
	// messages (perf) took 0.83 of the blind relay's throughput with
	// 64 KiB reads and 0.88 with 256 KiB or 1 MiB reads: fewer system
	// calls and wake-ups per megabyte. (io.Copy's splice moves up to 1 MiB
	// a call.)
	streamBufferSize = 256 << 10
)

// DataReadSize is the size of the client reads while a message body
// streams. The benchmarks' copying relay (package perf) copies through a
// buffer of this size: the floor of a proxy that reads every byte the way
// this one does.
const DataReadSize = streamBufferSize

// bufferPools holds the read buffers not in use, as pointers so that
// putting one back does not allocate.
type bufferPools struct {
	command, data, stream sync.Pool
}

func newBufferPools() *bufferPools {
	p := &bufferPools{}
	p.command.New = func() any { b := make([]byte, commandBufferSize); return &b }
	p.data.New = func() any { b := make([]byte, dataBufferSize); return &b }
	p.stream.New = func() any { b := make([]byte, streamBufferSize); return &b }
	return p
}

func (p *bufferPools) getCommand() *[]byte  { return p.command.Get().(*[]byte) }
func (p *bufferPools) putCommand(b *[]byte) { p.command.Put(b) }

// get returns a buffer of size (dataBufferSize or streamBufferSize).
func (p *bufferPools) get(size int) *[]byte {
	if size == streamBufferSize {
		return p.stream.Get().(*[]byte)
	}
	return p.data.Get().(*[]byte)
}

// put returns b to the pool it came from.
func (p *bufferPools) put(b *[]byte) {
	switch cap(*b) {
	case streamBufferSize:
		p.stream.Put(b)
	case dataBufferSize:
		p.data.Put(b)
	default:
		p.putCommand(b)
	}
}
