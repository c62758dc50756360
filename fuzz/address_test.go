package fuzz

import (
	"errors"
	"net/mail"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// FuzzPath drives address.ParsePath with an arbitrary RCPT/MAIL argument.
// Oracles:
//   - a refusal is a *address.PathError naming the argument and a reason;
//   - a path it accepts, written back canonically as
//     <Route:Mailbox> Params, parses again to the very same Path (so Addr,
//     Route, Params and Null are stable, and so is the key);
//   - the mailbox read as a header value (address.ParseList) is the one
//     address with the same key: both front ends agree on what it is
//     (except for '@' and ':' in a path's local part, see below);
//   - the key is a fixed point: parsed back as an addr-spec and keyed again
//     it is the same.
func FuzzPath(f *testing.F) {
	f.Fuzz(func(t *testing.T, arg string) {
		p, err := address.ParsePath(arg)
		if err != nil {
			var pe *address.PathError
			if !errors.As(err, &pe) || pe.Arg != arg || pe.Msg == "" {
				t.Fatalf("ParsePath(%q) error %#v: want a *PathError with the argument and a reason", arg, err)
			}
			return
		}
		if p.Null != (p.Addr == address.Addr{}) {
			t.Fatalf("ParsePath(%q) = %#v: Null must go with the zero Addr and only with it", arg, p)
		}
		again := "<"
		if p.Route != "" {
			again += p.Route + ":"
		}
		again += p.Addr.String() + ">"
		if p.Params != "" {
			again += " " + p.Params
		}
		p2, err := address.ParsePath(again)
		if err != nil {
			t.Fatalf("ParsePath(%q) = %#v, written back as %q: %v", arg, p, again, err)
		}
		if diff := cmp.Diff(p, p2); diff != "" {
			t.Fatalf("ParsePath(%q), written back as %q, parses differently (-first +second):\n%s", arg, again, diff)
		}
		if p.Null {
			return
		}
		k := p.Key()
		list := address.ParseList([]byte(p.Addr.String()))
		// Intended difference: a path's local part may hold '@' and ':'
		// unquoted, as Postfix's RFC 822 parser allows (a@b@c is "a@b"@c);
		// a header value splits there.
		if !strings.ContainsAny(p.Local, "@:") && (len(list) != 1 || list[0].Key() != k) {
			t.Fatalf("ParsePath(%q) mailbox %q has key %q, but as a header value it reads %#v", arg, p.Addr.String(), k, list)
		}
		checkKeyFixedPoint(t, p.Addr)
	})
}

// checkKeyFixedPoint: the key of a parsed address reads back as one address
// with the same key.
func checkKeyFixedPoint(t *testing.T, a address.Addr) {
	t.Helper()
	k := a.Key()
	again := address.ParseList([]byte(k))
	if len(again) != 1 || again[0].Key() != k {
		t.Fatalf("key %q of %#v reads back as %#v, want one address with that key", k, a, again)
	}
}

// FuzzList drives address.ParseList with an arbitrary header field value.
// Oracles:
//   - every address re-parses, as an addr-spec and inside <...> through
//     ParsePath, to the same key, and its key is a fixed point;
//   - AppendList appends exactly what ParseList returns;
//   - the result is bounded by the value: at most one address per two
//     bytes (plus one), and their text within a fixed multiple of it;
//   - differential against net/mail.ParseAddressList: where net/mail
//     accepts the value, every addr-spec it finds is among ours by key.
//     The intended differences all go one way (we find more): we read
//     obsolete and broken forms net/mail refuses (routes, CFWS around dots,
//     bare local parts, unterminated quotes, '@' in display names) and
//     Postfix's backslash escapes in atoms. No difference in the other
//     direction is known, so none is skipped: net/mail's quoted local part
//     comes back unquoted, and quoting it whole is one of its spellings.
func FuzzList(f *testing.F) {
	f.Fuzz(func(t *testing.T, value []byte) {
		addrs := address.ParseList(value)
		prefix := []address.Addr{{Local: "keep", Domain: "me"}}
		appended := address.AppendList(prefix, value)
		if diff := cmp.Diff(append([]address.Addr{{Local: "keep", Domain: "me"}}, addrs...), appended); diff != "" {
			t.Fatalf("AppendList differs from ParseList (-want +got):\n%s", diff)
		}
		if len(addrs) > len(value)/2+1 {
			t.Fatalf("%d addresses from %d bytes", len(addrs), len(value))
		}
		// Bytes of the addresses: each value byte is read by the main
		// pass and at most once more by the fallback re-reading; closing an
		// unterminated quote or literal adds one byte, escaping a literal's
		// '"', '<', '>' doubles them.
		total := 0
		for _, a := range addrs {
			total += len(a.Local) + len(a.Domain)
		}
		if total > 4*len(value)+len(addrs) {
			t.Fatalf("addresses hold %d bytes from a %d-byte value", total, len(value))
		}
		keys := make(map[string]bool, len(addrs))
		for _, a := range addrs {
			k := a.Key()
			keys[k] = true
			s := a.String()
			if again := address.ParseList([]byte(s)); len(again) != 1 || again[0].Key() != k {
				t.Fatalf("address %#v (key %q) of %q: %q reads back as %#v", a, k, value, s, again)
			}
			if !strings.Contains(s, "\x00") { // a path never holds NUL; ParsePath refuses it
				p, err := address.ParsePath("<" + s + ">")
				if err != nil || p.Key() != k {
					t.Fatalf("address %#v (key %q) of %q: ParsePath(<%s>) = %#v, %v", a, k, value, s, p, err)
				}
			}
			checkKeyFixedPoint(t, a)
		}
		differentialNetMail(t, value, keys)
	})
}

// differentialNetMail checks that every addr-spec net/mail finds in value
// is among the keys ParseList found.
func differentialNetMail(t *testing.T, value []byte, keys map[string]bool) {
	t.Helper()
	list, err := mail.ParseAddressList(string(value))
	if err != nil {
		return
	}
	for _, m := range list {
		at := strings.LastIndexByte(m.Address, '@')
		if at < 0 {
			continue
		}
		local, domain := m.Address[:at], m.Address[at+1:]
		// net/mail returns the local part unquoted; quoting it whole is one
		// of its spellings (the key requotes canonically).
		a := address.Addr{Local: quoteLocal(local), Domain: domain}
		if !keys[a.Key()] {
			t.Fatalf("net/mail finds %q (key %q) in %q; ParseList finds keys %v", m.Address, a.Key(), value, keys)
		}
	}
}

func quoteLocal(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// maxKeyGrowth bounds a key's length per byte of Local and Domain: case
// folding with NFD/NFC grows a rune to at most three times its bytes
// (U+1D160), IDNA mapping plus Punycode a little more (U+337F maps to four
// ideographs, 3.4 times), quoting doubles only ASCII '"' and '\'.
const maxKeyGrowth = 6

// FuzzKey drives Addr.Key with arbitrary parts. Oracles:
//   - it never panics and is deterministic;
//   - the key's length is bounded by maxKeyGrowth times the input, plus
//     the quotes, brackets and '@' it may add;
//   - an Addr that reads back as itself (its String parses to exactly it)
//     has a key that is a fixed point, and so has every address parsed
//     from Local@Domain.
func FuzzKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, local, domain string) {
		a := address.Addr{Local: local, Domain: domain}
		k := a.Key()
		if k2 := a.Key(); k2 != k {
			t.Fatalf("%#v.Key() gave %q then %q", a, k, k2)
		}
		if limit := maxKeyGrowth*(len(local)+len(domain)) + 16; len(k) > limit {
			t.Fatalf("%#v.Key() is %d bytes, over %d", a, len(k), limit)
		}
		if a == (address.Addr{}) {
			if k != "" {
				t.Fatalf("the zero Addr keys as %q, want \"\"", k)
			}
			return
		}
		if again := address.ParseList([]byte(a.String())); len(again) == 1 && again[0] == a {
			checkKeyFixedPoint(t, a)
		}
		for _, b := range address.ParseList([]byte(a.String())) {
			checkKeyFixedPoint(t, b)
		}
	})
}
