package expand

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Proxymap is a Backend that asks Postfix's proxymap(8) server, over its
// UNIX-domain socket, the way Postfix's own proxy: client does
// (global/dict_proxy.c): Postfix opens the table itself, with its own
// locking and case folding, so every table type Postfix supports works.
//
// proxymap(8) serves only the tables that proxy_read_maps lists with a
// "proxy:" prefix; it answers DENY for any other. It exits when a table
// file changes, after max_idle and after max_use; the client then
// reconnects, as clnt_stream_recover does.
//
// The request attributes changed in Postfix 3.11 (snapshot 20250713): the
// client's flags travel as instance_flags, and replies carry the server's
// flags. NewProxymap takes the form from mail_version. Each server answers
// the other form's requests with status BAD (attr_scan with
// ATTR_FLAG_STRICT), so a BAD makes the client send the request again once
// in the other form, and keep that form when the server takes it: a
// mail_version that does not tell (a patched or mislabelled build) costs
// one request, not every lookup.
type Proxymap struct {
	socket  string
	newForm atomic.Bool // send the 3.11 form

	sem   chan struct{} // one token per connection in use or idle
	dials atomic.Int64  // connections made, for tests and diagnostics

	mu     sync.Mutex
	idle   []*pmConn
	flags  map[string]uint32 // server flags from each table's open reply
	closed bool
}

// Proxymap protocol constants (global/dict_proxy.h, global/mail_proto.h).
const (
	proxyStatOK     = 0 // PROXY_STAT_OK
	proxyStatNoKey  = 1 // PROXY_STAT_NOKEY
	proxyStatRetry  = 2 // PROXY_STAT_RETRY
	proxyStatBad    = 3 // PROXY_STAT_BAD
	proxyStatDeny   = 4 // PROXY_STAT_DENY
	proxyStatConfig = 5 // PROXY_STAT_CONFIG

	// proxymapProtocol is the server's announcement on connect
	// (proxymap.c post_accept, since Postfix 3.6).
	proxymapProtocol = "proxymap_protocol"
)

// Dictionary flags (util/dict.h DICT_FLAG_*).
const (
	dictFlagFixed       = 1 << 4
	dictFlagPattern     = 1 << 5
	dictFlagLock        = 1 << 6
	dictFlagFoldFix     = 1 << 14
	dictFlagUTF8Request = 1 << 19

	// clientFlags are the flags cleanup(8) opens its maps with
	// (cleanup/cleanup_init.c): read lock, fold the key of a
	// fixed-string table, UTF-8 when smtputf8_enable.
	clientFlags = dictFlagLock | dictFlagFoldFix | dictFlagUTF8Request

	// Before 3.11 the open request carries only the client's "instance"
	// flags, those outside DICT_FLAG_IMPL_MASK and DICT_FLAG_RQST_MASK;
	// cleanup's three are all request flags, so it sends 0, and each
	// lookup carries them instead (dict_proxy.c before 20250713).
	legacyOpenFlags = 0
)

// Proxymap connection bounds.
const (
	// DefaultProxymapConns bounds the connections to proxymap(8) one
	// Proxymap holds. proxymap is a multi-client server (one process
	// serves many connections); a few let lookups of concurrent sessions
	// overlap without growing the server's process count.
	DefaultProxymapConns = 4
	// maxIdleConns bounds the idle connections kept for reuse.
	maxIdleConns = DefaultProxymapConns
)

// NewProxymap returns a client of the proxymap(8) socket at path (a
// Postfix's $queue_directory/public/proxymap or private/proxymap), using
// the request form of Postfix 3.11 and later when newForm is set. It does
// not connect until the first lookup; Ping checks the socket.
func NewProxymap(path string, newForm bool, maxConns int) *Proxymap {
	if maxConns < 1 {
		maxConns = DefaultProxymapConns
	}
	p := &Proxymap{
		socket: path,
		sem:    make(chan struct{}, maxConns),
		flags:  map[string]uint32{},
	}
	p.newForm.Store(newForm)
	return p
}

