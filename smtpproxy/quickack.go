package smtpproxy

import (
	"net"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/quickack"
)

// dataAcker acknowledges the message data just read from a client at
// once (package quickack), instead of letting the kernel delay the ACK.
//
// Why: Postfix's smtpd writes to its proxy filter with Nagle's algorithm
// on (vstream_tweak_tcp keeps it, with a buffer of 4 MSS), as smtp-source
// does. Nagle holds a segment shorter than the MSS (such as a message's
// tail with the final dot) until everything before it is acknowledged;
// once the proxy has written replies on the connection, Linux delays its
// ACKs, up to 40 ms. On loopback, where smtpd and the proxy meet, such
// stalls were most of a message's time. An ACK sent as soon as the data
// is read lets the tail go at once.
//
// It costs one setsockopt(2) per read of message data; commands and
// replies need none, since a reply carries the ACK of its command.
// Sending the ACK only when a read finds the socket empty (the moment a
// sender held by Nagle waits for it; a read through the RawConn, with the
// setsockopt before the wait) saves most of those calls, but it measured
// worse with a sender that never waits: the ACK sent after every read
// lets such a sender go on while the proxy writes what it read. The
// measurements are in docs/performance.md.
type dataAcker = quickack.Acker

// newDataAcker returns the acker for a client connection, or nil when c
// is not TCP.
func newDataAcker(c net.Conn) *dataAcker { return quickack.New(c) }
