package expand

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The requests and replies of global/dict_proxy.c, byte for byte. Before
// Postfix 3.11 (this machine's 3.7): dict_proxy_open sends request, table
// and flags (the instance flags: 0 for cleanup's LOCK|FOLD_FIX|UTF8_REQUEST,
// which are all request flags), dict_proxy_lookup sends request, table,
// flags (instance | request flags) and key and reads status and value.
// From 3.11 (snapshot 20250713, dict_proxy_lookup): request, table,
// instance_flags, flags, key; reply status, flags, value.
// 540736 = DICT_FLAG_LOCK (1<<6) | DICT_FLAG_FOLD_FIX (1<<14) |
// DICT_FLAG_UTF8_REQUEST (1<<19).
var recorded = []struct {
	name string
	got  []byte
	want string
}{
	{"open, 3.10 and earlier", openRequest("hash:/etc/postfix/virtual", false),
		"request\x00open\x00table\x00hash:/etc/postfix/virtual\x00flags\x000\x00\x00"},
	{"lookup, 3.10 and earlier", lookupRequest("hash:/etc/postfix/virtual", "valias@local.test", false, 28),
		"request\x00lookup\x00table\x00hash:/etc/postfix/virtual\x00flags\x00540736\x00key\x00valias@local.test\x00\x00"},
	{"open, 3.11 and later", openRequest("hash:/etc/postfix/virtual", true),
		"request\x00open\x00table\x00hash:/etc/postfix/virtual\x00instance_flags\x00540736\x00\x00"},
	{"lookup, 3.11 and later", lookupRequest("hash:/etc/postfix/virtual", "valias@local.test", true, 540764),
		"request\x00lookup\x00table\x00hash:/etc/postfix/virtual\x00instance_flags\x00540736\x00flags\x00540764\x00key\x00valias@local.test\x00\x00"},
}

func TestRecordedRequests(t *testing.T) {
	for _, r := range recorded {
		if string(r.got) != r.want {
			t.Errorf("%s:\n got %q\nwant %q", r.name, r.got, r.want)
		}
	}
}

// TestRecordedReplies reads the replies of proxymap.c in both forms.
func TestRecordedReplies(t *testing.T) {
	for _, tc := range []struct {
		reply   string
		newForm bool
		status  uint32
		flags   uint32
		value   string
	}{
		{"status\x000\x00value\x00loopuser@local.test\x00\x00", false, proxyStatOK, 0, "loopuser@local.test"},
		{"status\x001\x00value\x00\x00\x00", false, proxyStatNoKey, 0, ""},
		{"status\x000\x00flags\x00540764\x00value\x00loopuser@local.test\x00\x00", true, proxyStatOK, 540764, "loopuser@local.test"},
	} {
		attrs, n, err := decodeAttrs([]byte(tc.reply))
		if err != nil || n != len(tc.reply) {
			t.Fatalf("decode %q: %v (%d bytes of %d)", tc.reply, err, n, len(tc.reply))
		}
		status, flags, value, err := lookupReply(attrs, tc.newForm)
		if err != nil || status != tc.status || flags != tc.flags || value != tc.value {
			t.Errorf("%q: %d %d %q %v, want %d %d %q", tc.reply, status, flags, value, err, tc.status, tc.flags, tc.value)
		}
		// The other form's reply is refused, as attr_scan with
		// ATTR_FLAG_STRICT refuses it.
		if _, _, _, err := lookupReply(attrs, !tc.newForm); err == nil {
			t.Errorf("%q read in the other form without error", tc.reply)
		}
	}
}

// fakeProxymap is a proxymap(8) stand-in on a UNIX socket: it announces
// the protocol, then answers each request list with reply(request).
type fakeProxymap struct {
	path  string
	reply func(req []attr) []attr
	// closeAfter makes the server close each connection after that many
	// replies (proxymap exits when a table changes): 0 never.
	closeAfter int
	handshake  string

	mu       sync.Mutex
	accepted int
	requests [][]attr
	conns    []net.Conn
}

// dropAll closes every connection the server has accepted, as proxymap's
// exit does.
func (f *fakeProxymap) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func startFake(t *testing.T, f *fakeProxymap) *fakeProxymap {
	t.Helper()
	f.path = filepath.Join(t.TempDir(), "proxymap")
	if f.handshake == "" {
		f.handshake = string(appendAttrs(nil, attr{"protocol", proxymapProtocol}))
	}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.accepted++
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			wg.Go(func() { f.serve(c) })
		}
	})
	return f
}

