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
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v != 0
}

// TestLoadNagle: a Nagle load turns Nagle's algorithm on (TCP_NODELAY off)
// and still delivers every byte, with content larger than, equal to and
// smaller than Postfix's stream buffer.
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
		w.close()
	}
	for _, size := range []int{10 << 10, postfixStreamBuffer, 2*postfixStreamBuffer + 1000} {
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