// pmConn is one connection to proxymap(8).
type pmConn struct {
	c    net.Conn
	buf  []byte // bytes read past the last reply (none, in a well-behaved exchange)
	used bool   // has been idle: EOF now may mean the server exited meanwhile
}

// Ping connects to the server and reads its announcement.
func (p *Proxymap) Ping(ctx context.Context) error {
	c, err := p.dial(ctx)
	if err != nil {
		return err
	}
	p.put(c)
	return nil
}

// openRequest is the open request of a table: request, table, then the
// client's flags as flags (before 3.11) or instance_flags (3.11 and later).
func openRequest(table string, newForm bool) []byte {
	if newForm {
		return appendAttrs(nil, attr{"request", "open"}, attr{"table", table},
			attr{"instance_flags", strconv.Itoa(clientFlags)})
	}
	return appendAttrs(nil, attr{"request", "open"}, attr{"table", table},
		attr{"flags", strconv.Itoa(legacyOpenFlags)})
}

// lookupRequest is the lookup request of a key: before 3.11 request,
// table, flags, key; from 3.11 request, table, instance_flags, flags (the
// table's flags as the server last reported them), key.
func lookupRequest(table, key string, newForm bool, serverFlags uint32) []byte {
	if newForm {
		return appendAttrs(nil, attr{"request", "lookup"}, attr{"table", table},
			attr{"instance_flags", strconv.Itoa(clientFlags)},
			attr{"flags", strconv.FormatUint(uint64(serverFlags), 10)}, attr{"key", key})
	}
	return appendAttrs(nil, attr{"request", "lookup"}, attr{"table", table},
		attr{"flags", strconv.Itoa(legacyOpenFlags | clientFlags)}, attr{"key", key})
}

// lookupReply reads a lookup reply: status and value, with the server's
// flags between them from 3.11 on.
func lookupReply(attrs []attr, newForm bool) (status uint32, flags uint32, value string, err error) {
	if newForm {
		v, err := scanAttrs(attrs, "status", "flags", "value")
		if err != nil {
			return 0, 0, "", err
		}
		if status, err = attrUint("status", v[0]); err != nil {
			return 0, 0, "", err
		}
		if flags, err = attrUint("flags", v[1]); err != nil {
			return 0, 0, "", err
		}
		return status, flags, v[2], nil
	}
	v, err := scanAttrs(attrs, "status", "value")
	if err != nil {
		return 0, 0, "", err
	}
	status, err = attrUint("status", v[0])
	return status, 0, v[1], err
}

// statusError turns a status other than OK and NOKEY into an error.
func statusError(status uint32) (Cause, error) {
	switch status {
	case proxyStatRetry:
		return CauseLookup, errors.New("proxymap: status RETRY (the table lookup failed; try again later)")
	case proxyStatBad:
		return CauseProtocol, errors.New("proxymap: status BAD (the server did not understand the request: check the request form for mail_version)")
	case proxyStatDeny:
		return CauseDenied, errors.New("proxymap: status DENY (table not approved: list it as proxy:TYPE:NAME in proxy_read_maps)")
	case proxyStatConfig:
		return CauseLookup, errors.New("proxymap: status CONFIG (the table is misconfigured)")
	}
	return CauseProtocol, fmt.Errorf("proxymap: unknown status %d", status)
}

// Fixed implements Backend: it opens the table once and reads
// DICT_FLAG_FIXED from the server's flags.
func (p *Proxymap) Fixed(ctx context.Context, table string) (bool, error) {
	f, err := p.open(ctx, table)
	return f&dictFlagFixed != 0, err
}

// open sends the open request of a table once and keeps its flags.
func (p *Proxymap) open(ctx context.Context, table string) (uint32, error) {
	p.mu.Lock()
	f, ok := p.flags[table]
	p.mu.Unlock()
	if ok {
		return f, nil
	}
	var status uint32
	err := p.inForm(func(form bool) (uint32, error) {
		attrs, err := p.roundTrip(ctx, table, "", openRequest(table, form))
		if err != nil {
			return 0, err
		}
		v, err := scanAttrs(attrs, "status", "flags")
		if err == nil {
			if status, err = attrUint("status", v[0]); err == nil && status == proxyStatOK {
				f, err = attrUint("flags", v[1])
			}
		}
		if err != nil {
			return 0, &LookupError{Backend: "proxymap", Table: table, Cause: CauseProtocol, Err: err}
		}
		return status, nil
	})
	if err != nil {
		return 0, err
	}
	if status != proxyStatOK {
		cause, serr := statusError(status)
		return 0, &LookupError{Backend: "proxymap", Table: table, Cause: cause, Err: serr}
	}
	p.mu.Lock()
	p.flags[table] = f
	p.mu.Unlock()
	return f, nil
}

