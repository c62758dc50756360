package smtpproxy

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

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
	// a read of it goes upstream in one write; reads this large mean
	// fewer system calls and wake-ups per megabyte than dataBufferSize
	// (docs/performance.md).
	streamBufferSize = 256 << 10
)

// streamSocketBuffer is the receive buffer (SO_RCVBUF) a client's socket
// gets, on Linux, once a message body streams; the kernel doubles the
// figure for its bookkeeping, so the socket holds at most 2 MiB.
//
// Until then the kernel sizes the buffer itself: it starts at
// net.ipv4.tcp_rmem's default (128 KiB) and grows it as the reader
// drains it. Postfix opens a connection to its filter for every message,
// so a large message spends its whole transfer in that growth, and the
// proxy, which reads a little slower than a copying relay, kept meeting a
// full buffer: a zero window, after which the sender waits for the window
// update and then sends in a burst. A fixed buffer ends that; a smaller
// one (256 KiB) left the window too small for the sender. The
// measurements are in docs/performance.md.
//
// It is set only when a body streams, once per connection, so a message
// that arrives in one read costs no system call. 2 MiB covers a gigabit
// link with a 16 ms round trip; the proxy's client is Postfix's smtpd, on
// the same host or LAN. It also bounds what the kernel holds for a
// streaming session, which its own sizing lets grow to tcp_rmem's
// maximum (6 MiB by the kernel's default). Where net.core.rmem_max is
// lower than this (the kernel's default is 208 KiB), the kernel would cap
// the request below what its own sizing reaches, so the buffer is left to
// the kernel and the proxy says so as it starts (streamRcvbuf).
const streamSocketBuffer = 1 << 20

// rcvbufWithin is streamSocketBuffer when rmemMax, the text of
// net.core.rmem_max, allows it; else 0 and why.
func rcvbufWithin(rmemMax string) (int, error) {
	text := strings.TrimSpace(rmemMax)
	limit, err := strconv.Atoi(text)
	switch {
	case err != nil:
		return 0, fmt.Errorf("net.core.rmem_max %q is not a number", text)
	case limit < streamSocketBuffer:
		return 0, fmt.Errorf("net.core.rmem_max is %d, below the %d the proxy would set", limit, streamSocketBuffer)
	}
	return streamSocketBuffer, nil
}

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
