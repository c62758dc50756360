//go:build unix

package smtpload

import (
	"bufio"
	"context"
	"net"
	"syscall"
	"testing"
)

// noDelay reports whether c has TCP_NODELAY set.
func noDelay(t *testing.T, c net.Conn) bool {
	t.Helper()
	v, err := tcpOption(c.(*net.TCPConn), syscall.TCP_NODELAY)
	if err != nil {
		t.Fatal(err)
	}
	return v != 0
}

// TestLoadNagle: a Nagle load turns Nagle's algorithm on (TCP_NODELAY off),
// writes through a buffer of 4 MSS as Postfix does, and still delivers
// every byte, with content larger than, equal to and smaller than that
// buffer.
func TestLoadNagle(t *testing.T) {
	s := startSink(t)
	for _, nagle := range []bool{false, true} {
		l := &Load{Addr: s.Addr(), Message: Message(10<<10, ""), Nagle: nagle}
		w := &worker{l: l, cmds: l.commands(), r: bufio.NewReaderSize(nil, 4<<10)}
		if err := w.open(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := noDelay(t, w.conn); got == nagle {
			t.Errorf("Nagle %v: TCP_NODELAY is %v", nagle, got)
		}
		// The MSS read at connect time, as Postfix reads it, can differ
		// from the one read now (loopback reports 32741, then 32768).
		if mss := w.bufSize / 4; nagle && (w.bufSize%4 != 0 || mss <= vstreamBufSize/4 || mss > 65535) {
			t.Errorf("stream buffer %d bytes, want 4 times a loopback MSS", w.bufSize)
		}
		w.close()
	}
	buf := postfixBuffer(loopbackMSS)
	for _, size := range []int{10 << 10, buf, 2*buf + 1000} {
		msgs, bytes := s.Messages(), s.Bytes()
		msg := Message(size, "")
		l := &Load{Addr: s.Addr(), Message: msg, Concurrency: 2, Nagle: true}
		res, err := l.Run(context.Background(), 4)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if res.Accepted != 4 || s.Messages()-msgs != 4 || s.Bytes()-bytes != int64(4*len(msg)) {
			t.Fatalf("size %d: accepted %d; sink took %d messages, %d bytes (want %d)", size, res.Accepted, s.Messages()-msgs, s.Bytes()-bytes, 4*len(msg))
		}
	}
}
