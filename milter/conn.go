package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/quickack"
)

// ProtocolError reports a milter packet that breaks the protocol: the
// session that read it is closed, the server goes on.
type ProtocolError struct {
	Msg string
}

func (e *ProtocolError) Error() string { return "malformed milter packet: " + e.Msg }

// errShuttingDown ends an idle session during a graceful shutdown.
var errShuttingDown = errors.New("shutting down")

// packetHeaderLen is the milter packet's length field (32 bits, big
// endian, counting the command byte and the data).
const packetHeaderLen = 4

// drainGrace is how long an idle session, at shutdown, waits for an event
// the MTA may already have sent before it closes. Such an event is in the
// socket's receive queue already, or arrives within a scheduling delay on
// loopback; the wait must be short, as every idle session waits it.
const drainGrace = 20 * time.Millisecond

// readBufferSize is the read buffer of a session: most packets of Postfix
// (macros, envelope events, a header field) fit, so each costs one read.
const readBufferSize = 1 << 10

// keepPacketBuffer is the largest packet buffer a session keeps between
// packets; a larger one (a long header field) is dropped after use, so an
// idle session holds little.
const keepPacketBuffer = 4 << 10

// guardConn is the connection go-milter's session reads and writes. It
// reads whole packets itself and checks each before go-milter sees it:
// go-milter v0.10.1 trusts the length field (it allocates whatever it
// says, up to 512 MB) and indexes past the end of some packets (a length
// of zero; a connect, MAIL or RCPT packet without its NUL terminators),
// which would panic in a goroutine we cannot guard and so stop the whole
// process. Here such a packet is a ProtocolError: the read fails, go-milter
// closes the session, and the server goes on.
//
// It also lets a graceful shutdown reach a session blocked in a read (see
// kick) and records why the session ended.
type guardConn struct {
	net.Conn
	srv  *Server
	sess *session
	ack  *quickack.Acker // hurries the ACK of each read (see server.go)
	in   *bufio.Reader   // over the connection (ackReader): a packet in one read, not two

	hdr [packetHeaderLen]byte
	pkt []byte // the packet being handed out: length field, command, data
	off int    // how much of pkt go-milter has read

	// readDeadline is the deadline go-milter last set; a kick overrides
	// it for a moment. Only the session's goroutine touches it.
	readDeadline time.Time

	// quit is set when the MTA's QUIT has been read.
	quit bool

	mu     sync.Mutex
	endErr error // the first error that ends the session
	closed bool
}

// errLibrary says that go-milter ended a session itself: it found an
// error in a packet that passed checkPacket (its warning names it).
var errLibrary = errors.New("the milter library refused a packet or a negotiation (its warning says which)")

// Read hands out the current packet, reading and checking the next one
// when it is used up.
func (g *guardConn) Read(p []byte) (int, error) {
	if g.off == len(g.pkt) {
		if err := g.nextPacket(); err != nil {
			g.setEnd(err)
			return 0, err
		}
	}
	n := copy(p, g.pkt[g.off:])
	g.off += n
	return n, nil
}

// nextPacket reads one whole packet into g.pkt and checks it.
func (g *guardConn) nextPacket() error {
	if cap(g.pkt) > keepPacketBuffer {
		g.pkt = nil
	}
	g.pkt, g.off = g.pkt[:0], 0
	if n, err := g.readFull(g.hdr[:], true); err != nil {
		if n > 0 && errors.Is(err, io.EOF) {
			return &ProtocolError{Msg: fmt.Sprintf("truncated: the connection closed after %d of the 4 bytes of a length field", n)}
		}
		return err
	}
	length := binary.BigEndian.Uint32(g.hdr[:])
	switch {
	case length == 0:
		return &ProtocolError{Msg: "length 0 (a packet holds at least its command byte)"}
	case length > MaxPacketBytes:
		return &ProtocolError{Msg: fmt.Sprintf("length %d over the limit of %d bytes", length, MaxPacketBytes)}
	}
	need := packetHeaderLen + int(length)
	if cap(g.pkt) < need {
		g.pkt = make([]byte, need)
	}
	g.pkt = g.pkt[:need]
	copy(g.pkt, g.hdr[:])
	if n, err := g.readFull(g.pkt[packetHeaderLen:], false); err != nil {
		if errors.Is(err, io.EOF) {
			return &ProtocolError{Msg: fmt.Sprintf("truncated: the connection closed after %d of %d bytes of a packet", n, length)}
		}
		return err
	}
	if err := checkPacket(g.pkt[packetHeaderLen], g.pkt[packetHeaderLen+1:]); err != nil {
		return err
	}
	g.quit = g.pkt[packetHeaderLen] == cmdQuit
	return nil
}

