package smtpload

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// relayDialTimeout bounds the relay's connection to its upstream.
const relayDialTimeout = 10 * time.Second

// Relay is a blind relay: for each connection it accepts it connects to the
// upstream and copies bytes both ways, knowing nothing of SMTP. Made by
// NewRelay it copies with io.Copy, which on Linux is splice(2) between TCP
// sockets: the bytes move inside the kernel and never reach the process, so
// it is the cost floor of any proxy that need not look at them. Made by
// NewCopyRelay it reads every byte into a buffer and writes it out again,
// as any proxy that must look at the bytes (the loop proxy frames every
// line) has to: that is the floor of such a proxy.
type Relay struct {
	ln       net.Listener
	upstream string
	sessions atomic.Int64

	// bufSize is the copying relay's buffer size; 0 means io.Copy.
	bufSize  int
	bufs     sync.Pool    // of *[]byte of bufSize
	buffered atomic.Int64 // bytes read into the buffers so far

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewRelay relays connections accepted on ln to upstream (host:port) with
// io.Copy until Close.
func NewRelay(ln net.Listener, upstream string) *Relay {
	return newRelay(ln, upstream, 0)
}

// NewCopyRelay relays connections accepted on ln to upstream (host:port)
// until Close, copying each direction through a buffer of bufSize bytes
// (pooled, as the proxy pools its own) with plain reads and writes: never
// splice(2), sendfile(2) or any other way of keeping the bytes out of the
// process. bufSize must be positive.
func NewCopyRelay(ln net.Listener, upstream string, bufSize int) *Relay {
	if bufSize <= 0 {
		panic("smtpload: NewCopyRelay needs a positive buffer size")
	}
	return newRelay(ln, upstream, bufSize)
}

func newRelay(ln net.Listener, upstream string, bufSize int) *Relay {
	r := &Relay{ln: ln, upstream: upstream, bufSize: bufSize, conns: make(map[net.Conn]struct{})}
	r.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	r.wg.Add(1)
	go r.accept()
	return r
}

// Addr is the address the relay listens on.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Sessions is the number of connections relayed so far.
func (r *Relay) Sessions() int64 { return r.sessions.Load() }

// Buffered is the number of bytes a copying relay has read into its
// buffers so far, both directions; always 0 for NewRelay's, whose bytes
// stay in the kernel. It counts completed sessions only.
func (r *Relay) Buffered() int64 { return r.buffered.Load() }

// Close stops the listener, closes every open connection and waits for the
// copies to end.
func (r *Relay) Close() error {
	err := r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

// track records c as open; it reports false when the relay is closing.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !r.track(client) {
			client.Close()
			return
		}
		r.sessions.Add(1)
		r.wg.Add(1)
		go r.relay(client)
	}
}

func (r *Relay) relay(client net.Conn) {
	defer r.wg.Done()
	defer r.untrack(client)
	up, err := net.DialTimeout("tcp", r.upstream, relayDialTimeout)
	if err != nil {
		return
	}
	if !r.track(up) {
		up.Close()
		return
	}
	defer r.untrack(up)
	done := make(chan struct{})
	go func() {
		r.copyHalf(up, client)
		close(done)
	}()
	r.copyHalf(client, up)
	<-done
}

// copyHalf copies src to dst until src ends, then half-closes dst so its
// peer sees the end too (or closes it when it cannot be half-closed).
func (r *Relay) copyHalf(dst, src net.Conn) {
	if r.bufSize == 0 {
		io.Copy(dst, src)
	} else {
		buf := r.bufs.Get().(*[]byte)
		// The wrappers hide ReadFrom and WriteTo from io.CopyBuffer, so
		// that it reads into buf and writes from it.
		rd := &countingReader{r: src}
		io.CopyBuffer(writerOnly{dst}, rd, *buf)
		r.bufs.Put(buf)
		r.buffered.Add(rd.n)
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// countingReader is a plain io.Reader (no WriteTo) that counts what it
// read.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// writerOnly is a plain io.Writer (no ReadFrom).
type writerOnly struct{ w io.Writer }

func (w writerOnly) Write(p []byte) (int, error) { return w.w.Write(p) }
