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
// upstream and copies bytes both ways with io.Copy, knowing nothing of SMTP.
// It is the cost floor of any proxy on the machine: two sockets and a copy
// per byte (on Linux the copy is splice(2), which moves the bytes in the
// kernel).
type Relay struct {
	ln       net.Listener
	upstream string
	sessions atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewRelay relays connections accepted on ln to upstream (host:port) until
// Close.
func NewRelay(ln net.Listener, upstream string) *Relay {
	r := &Relay{ln: ln, upstream: upstream, conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.accept()
	return r
}

// Addr is the address the relay listens on.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Sessions is the number of connections relayed so far.
func (r *Relay) Sessions() int64 { return r.sessions.Load() }

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
		copyHalf(up, client)
		close(done)
	}()
	copyHalf(client, up)
	<-done
}

// copyHalf copies src to dst until src ends, then half-closes dst so its
// peer sees the end too (or closes it when it cannot be half-closed).
func copyHalf(dst, src net.Conn) {
	io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