// readFull fills b from the connection; head says b is the start of a
// packet. A timeout caused by kick is no error. A session inside a message
// reads on with go-milter's own deadline. An idle one looks once more, for
// drainGrace, whether the MTA has already sent its next event (it may have
// written a whole message's events, none of which needs a reply, before
// the shutdown began); only when nothing comes does it end
// (errShuttingDown). Once a packet has begun, it is read to its end.
func (g *guardConn) readFull(b []byte, head bool) (int, error) {
	n, graced := 0, false
	if head && g.srv.draining.Load() && !g.sess.inMessage {
		g.Conn.SetReadDeadline(time.Now().Add(drainGrace))
		graced = true
	}
	for n < len(b) {
		m, err := g.in.Read(b[n:])
		if m > 0 && graced {
			g.Conn.SetReadDeadline(g.readDeadline) // an event came: read it as usual
			graced = false
		}
		n += m
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && g.srv.draining.Load() &&
			(g.readDeadline.IsZero() || time.Now().Before(g.readDeadline)) {
			switch {
			case head && n == 0 && !g.sess.inMessage && graced:
				return n, errShuttingDown
			case head && n == 0 && !g.sess.inMessage:
				g.Conn.SetReadDeadline(time.Now().Add(drainGrace))
				graced = true
			default:
				g.Conn.SetReadDeadline(g.readDeadline)
			}
			continue
		}
		if errors.Is(err, io.EOF) && n == len(b) {
			return n, nil
		}
		return n, err
	}
	return n, nil
}

// ackReader reads from the connection and acknowledges what it read.
type ackReader struct{ g *guardConn }

func (r ackReader) Read(p []byte) (int, error) {
	n, err := r.g.Conn.Read(p)
	if n > 0 {
		r.g.ack.Ack()
	}
	return n, err
}

// SetReadDeadline records go-milter's deadline, which kick overrides.
func (g *guardConn) SetReadDeadline(t time.Time) error {
	g.readDeadline = t
	return g.Conn.SetReadDeadline(t)
}

// Write passes go-milter's replies on and records a failure.
func (g *guardConn) Write(p []byte) (int, error) {
	n, err := g.Conn.Write(p)
	if err != nil {
		g.setEnd(err)
	}
	return n, err
}

// kick makes a read the session is blocked in return at once, so that it
// can see the shutdown; called from the shutdown's goroutine.
func (g *guardConn) kick() {
	g.Conn.SetReadDeadline(time.Unix(1, 0))
}

// abort closes the connection from outside the session (the drain
// deadline); go-milter's session then ends and calls Close.
func (g *guardConn) abort(err error) {
	g.setEnd(err)
	g.Conn.Close()
}

// Close is go-milter's last act on a session: it ends the session.
func (g *guardConn) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	err := g.Conn.Close()
	g.srv.ended(g)
	return err
}

func (g *guardConn) setEnd(err error) {
	g.mu.Lock()
	if g.endErr == nil {
		g.endErr = err
	}
	g.mu.Unlock()
}

// end says why the session ended: a reason and the error behind it (nil
// for an orderly end).
func (g *guardConn) end() (EndReason, error) {
	g.mu.Lock()
	err := g.endErr
	g.mu.Unlock()
	var pe *ProtocolError
	switch {
	case err == nil && !g.quit:
		return EndProtocol, errLibrary
	case err == nil, errors.Is(err, io.EOF):
		return EndClosed, nil
	case errors.Is(err, errShuttingDown):
		return EndShutdown, nil
	case errors.As(err, &pe):
		return EndProtocol, err
	case errors.Is(err, errPanic):
		return EndPanic, err
	case errors.Is(err, os.ErrDeadlineExceeded):
		return EndTimeout, err
	}
	return EndIO, err
}

// Command bytes of the packets an MTA sends (libmilter's mfdef.h, SMFIC_*).
const (
	cmdOptNeg  = 'O'
	cmdMacro   = 'D'
	cmdConnect = 'C'
	cmdHelo    = 'H'
	cmdMail    = 'M'
	cmdRcpt    = 'R'
	cmdHeader  = 'L'
	cmdEOH     = 'N'
	cmdBody    = 'B'
	cmdEOB     = 'E'
	cmdAbort   = 'A'
	cmdData    = 'T'
	cmdQuit    = 'Q'
	cmdQuitNC  = 'K'
	cmdUnknown = 'U'
)

// checkPacket refuses a packet go-milter cannot parse safely. go-milter
// checks the rest itself and ends the session with an error.
func checkPacket(cmd byte, data []byte) error {
	switch cmd {
	case cmdConnect:
		// hostname NUL, family, then for a family with an address the
		// port (2 bytes) and the address.
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			return &ProtocolError{Msg: "connect: the host name has no NUL terminator"}
		}
		rest := data[i+1:]
		if len(rest) == 0 {
			return &ProtocolError{Msg: "connect: no protocol family"}
		}
		switch rest[0] {
		case 'L', '4', '6':
			if len(rest) < 3 {
				return &ProtocolError{Msg: "connect: no port"}
			}
		}
	case cmdMail, cmdRcpt:
		if bytes.IndexByte(data, 0) < 0 {
			what := "MAIL"
			if cmd == cmdRcpt {
				what = "RCPT"
			}
			return &ProtocolError{Msg: what + ": the address has no NUL terminator"}
		}
	case cmdOptNeg, cmdMacro, cmdHelo, cmdHeader, cmdEOH, cmdBody, cmdEOB,
		cmdAbort, cmdData, cmdQuit, cmdQuitNC, cmdUnknown:
	default:
		return &ProtocolError{Msg: fmt.Sprintf("unknown command %q", cmd)}
	}
	return nil
}
