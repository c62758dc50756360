package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/allowlist"
)

// packet is one raw milter packet: length, command, data.
func packet(cmd byte, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, cmd), data...)
}

// optneg is Postfix 3.7's negotiation packet: version 6, every action,
// the protocol options it offers.
func optneg() []byte {
	var d []byte
	d = binary.BigEndian.AppendUint32(d, 6)
	d = binary.BigEndian.AppendUint32(d, 0x1ff)
	d = binary.BigEndian.AppendUint32(d, 0x1fffff)
	return packet('O', string(d))
}

// rawSession connects to the server and negotiates by hand.
func rawSession(t *testing.T, addr string, negotiate bool) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testWait))
	if negotiate {
		if _, err := c.Write(optneg()); err != nil {
			t.Fatalf("write negotiation: %v", err)
		}
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("read negotiation reply: %v", err)
		}
		rest := make([]byte, binary.BigEndian.Uint32(hdr[:4])-1)
		if _, err := io.ReadFull(c, rest); err != nil || hdr[4] != 'O' {
			t.Fatalf("negotiation reply %q %q: %v", hdr, rest, err)
		}
	}
	return c
}

// expectClosed reads until the server closes the connection; nothing but
// the close may come.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v (want the server to close the connection)", err)
	}
	if len(b) != 0 {
		t.Errorf("the server sent %q before closing", b)
	}
}

func TestMalformedPackets(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	for _, tc := range []struct {
		name       string
		negotiated bool
		send       []byte
		halfClose  bool // then close the write side (a truncated packet)
		want       string
	}{
		{"zero length first", false, []byte{0, 0, 0, 0}, false, "length 0"},
		{"zero length", true, []byte{0, 0, 0, 0}, false, "length 0"},
		{"huge length", true, []byte{0x7f, 0xff, 0xff, 0xff}, false, "length 2147483647 over the limit of 2097152 bytes"},
		{"just over the limit", true, binary.BigEndian.AppendUint32(nil, MaxPacketBytes+1), false, "length 2097153 over the limit"},
		{"connect without NUL", true, packet('C', "host"), false, "connect: the host name has no NUL terminator"},
		{"connect without family", true, packet('C', "host\x00"), false, "connect: no protocol family"},
		{"connect without port", true, packet('C', "host\x004x"), false, "connect: no port"},
		{"MAIL without NUL", true, packet('M', "<a@b>"), false, "MAIL: the address has no NUL terminator"},
		{"RCPT without NUL", true, packet('R', "<a@b>"), false, "RCPT: the address has no NUL terminator"},
		{"unknown command", true, packet('Z', "x\x00"), false, `unknown command 'Z'`},
		{"truncated packet", true, packet('L', "Subject\x00 x\x00")[:9], true, "truncated: the connection closed after 5 of 12 bytes of a packet"},
		{"truncated length", true, []byte{0, 0}, true, "truncated: the connection closed after 2 of the 4 bytes of a length field"},
		{"truncated negotiation", false, optneg()[:10], true, "truncated"},
		{"header event with one string", true, packet('L', "Subject"), false, "library"},
		{"negotiation too short", false, packet('O', "\x00\x00\x00\x06"), false, "library"},
		{"second negotiation", true, optneg(), false, "library"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawSession(t, ts.addr, tc.negotiated)
			if _, err := c.Write(tc.send); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.halfClose {
				c.(*net.TCPConn).CloseWrite()
			}
			expectClosed(t, c)
			if tc.want == "library" {
				ts.waitLog(t, "reason=protocol-error duration=")
				ts.waitLog(t, errLibrary.Error())
			} else {
				ts.waitLog(t, "malformed milter packet: "+tc.want)
			}
			// The server goes on serving.
			if got := judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
				t.Fatalf("after the bad packet: answer %v, want the loop reply", got.act)
			}
		})
	}
	ts.stop(t)
	if n := ts.obs.endedWith(EndProtocol); n != 16 {
		t.Errorf("%d sessions ended with a protocol error, want 16", n)
	}
	if strings.Contains(ts.logs.String(), "panic") {
		t.Errorf("a handler panicked")
	}
}