func (f *fakeProxymap) serve(c net.Conn) {
	defer c.Close()
	if _, err := c.Write([]byte(f.handshake)); err != nil {
		return
	}
	pc := &pmConn{c: c}
	for n := 1; ; n++ {
		req, err := pc.read()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.requests = append(f.requests, req)
		f.mu.Unlock()
		reply := f.reply(req)
		if reply == nil {
			// Never answer: the client must give up at its deadline.
			buf := make([]byte, 1)
			c.Read(buf)
			return
		}
		if _, err := c.Write(appendAttrs(nil, reply...)); err != nil {
			return
		}
		if f.closeAfter > 0 && n >= f.closeAfter {
			return
		}
	}
}

// answer is a fake's reply function: open always OK with flags, lookups
// from a map, status for the rest.
func answer(newForm bool, flags int, values map[string]string, status int) func([]attr) []attr {
	return func(req []attr) []attr {
		get := func(name string) string {
			for _, a := range req {
				if a.name == name {
					return a.value
				}
			}
			return ""
		}
		if get("request") == "open" {
			return []attr{{"status", "0"}, {"flags", strconv.Itoa(flags)}}
		}
		st, v := status, ""
		if val, ok := values[get("key")]; ok {
			st, v = proxyStatOK, val
		}
		if newForm {
			return []attr{{"status", strconv.Itoa(st)}, {"flags", strconv.Itoa(flags)}, {"value", v}}
		}
		return []attr{{"status", strconv.Itoa(st)}, {"value", v}}
	}
}

func TestProxymapClient(t *testing.T) {
	for _, newForm := range []bool{false, true} {
		f := startFake(t, &fakeProxymap{reply: answer(newForm, 28, map[string]string{"valias@local.test": "loopuser@local.test"}, proxyStatNoKey)})
		p := NewProxymap(f.path, newForm, 2)
		ctx := context.Background()
		v, found, err := p.Lookup(ctx, "hash:/v", "valias@local.test")
		if err != nil || !found || v != "loopuser@local.test" {
			t.Errorf("newForm=%v: lookup: %q %v %v", newForm, v, found, err)
		}
		if _, found, err := p.Lookup(ctx, "hash:/v", "nobody@local.test"); err != nil || found {
			t.Errorf("newForm=%v: missing key: found=%v err=%v", newForm, found, err)
		}
		if fixed, err := p.Fixed(ctx, "hash:/v"); err != nil || !fixed {
			t.Errorf("newForm=%v: Fixed = %v %v, want true (flags 28 hold DICT_FLAG_FIXED)", newForm, fixed, err)
		}
		f.mu.Lock()
		// One open per table, then two lookups, on one connection.
		if len(f.requests) != 3 || f.accepted != 1 {
			t.Errorf("newForm=%v: %d requests on %d connections, want 3 on 1", newForm, len(f.requests), f.accepted)
		}
		f.mu.Unlock()
		p.Close()
	}
}

// TestProxymapStatus maps each status to its cause.
func TestProxymapStatus(t *testing.T) {
	for _, tc := range []struct {
		status int
		cause  Cause
	}{
		{proxyStatRetry, CauseLookup},
		{proxyStatBad, CauseProtocol},
		{proxyStatDeny, CauseDenied},
		{proxyStatConfig, CauseLookup},
		{9, CauseProtocol},
	} {
		f := startFake(t, &fakeProxymap{reply: answer(false, 28, nil, tc.status)})
		p := NewProxymap(f.path, false, 1)
		_, _, err := p.Lookup(context.Background(), "hash:/v", "k")
		var le *LookupError
		if !errors.As(err, &le) || le.Cause != tc.cause {
			t.Errorf("status %d: error %v, want cause %v", tc.status, err, tc.cause)
		}
		p.Close()
	}
	// DENY at open, as proxymap answers for a table proxy_read_maps does
	// not list.
	f := startFake(t, &fakeProxymap{reply: func([]attr) []attr { return []attr{{"status", "4"}, {"flags", "0"}} }})
	p := NewProxymap(f.path, false, 1)
	defer p.Close()
	if _, err := p.Fixed(context.Background(), "hash:/v"); causeOf(err) != CauseDenied {
		t.Errorf("DENY at open: %v, want cause denied", err)
	}
}