// inForm runs one request in the current form; on status BAD it drops the
// idle connections (the server may have stopped reading mid-request) and
// runs it once more in the other form, which it keeps when that one is not
// answered BAD too.
func (p *Proxymap) inForm(do func(newForm bool) (status uint32, err error)) error {
	form := p.newForm.Load()
	status, err := do(form)
	if err != nil || status != proxyStatBad {
		return err
	}
	p.dropIdle()
	p.newForm.CompareAndSwap(form, !form)
	if status, err = do(!form); err != nil || status == proxyStatBad {
		p.dropIdle()
		p.newForm.CompareAndSwap(!form, form)
	}
	return err
}

// Lookup implements Backend.
func (p *Proxymap) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	fail := func(cause Cause, err error) (string, bool, error) {
		return "", false, &LookupError{Backend: "proxymap", Table: table, Key: key, Cause: cause, Err: err}
	}
	if err := validAttrString(key); err != nil {
		return fail(CauseLookup, err)
	}
	flags, err := p.open(ctx, table)
	if err != nil {
		return "", false, err
	}
	var status uint32
	var value string
	err = p.inForm(func(form bool) (uint32, error) {
		attrs, err := p.roundTrip(ctx, table, key, lookupRequest(table, key, form, flags))
		if err != nil {
			return 0, err
		}
		var newFlags uint32
		if status, newFlags, value, err = lookupReply(attrs, form); err != nil {
			// A BAD in the other form has no flags: read it as such.
			if st, _, _, err2 := lookupReply(attrs, !form); err2 == nil && st == proxyStatBad {
				status = proxyStatBad
				return status, nil
			}
			_, _, err = fail(CauseProtocol, err)
			return 0, err
		}
		if form {
			p.mu.Lock()
			p.flags[table] = newFlags
			p.mu.Unlock()
		}
		return status, nil
	})
	if err != nil {
		return "", false, err
	}
	switch status {
	case proxyStatOK:
		return value, true, nil
	case proxyStatNoKey:
		return "", false, nil
	}
	return fail(statusError(status))
}

// validAttrString refuses what the protocol cannot carry.
func validAttrString(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return errors.New("key holds a NUL byte")
		}
	}
	if len(s) > maxAttrValue {
		return fmt.Errorf("key longer than %d bytes", maxAttrValue)
	}
	return nil
}

// roundTrip sends one request and reads its reply list. A pooled
// connection the server closed after earlier requests (proxymap exits
// when a table changes, on postfix reload, after max_idle or max_use)
// means the server that every idle connection was made to is gone: they
// are all dropped, and the request is sent again once, on a connection
// dialled for it (as clnt_stream_recover does).
func (p *Proxymap) roundTrip(ctx context.Context, table, key string, req []byte) ([]attr, error) {
	fail := func(err error) ([]attr, error) {
		return nil, &LookupError{Backend: "proxymap", Table: table, Key: key, Cause: netCause(ctx, err), Err: err}
	}
	for attempt := 0; ; attempt++ {
		get := p.get
		if attempt > 0 {
			get = p.dial
		}
		c, err := get(ctx)
		if err != nil {
			return fail(err)
		}
		attrs, err := c.exchange(ctx, req)
		if err == nil {
			p.put(c)
			return attrs, nil
		}
		reused := c.used
		c.c.Close()
		p.release()
		if attempt == 0 && reused && ctx.Err() == nil && isPeerGone(err) {
			p.dropIdle()
			continue
		}
		return fail(err)
	}
}

