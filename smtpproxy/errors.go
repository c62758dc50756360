package smtpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// The client reads why the upstream failed in a reply line, so errors are
// mapped to short fixed phrases or kinds, never a Go error string (which
// would name file descriptors and local addresses). The full error goes to
// the log.

// connectPhrase says why the upstream could not be reached, as a noun
// phrase after "unreachable: ".
func connectPhrase(err error) string {
	var dnsErr *net.DNSError
	switch {
	case isTimeout(err):
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "permission denied"
	case errors.As(err, &dnsErr):
		return "host name not found"
	case errors.Is(err, context.Canceled):
		return "connection abandoned"
	}
	return "connection failed"
}

// upstreamEnd says how the upstream connection ended when a read or write
// failed; the core names it in the client's reply.
func upstreamEnd(err error) core.UpstreamEnd {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.EPIPE), errors.Is(err, io.ErrClosedPipe):
		return core.EndClosed
	case errors.Is(err, syscall.ECONNRESET):
		return core.EndReset
	case isTimeout(err):
		return core.EndTimedOut
	}
	return core.EndBroken
}

// shortagePhrase names the shortage of err for a reply line.
func shortagePhrase(err error) string {
	if errors.Is(err, syscall.ENFILE) {
		return "too many open files in the system"
	}
	return "too many open files"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}