func TestAllowList(t *testing.T) {
	only1, err := allowlist.Parse("127.0.0.1/32")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{AllowClients: only1}, nil)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: testWait}
	c, err := d.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatalf("dial from 127.0.0.2: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testWait))
	c.Write(optneg()) // may fail: the server may have closed already
	expectClosed(t, c)
	ts.waitLog(t, `msg="peer refused: not in -allow-client" peer=127.0.0.2:`)
	if n := ts.obs.refusedPeers.Load(); n != 1 {
		t.Errorf("refused peers counted %d, want 1", n)
	}
	if n := ts.obs.started.Load(); n != 0 {
		t.Errorf("%d sessions started for a refused peer", n)
	}
	// 127.0.0.1 is in the list.
	if got := judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("from 127.0.0.1: answer %v, want the loop reply", got.act)
	}

	// The default list allows ::1.
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	ts6 := startServer(t, Config{}, ln6)
	if got := judge(t, ts6.addr, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("from ::1 with the default list: answer %v, want the loop reply", got.act)
	}
	if n := ts6.obs.refusedPeers.Load(); n != 0 {
		t.Errorf("::1 refused %d times by the default list", n)
	}
}

func TestUnixSocketPeer(t *testing.T) {
	path := t.TempDir() + "/milter.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	none, _ := allowlist.Parse()
	ts := startServer(t, Config{AllowClients: none}, ln)
	c := gomilter.NewClient("unix", path, gomilter.WithReadTimeout(testWait), gomilter.WithWriteTimeout(testWait))
	macros := gomilter.NewMacroBag()
	s := openSession(t, c, macros, "")
	if got := sendMessage(t, s, macros, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("over a Unix socket with an empty allow-list: answer %v, want the loop reply", got.act)
	}
	_ = ts
}

func TestSessionLimit(t *testing.T) {
	ts := startServer(t, Config{MaxSessions: 1}, nil)
	first := rawSession(t, ts.addr, true)
	second := rawSession(t, ts.addr, false)
	expectClosed(t, second)
	ts.waitLog(t, `msg="too many sessions; connection closed"`)
	if n := ts.obs.refusedSessions.Load(); n != 1 {
		t.Errorf("refused sessions counted %d, want 1", n)
	}
	first.Close()
	// Once the first has ended, a session is served again.
	ts.waitLog(t, "reason=closed")
	if got := judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("after the first ended: answer %v, want the loop reply", got.act)
	}
}

// An accept that fails for want of descriptors is counted and logged as
// the local shortage it is, and the listener goes on accepting.
func TestAcceptShortageRetried(t *testing.T) {
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &shortListener{Listener: inner, fails: 2}
	ts := startServer(t, Config{}, ln)
	if got := judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("after two failed accepts: answer %v, want the loop reply", got.act)
	}
	if n := ts.obs.shortages.Load(); n != 2 {
		t.Errorf("accept shortages counted %d, want 2", n)
	}
	if n := strings.Count(ts.logs.String(), "out of file descriptors: cannot accept a connection; retrying"); n != 2 {
		t.Errorf("%d shortage log lines, want 2:\n%s", n, ts.logs.String())
	}
}

// shortListener fails its first Accepts with EMFILE.
type shortListener struct {
	net.Listener
	fails int
}

func (l *shortListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, Config{IdleTimeout: 50 * time.Millisecond}, nil)
	c := rawSession(t, ts.addr, true)
	expectClosed(t, c)
	ts.waitLog(t, "reason=timeout")
}

