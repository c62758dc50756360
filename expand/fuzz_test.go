package expand

import (
	"bytes"
	"context"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// chunkConn is a net.Conn whose reads return the given bytes a few at a
// time, then EOF.
type chunkConn struct {
	net.Conn
	data []byte
	step int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, net.ErrClosed
	}
	n := min(len(p), c.step, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzAttrDecode: the attribute-protocol decoder never panics, reads a
// list exactly as appendAttrs writes it, never reads past its end, and
// gives the same answer whether the bytes come at once or in pieces.
func FuzzAttrDecode(f *testing.F) {
	f.Add([]byte("status\x000\x00value\x00loopuser@local.test\x00\x00"), uint8(3))
	f.Add([]byte("status\x000\x00flags\x00540764\x00value\x00x\x00\x00junk"), uint8(1))
	f.Add([]byte("protocol\x00proxymap_protocol\x00\x00"), uint8(7))
	f.Add([]byte("status\x00"), uint8(2))
	f.Add([]byte("\x00"), uint8(1))
	f.Add([]byte("status\x0099999999999\x00value\x00\x00\x00"), uint8(5))
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		attrs, n, err := decodeAttrs(b)
		if err == nil {
			if n < 1 || n > len(b) || b[n-1] != 0 {
				t.Fatalf("consumed %d of %d bytes", n, len(b))
			}
			if re := appendAttrs(nil, attrs...); !bytes.Equal(re, b[:n]) {
				t.Fatalf("re-encoded %q, read %q", re, b[:n])
			}
			for _, newForm := range []bool{false, true} {
				lookupReply(attrs, newForm)
			}
		}
		c := &pmConn{c: &chunkConn{data: b, step: int(step%16) + 1}}
		got, rerr := c.read()
		switch {
		case err == nil && (rerr != nil || !reflect.DeepEqual(got, attrs)):
			t.Fatalf("pieces: %v %v; whole: %v", got, rerr, attrs)
		case err == nil && !bytes.Equal(c.buf, b[n:len(b)-len(c.c.(*chunkConn).data)]):
			t.Fatalf("kept %q past the list, want %q", c.buf, b[n:])
		case err != nil && rerr == nil:
			t.Fatalf("pieces read %v where the whole is %v", got, err)
		}
	})
}

// FuzzExpand: an expansion over random tables never panics, ends (every
// limit holds), is deterministic, holds each address once (as local(8)
// compares addresses: external form, case-folded), and fails only
// as Postfix would: a limit, or a table value Postfix refuses (empty, or
// without an address).
//
// tables holds lines "v key value" (virtual), "c key value" (recipient
// canonical), "a name value" (aliases), "r key value" (a pattern table
// before the virtual one, matching the full key only), "t key value"
// (transport); flags picks the configuration's switches.
func FuzzExpand(f *testing.F) {
	f.Add("v valias@local.test loopuser@local.test\na lp loopuser\n", "valias+ext@local.test", uint8(0))
	f.Add("v a@local.test b@local.test\nv b@local.test a@local.test\n", "a@local.test", uint8(1))
	f.Add("v @catch.test @local.test\nc canon@local.test x@catch.test\n", "canon@local.test", uint8(2))
	f.Add("a list :include:/none, \"|cmd\", /file, other\nv other@local.test r@remote.test\n", "list@local.test", uint8(3))
	f.Add("r re@local.test a@local.test, b@local.test\nt remote.test lmtp:x\n", "Re@Local.Test.", uint8(4))
	f.Add("v x@local.test \"a b\"@local.test, <>\n", "remote.test!x", uint8(5))
	f.Add("v vws@local.test user loopuser\na ws user (c) <x@local.test> |/bin/cmd arg\n", "vws@local.test", uint8(6))
	f.Add("a g grp: a, b; Name <c@d> e@f g@h\nv a@local.test \u00fcser, u\u0308ser\n", "g@local.test", uint8(7))
	f.Fuzz(func(t *testing.T, tables, rcpt string, flags uint8) {
		p, err := address.ParsePath("<" + rcpt + ">")
		if err != nil || p.Null {
			return
		}
		cfg := testConfig()
		cfg.VirtualAliasMaps = []string{"regexp:re", "hash:virtual"}
		cfg.RecipientCanonicalMaps = []string{"hash:rcanon"}
		cfg.TransportMaps = []string{"hash:transport"}
		cfg.PropagateVirtual = flags&1 != 0
		cfg.PropagateAlias = flags&2 != 0
		cfg.PropagateInclude = flags&4 != 0
		if flags&8 != 0 {
			cfg.RecipientDelimiter = "+-"
		}
		cfg.AppendDotMydomain = flags&16 != 0
		cfg.VirtualAliasRecursionLimit = 1 + int(flags>>5)*10
		cfg.VirtualAliasExpansionLimit = 1 + int(flags>>5)*10
		ts := map[string]map[string]string{"v": {}, "c": {}, "a": {}, "r": {}, "t": {}}
		for line := range strings.Lines(tables) {
			kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
			k, v, _ := strings.Cut(rest, " ")
			if m, ok := ts[kind]; ok && k != "" {
				m[k] = v
			}
		}
		mem := &Memory{}
		mem.Set("hash:virtual", MemTable{Entries: ts["v"]})
		mem.Set("hash:rcanon", MemTable{Entries: ts["c"]})
		mem.Set("hash:aliases", MemTable{Entries: ts["a"]})
		mem.Set("hash:transport", MemTable{Entries: ts["t"]})
		mem.Set("regexp:re", MemTable{Pattern: true, Entries: ts["r"]})
		read := func(string) ([]byte, error) { return []byte(ts["a"]["include"]), nil }
		e, err := New(context.Background(), Options{Config: cfg, Backend: mem, CacheSize: -1, ReadFile: read})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		r1, _ := e.Expand(context.Background(), p.Addr)
		r2, _ := e.Expand(context.Background(), p.Addr)
		if !reflect.DeepEqual(r1.Targets, r2.Targets) || r1.Complete != r2.Complete || r1.Cause != r2.Cause {
			t.Fatalf("not deterministic:\n%+v\n%+v", r1, r2)
		}
		if !r1.Complete && r1.Cause != CauseLimit && r1.Cause != CauseLookup {
			t.Fatalf("incomplete for %v: %v", r1.Cause, r1.Err)
		}
		if len(r1.Targets) > MaxTargets {
			t.Fatalf("%d targets", len(r1.Targets))
		}
		seen := map[string]bool{} // as local(8) tells addresses apart
		for _, tg := range r1.Targets {
			k := address.FoldPostfix(tg.Addr.String())
			if seen[k] {
				t.Fatalf("%s twice", tg.Addr)
			}
			seen[k] = true
		}
	})
}