// TestProxymapReconnect: the server closes the connection after each
// reply (as proxymap exits when a table changes, after max_idle or
// max_use); the client reconnects and the lookup succeeds.
func TestProxymapReconnect(t *testing.T) {
	f := startFake(t, &fakeProxymap{closeAfter: 1, reply: answer(false, 28, map[string]string{"a": "x", "b": "y"}, proxyStatNoKey)})
	p := NewProxymap(f.path, false, 1)
	defer p.Close()
	for _, k := range []string{"a", "b", "a"} {
		if _, found, err := p.Lookup(context.Background(), "hash:/v", k); err != nil || !found {
			t.Fatalf("lookup %s after the server closed: found=%v err=%v", k, found, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.accepted < 4 {
		t.Errorf("%d connections for 4 requests each on a connection closed after it", f.accepted)
	}
}

// formStrict is a fake's reply function that, like proxymap(8) with
// attr_scan's ATTR_FLAG_STRICT, answers status BAD to requests in the
// other form: the 3.11 form carries instance_flags, the older one not
// (global/dict_proxy.c; proxymap.c proxymap_open_service and
// proxymap_lookup_service). BAD replies have the fields of the server's
// own form.
func formStrict(newForm bool, values map[string]string) func([]attr) []attr {
	ok := answer(newForm, 28, values, proxyStatNoKey)
	return func(req []attr) []attr {
		if slices.ContainsFunc(req, func(a attr) bool { return a.name == "instance_flags" }) == newForm {
			return ok(req)
		}
		switch {
		case req[0].value == "open":
			return []attr{{"status", "3"}, {"flags", "0"}}
		case newForm:
			return []attr{{"status", "3"}, {"flags", "0"}, {"value", ""}}
		}
		return []attr{{"status", "3"}, {"value", ""}}
	}
}

// TestProxymapFormFallback: a server of the other request form than
// mail_version said answers BAD; the client sends the request again in the
// other form and keeps it. A server that answers BAD in both forms leaves
// the form as it was.
func TestProxymapFormFallback(t *testing.T) {
	for _, server := range []bool{false, true} {
		f := startFake(t, &fakeProxymap{reply: formStrict(server, map[string]string{"a": "x"})})
		p := NewProxymap(f.path, !server, 2)
		for range 2 {
			if v, found, err := p.Lookup(context.Background(), "hash:/v", "a"); err != nil || !found || v != "x" {
				t.Errorf("server form %v, client %v: lookup %q %v %v", server, !server, v, found, err)
			}
		}
		if got := p.newForm.Load(); got != server {
			t.Errorf("server form %v: the client kept form %v", server, got)
		}
		f.mu.Lock()
		if len(f.requests) != 4 { // open BAD, open, lookup, lookup
			t.Errorf("server form %v: %d requests, want 4", server, len(f.requests))
		}
		f.mu.Unlock()
		p.Close()
	}
	f := startFake(t, &fakeProxymap{reply: answer(false, 28, nil, proxyStatBad)})
	p := NewProxymap(f.path, false, 1)
	defer p.Close()
	if _, _, err := p.Lookup(context.Background(), "hash:/v", "a"); causeOf(err) != CauseProtocol {
		t.Errorf("BAD in both forms: %v, want cause protocol", err)
	}
	if p.newForm.Load() {
		t.Errorf("BAD in both forms changed the form")
	}
}

// TestProxymapServerGone: every pooled connection is dead after proxymap
// exits (postfix reload, a table rebuilt); the next lookup drops them all
// and succeeds on a new connection, as global/clnt_stream.c
// clnt_stream_recover reconnects, instead of failing on the second dead
// one.
func TestProxymapServerGone(t *testing.T) {
	f := startFake(t, &fakeProxymap{reply: answer(false, 28, map[string]string{"a": "x"}, proxyStatNoKey)})
	p := NewProxymap(f.path, false, DefaultProxymapConns)
	defer p.Close()
	ctx := context.Background()
	var conns []*pmConn
	for range DefaultProxymapConns {
		c, err := p.get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		p.put(c)
	}
	f.dropAll()
	for i := range 3 {
		if _, found, err := p.Lookup(ctx, "hash:/v", "a"); err != nil || !found {
			t.Fatalf("lookup %d after the server went away: found=%v err=%v", i, found, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) != 1 {
		t.Errorf("%d idle connections, want the one new connection", len(p.idle))
	}
}

// TestProxymapFailures: no socket, a silent server, garbage, a wrong
// handshake: each a typed cause, none a hang.
func TestProxymapFailures(t *testing.T) {
	ctx := context.Background()
	missing := NewProxymap(filepath.Join(t.TempDir(), "none"), false, 1)
	if _, _, err := missing.Lookup(ctx, "hash:/v", "k"); causeOf(err) != CauseUnreachable {
		t.Errorf("no socket: %v, want cause unreachable", err)
	}
	if err := missing.Ping(ctx); err == nil {
		t.Errorf("Ping of a missing socket succeeded")
	}

	silent := startFake(t, &fakeProxymap{reply: func(req []attr) []attr {
		if req[0].value == "open" {
			return []attr{{"status", "0"}, {"flags", "28"}}
		}
		return nil
	}})
	p := NewProxymap(silent.path, false, 1)
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, _, err := p.Lookup(tctx, "hash:/v", "k")
	cancel()
	if causeOf(err) != CauseTimeout {
		t.Errorf("silent server: %v, want cause timeout", err)
	}
	// The slot of the timed-out connection is free again.
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, _, err := p.Lookup(cctx, "hash:/v", "k"); causeOf(err) != CauseClosed {
		t.Errorf("cancelled lookup: %v, want cause closed", err)
	}
	p.Close()

	garbage := startFake(t, &fakeProxymap{reply: func([]attr) []attr { return []attr{{"bogus", "1"}} }})
	p = NewProxymap(garbage.path, false, 1)
	if _, _, err := p.Lookup(ctx, "hash:/v", "k"); causeOf(err) != CauseProtocol {
		t.Errorf("garbage reply: %v, want cause protocol", err)
	}
	p.Close()

	other := startFake(t, &fakeProxymap{handshake: string(appendAttrs(nil, attr{"protocol", "trivial_rewrite_protocol"})),
		reply: answer(false, 28, nil, proxyStatNoKey)})
	p = NewProxymap(other.path, false, 1)
	if _, _, err := p.Lookup(ctx, "hash:/v", "k"); causeOf(err) != CauseProtocol {
		t.Errorf("wrong handshake: %v, want cause protocol", err)
	}
	p.Close()

	// A peer that sends bytes without end and no NUL is cut off at the
	// bound of one element.
	endless := startFake(t, &fakeProxymap{handshake: strings.Repeat("x", maxAttrValue+5000), reply: answer(false, 28, nil, proxyStatNoKey)})
	p = NewProxymap(endless.path, false, 1)
	if _, _, err := p.Lookup(ctx, "hash:/v", "k"); causeOf(err) != CauseProtocol {
		t.Errorf("endless handshake: %v, want cause protocol", err)
	}
	p.Close()

	if _, _, err := NewProxymap(silent.path, false, 1).Lookup(ctx, "hash:/v", "a\x00b"); causeOf(err) != CauseLookup {
		t.Errorf("key with NUL: %v, want a lookup error before any request", err)
	}
}

// TestAttrRoundTrip: what appendAttrs writes, decodeAttrs reads back, and
// every proper prefix is short.
func TestAttrRoundTrip(t *testing.T) {
	attrs := []attr{{"request", "lookup"}, {"table", "hash:/v"}, {"key", ""}, {"x", "é\xff"}}
	b := appendAttrs(nil, attrs...)
	b = append(b, "trailing"...)
	got, n, err := decodeAttrs(b)
	if err != nil || n != len(b)-len("trailing") || len(got) != len(attrs) {
		t.Fatalf("decode: %v %d %v", got, n, err)
	}
	for i := range attrs {
		if got[i] != attrs[i] {
			t.Errorf("attr %d: %v, want %v", i, got[i], attrs[i])
		}
	}
	for i := range n {
		if _, _, err := decodeAttrs(b[:i]); err != errAttrShort {
			t.Errorf("prefix of %d bytes: %v, want short", i, err)
		}
	}
	if _, _, err := decodeAttrs(bytes.Repeat([]byte("x"), maxAttrValue+2)); err == nil || err == errAttrShort {
		t.Errorf("over-long name: %v, want an error", err)
	}
}