func TestDrain(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	idle := rawSession(t, ts.addr, true)
	macros := gomilter.NewMacroBag()
	busy := openSession(t, postfixLike(ts.addr), macros, "")
	if _, err := busy.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.Rcpt(loopRcpt, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.DataStart(); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.HeaderField("Delivered-To", " "+loopRcpt, nil); err != nil {
		t.Fatal(err)
	}
	ts.waitLog(t, "msg=\"session start\" session=")
	ts.cancel()
	ts.waitLog(t, "msg=\"shutting down\" sessions=2")

	// The listener is closed; the idle session is closed at once.
	if c, err := net.DialTimeout("tcp", ts.addr, testWait); err == nil {
		c.Close()
		t.Errorf("a connection was accepted after the shutdown began")
	}
	expectClosed(t, idle)

	// The message in progress gets its reply, then the session ends.
	if _, err := busy.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.BodyChunk([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_, act, err := busy.End()
	if err != nil || !isLoopReply(act, loopRcpt) {
		t.Fatalf("the message in progress at shutdown: answer %v, %v; want the loop reply", act, err)
	}
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.done = nil
	case <-time.After(testWait):
		t.Fatalf("Serve did not return after the last message")
	}
	if n := ts.obs.endedWith(EndShutdown); n != 2 {
		t.Errorf("%d sessions ended by the shutdown, want 2", n)
	}
}

func TestDrainDeadline(t *testing.T) {
	ts := startServer(t, Config{DrainTimeout: 100 * time.Millisecond}, nil)
	macros := gomilter.NewMacroBag()
	busy := openSession(t, postfixLike(ts.addr), macros, "")
	if _, err := busy.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	ts.waitLog(t, "msg=negotiated")
	ts.cancel()
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.done = nil
	case <-time.After(testWait):
		t.Fatalf("Serve did not return after the drain deadline")
	}
	ts.waitLog(t, "drain time over; closing the sessions left")
	// The session was closed: the end of its message finds no milter.
	if _, _, err := busy.End(); err == nil {
		t.Errorf("the session still answered after the drain deadline")
	}
}

// TestHeaderLimitThroughTheProtocol: Delivered-To: fields past the
// header limit still count, judged as spelled: a loop placed behind a
// pile of large fields is refused all the same; one past the limit
// through a recipient's expansion is not seen.
func TestHeaderLimitThroughTheProtocol(t *testing.T) {
	fe := newFakeExpander(map[string][]string{"<valias@local.test>": {loopRcpt}})
	ts := startServer(t, Config{MaxHeaderBytes: MinHeaderBytes, Policy: Policy{Expander: fe.expand}}, nil)
	var hdr [][2]string
	for range 5 {
		hdr = append(hdr, dt(strings.Repeat("q", 1000)+"@example.org"))
	}
	got := judge(t, ts.addr, message{rcpts: rcpts("user@local.test", loopRcpt), headers: append(hdr, dt(loopRcpt), [2]string{"Subject", " x"})})
	if !isLoopReply(got.act, loopRcpt) {
		t.Errorf("a loop past the header limit: answer %v, want the loop reply", got.act)
	}
	ts.waitLog(t, "verdict=loop reply=\"554 5.4.6 mail forwarding loop for loopuser@local.test\" header_bytes=5187 header_truncated=true loop_recipient=loopuser@local.test")
	got = judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: append([][2]string{dt(loopRcpt)}, hdr...)})
	if !isLoopReply(got.act, loopRcpt) {
		t.Errorf("a loop before the header limit: answer %v, want the loop reply", got.act)
	}
	// Through an expansion, past the limit: not judged (as spelled only).
	got = judge(t, ts.addr, message{rcpts: rcpts("valias@local.test"), headers: append(hdr, dt(loopRcpt))})
	if !isAccept(got.act) {
		t.Errorf("a loop through an expansion past the header limit: answer %v, want accept", got.act)
	}
	// After the section's end nothing counts.
	got = judge(t, ts.addr, message{rcpts: rcpts(loopRcpt), headers: append(hdr, [2]string{"Subject", " x\n\nbody"}, dt(loopRcpt))})
	if !isAccept(got.act) {
		t.Errorf("a Delivered-To: after the section's end, past the header limit: answer %v, want accept", got.act)
	}
	ts.stop(t)
	if n := ts.obs.truncated.Load(); n != 4 {
		t.Errorf("truncated headers counted %d, want 4", n)
	}
	fe.balanced(t)
}