// dropIdle closes every idle connection.
func (p *Proxymap) dropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.c.Close()
	}
}

// isPeerGone reports a connection the server closed: EOF, reset, broken
// pipe.
func isPeerGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// netCause classifies a connection error.
func netCause(ctx context.Context, err error) Cause {
	var ne net.Error
	switch {
	case errors.Is(err, errClosed):
		return CauseClosed
	case ctx.Err() != nil:
		return causeOf(ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case errors.Is(err, errProtocol):
		return CauseProtocol
	case errors.Is(err, errDial):
		return CauseUnreachable
	}
	return CauseLookup
}

var (
	errDial     = errors.New("cannot connect")
	errProtocol = errors.New("protocol error")
)

// exchange writes a request and reads one attribute list, within ctx.
func (c *pmConn) exchange(ctx context.Context, req []byte) ([]attr, error) {
	stop := watch(ctx, c.c)
	defer stop()
	if _, err := c.c.Write(req); err != nil {
		return nil, err
	}
	return c.read()
}

// read reads one attribute list.
func (c *pmConn) read() ([]attr, error) {
	var chunk [4096]byte
	decode := true
	for {
		if decode {
			attrs, n, err := decodeAttrs(c.buf)
			if err == nil {
				c.buf = append(c.buf[:0], c.buf[n:]...)
				return attrs, nil
			}
			if err != errAttrShort {
				return nil, fmt.Errorf("%w: %v", errProtocol, err)
			}
		}
		m, err := c.c.Read(chunk[:])
		// A list ends at a NUL byte: without one, the new bytes cannot
		// complete it, and decoding again would only cost time, until
		// the bytes may hold an over-long element for the decoder to
		// refuse.
		c.buf = append(c.buf, chunk[:m]...)
		decode = bytes.IndexByte(chunk[:m], 0) >= 0 || len(c.buf) > maxAttrValue
		if err != nil {
			if err == io.EOF && len(c.buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// watch applies ctx to a connection: its deadline, and an immediate
// deadline when ctx is cancelled. stop undoes the cancellation hook.
func watch(ctx context.Context, c net.Conn) (stop func()) {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	} else {
		c.SetDeadline(time.Time{})
	}
	unhook := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() { unhook() }
}

// get returns an idle connection or a new one, waiting for a free slot.
func (p *Proxymap) get(ctx context.Context) (*pmConn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return nil, errClosed
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := p.connect(ctx)
	if err != nil {
		<-p.sem
		return nil, err
	}
	return c, nil
}

// dial is get without the idle list: a new connection (Ping, and the
// retry after the server went away).
func (p *Proxymap) dial(ctx context.Context) (*pmConn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c, err := p.connect(ctx)
	if err != nil {
		<-p.sem
	}
	return c, err
}

// connect dials the socket and reads the server's announcement.
func (p *Proxymap) connect(ctx context.Context) (*pmConn, error) {
	var d net.Dialer
	p.dials.Add(1)
	nc, err := d.DialContext(ctx, "unix", p.socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w to %s: %w", errDial, p.socket, err)
	}
	c := &pmConn{c: nc}
	stop := watch(ctx, nc)
	attrs, err := c.read()
	stop()
	if err == nil {
		var v []string
		if v, err = scanAttrs(attrs, "protocol"); err == nil && v[0] != proxymapProtocol {
			err = fmt.Errorf("%w: server announces protocol %q, not %q", errProtocol, v[0], proxymapProtocol)
		} else if err != nil {
			err = fmt.Errorf("%w: handshake: %v", errProtocol, err)
		}
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// put returns a healthy connection to the idle list.
func (p *Proxymap) put(c *pmConn) {
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdleConns {
		p.mu.Unlock()
		c.c.Close()
	} else {
		c.used = true
		p.idle = append(p.idle, c)
		p.mu.Unlock()
	}
	<-p.sem
}

// release frees the slot of a connection that was closed.
func (p *Proxymap) release() { <-p.sem }

// Close implements Backend: it closes the idle connections; connections
// in use are closed when their request ends.
func (p *Proxymap) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.c.Close()
	}
	p.idle = nil
	return nil
}
