package perf

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/milter"
)

// milterSessions is the number of milter sessions held open at once: the
// milter's default session limit.
const milterSessions = milter.DefaultMaxSessions

// maxMilterSessionBytes bounds the memory of one milter session inside a
// message (heap objects and stacks), as issue 6 bounds an idle proxy
// session: what a thousand concurrent SMTP sessions may cost Postfix's
// host in this process.
const maxMilterSessionBytes = 64 << 10

// milterState is how far each held session has gone.
type milterState int

const (
	milterIdle      milterState = iota // negotiated, connect event
	milterInMessage                    // and MAIL, RCPT, five header fields
)

func (s milterState) String() string {
	if s == milterIdle {
		return "idle"
	}
	return "in-message"
}

// milterPacket is one raw milter packet.
func milterPacket(cmd byte, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, cmd), data...)
}

// milterNegotiation is Postfix 3.7's offer without the no-reply flags, so
// that the milter answers every event and the client knows when each
// session has reached its state.
func milterNegotiation() []byte {
	var d []byte
	d = binary.BigEndian.AppendUint32(d, 6)
	d = binary.BigEndian.AppendUint32(d, 0x1ff)
	d = binary.BigEndian.AppendUint32(d, 0x1fffff&^0xff000&^0x80) // no SMFIP_NR_*, no SMFIP_NOHREPL
	return milterPacket('O', string(d))
}

// milterEvents are the events that bring a session to state, each of
// which the milter answers (continue).
func milterEvents(state milterState) [][]byte {
	ev := [][]byte{milterPacket('C', "client.example\x004\x61\xa8192.0.2.1\x00")}
	if state == milterInMessage {
		ev = append(ev,
			milterPacket('M', "<sender@example.org>\x00"),
			milterPacket('R', "<user@local.test>\x00"),
			milterPacket('L', "Received\x00 from client.example by mx.local.test; Thu, 1 Jan 2026 00:00:00 +0000\x00"),
			milterPacket('L', "Delivered-To\x00 someone@example.org\x00"),
			milterPacket('L', "From\x00 sender@example.org\x00"),
			milterPacket('L', "Subject\x00 a message of the benchmark\x00"),
			milterPacket('L', "Message-Id\x00 <1@example.org>\x00"),
		)
	}
	return ev
}

// readMilterReply reads one reply packet and returns its command byte.
func readMilterReply(r *bufio.Reader) (byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n == 0 {
		return 0, fmt.Errorf("empty reply packet")
	}
	if _, err := r.Discard(int(n) - 1); err != nil {
		return 0, err
	}
	return hdr[4], nil
}

// openMilterSessions opens n sessions to addr and brings each to state.
func openMilterSessions(addr string, n int, state milterState) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	r := bufio.NewReader(nil)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return conns, fmt.Errorf("session %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(idleDeadline))
		r.Reset(c)
		for i, p := range append([][]byte{milterNegotiation()}, milterEvents(state)...) {
			if _, err := c.Write(p); err != nil {
				return conns, fmt.Errorf("session %d: write: %w", len(conns), err)
			}
			cmd, err := readMilterReply(r)
			if err != nil {
				return conns, fmt.Errorf("session %d, packet %d: %w", len(conns), i, err)
			}
			if want := "Oc"[min(i, 1)]; cmd != want {
				return conns, fmt.Errorf("session %d, packet %d: reply %q, want %q", len(conns), i, cmd, want)
			}
		}
	}
	return conns, nil
}

// milterSessionCost is the memory one milter session in state adds, with
// n open: the cost of n sessions to the milter less that of n connections
// to a listener that only accepts and holds them (the client's side, and
// a server side that is a bare socket).
func milterSessionCost(tb testing.TB, n int, state milterState) memory {
	tb.Helper()
	base := heldConnCost(tb, n)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := milter.New(milter.Config{MaxSessions: n})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	before := readMemory()
	conns, err := openMilterSessions(ln.Addr().String(), n, state)
	after := readMemory()
	for _, c := range conns {
		c.Close()
	}
	cancel()
	if err := <-served; err != nil {
		tb.Errorf("Serve: %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return memory{(after.heap-before.heap)/float64(n) - base.heap, (after.stacks-before.stacks)/float64(n) - base.stacks}
}

// heldConnCost is the memory per connection of n client connections to a
// listener that accepts and holds them.
func heldConnCost(tb testing.TB, n int) memory {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	accepted := make(chan net.Conn, n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	before := readMemory()
	conns := make([]net.Conn, 0, 2*n)
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		conns = append(conns, c)
	}
	guard := time.After(idleDeadline)
	for len(conns) < 2*n {
		select {
		case c := <-accepted:
			conns = append(conns, c)
		case <-guard:
			tb.Fatalf("%d of %d connections accepted", len(conns)-n, n)
		}
	}
	after := readMemory()
	ln.Close()
	for _, c := range conns {
		c.Close()
	}
	return memory{(after.heap - before.heap) / float64(n), (after.stacks - before.stacks) / float64(n)}
}

// TestMilterSessionMemory holds 1000 milter sessions inside a message and
// checks the memory of one against maxMilterSessionBytes.
func TestMilterSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2000 connections")
	}
	for _, state := range []milterState{milterIdle, milterInMessage} {
		m := milterSessionCost(t, milterSessions, state)
		t.Logf("%s milter session, %d open: heap %.1f KiB, stacks %.1f KiB", state, milterSessions, m.heap/1024, m.stacks/1024)
		if raceEnabled {
			continue
		}
		if total := m.heap + m.stacks; total > maxMilterSessionBytes {
			t.Errorf("%s milter session uses %.0f bytes (heap %.0f, stacks %.0f), bound %d", state, total, m.heap, m.stacks, maxMilterSessionBytes)
		}
		if m.heap <= 0 {
			t.Errorf("%s milter session measured at %.0f heap bytes: the measure is broken", state, m.heap)
		}
	}
}

// BenchmarkMilterSessions reports the memory of one milter session with
// 1000 open, idle and inside a message. Run it with -benchtime 1x.
func BenchmarkMilterSessions(b *testing.B) {
	for _, state := range []milterState{milterIdle, milterInMessage} {
		b.Run(state.String(), func(b *testing.B) {
			for b.Loop() {
				m := milterSessionCost(b, milterSessions, state)
				b.ReportMetric(m.heap/1024, "heap-KiB/session")
				b.ReportMetric(m.stacks/1024, "stack-KiB/session")
				b.ReportMetric((m.heap+m.stacks)/1024, "KiB/session")
			}
		})
	}
}