// TestContextCancelBeforeServe: a Serve whose context is already done
// returns at once.
func TestContextCancelBeforeServe(t *testing.T) {
	srv, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Serve(ctx, ln); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestNegotiationFailureLogged: an MTA whose protocol version the session
// refuses gets its session closed, logged with that reason rather than
// with the library's generic one.
func TestNegotiationFailureLogged(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	c := rawSession(t, ts.addr, false)
	var d []byte
	d = binary.BigEndian.AppendUint32(d, 1) // version 1
	d = binary.BigEndian.AppendUint32(d, 0x1ff)
	d = binary.BigEndian.AppendUint32(d, 0x1fffff)
	if _, err := c.Write(packet('O', string(d))); err != nil {
		t.Fatalf("write: %v", err)
	}
	expectClosed(t, c)
	ts.waitLog(t, "reason=protocol-error duration=")
	ts.waitLog(t, "the MTA speaks milter protocol version 1; 2 or later is needed")
	ts.stop(t)
	if n := ts.obs.endedWith(EndProtocol); n != 1 {
		t.Errorf("%d sessions ended with a protocol error, want 1", n)
	}
}

// TestHandlerPanicEndsOnlyItsSession: a panic in a handler (here the
// Observer, called at end of message) closes that session, logged with
// its stack and counted as EndPanic; a session open beside it and new
// sessions are served as before.
func TestHandlerPanicEndsOnlyItsSession(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	loop := message{rcpts: rcpts(loopRcpt), headers: [][2]string{dt(loopRcpt)}}
	otherMacros := gomilter.NewMacroBag()
	other := openSession(t, postfixLike(ts.addr), otherMacros, "")

	macros := gomilter.NewMacroBag()
	s := openSession(t, postfixLike(ts.addr), macros, "")
	ts.obs.panicJudged.Store(true)
	if _, err := s.Mail("a@example.org", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rcpt(loopRcpt, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DataStart(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HeaderField("Delivered-To", " "+loopRcpt, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BodyChunk([]byte("body\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, act, err := s.End(); err == nil {
		t.Errorf("end of message answered %v on the session whose handler panicked; want it closed", act)
	}
	ts.waitLog(t, "reason=panic")
	ts.waitLog(t, `msg="milter handler failed" session=`)
	if !strings.Contains(ts.logs.String(), "observer bug") {
		t.Errorf("the panic's value is not logged")
	}

	// The session beside it, and a new one, are served.
	if got := sendMessage(t, other, otherMacros, loop); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("the other session: answer %v, want the loop reply", got.act)
	}
	if got := judge(t, ts.addr, loop); !isLoopReply(got.act, loopRcpt) {
		t.Errorf("a new session: answer %v, want the loop reply", got.act)
	}
	other.Close()
	ts.stop(t)
	if n := ts.obs.endedWith(EndPanic); n != 1 {
		t.Errorf("%d sessions ended by a panic, want 1", n)
	}
	if n := ts.obs.endedWith(EndClosed) + ts.obs.endedWith(EndShutdown); n != 2 {
		t.Errorf("%d sessions ended closed or by the shutdown, want the other 2", n)
	}
}

// TestHeaderLimitDropRecipient: under drop-recipient a recipient that
// loops only through a field past the header limit is not removed (its
// expansion was not judged there): the message is refused. One that
// loops within the limit is removed as usual.
func TestHeaderLimitDropRecipient(t *testing.T) {
	ts := startServer(t, Config{MaxHeaderBytes: MinHeaderBytes, Policy: Policy{LoopAction: DropRecipient, Expander: memExpander(t, nil, nil)}}, nil)
	var hdr [][2]string
	for range 5 {
		hdr = append(hdr, dt(strings.Repeat("q", 1000)+"@example.org"))
	}
	got := judge(t, ts.addr, message{rcpts: rcpts("user@local.test", loopRcpt), headers: append(hdr, dt(loopRcpt)), queueID: "AAA1"})
	if !isLoopReply(got.act, loopRcpt) || len(got.mods) != 0 {
		t.Errorf("a loop past the header limit: answer %v with %v, want the loop reply and nothing removed", got.act, got.mods)
	}
	ts.waitLog(t, "queue_id=AAA1")
	ts.waitLog(t, "drop_refused=header-truncated drop_refused_recipient=loopuser@local.test")
	got = judge(t, ts.addr, message{rcpts: rcpts("user@local.test", loopRcpt), headers: append(append([][2]string{dt(loopRcpt)}, hdr...), dt(loopRcpt))})
	if d := got.deleted(); !isAccept(got.act) || !slices.Equal(d, []string{"<" + loopRcpt + ">"}) {
		t.Errorf("a loop within the limit, and again past it: answer %v, removed %q; want accept with <%s> removed", got.act, d, loopRcpt)
	}
}
