package expand

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Each test here follows one rule of Postfix's own code or one parameter,
// named in the test's comment, on the configuration of testConfig.

// TestKeyOrder follows global/mail_addr_find.c mail_addr_find_opt with
// MA_FIND_DEFAULT: user+ext@domain, user@domain, then for a local domain
// user+ext and user, then @domain.
func TestKeyOrder(t *testing.T) {
	for _, tc := range []struct {
		rcpt string
		want []string
	}{
		{"user+ext@local.test", []string{"user+ext@local.test", "user@local.test", "user+ext", "user", "@local.test"}},
		{"user@local.test", []string{"user@local.test", "user", "@local.test"}},
		// A remote domain: no local-part keys.
		{"user+ext@remote.test", []string{"user+ext@remote.test", "user@remote.test", "@remote.test"}},
		// $myorigin is local for this rule even when mydestination does
		// not list it.
		{"user+ext@origin.test", []string{"user+ext@origin.test", "user@origin.test", "user+ext", "user", "@origin.test"}},
	} {
		cfg := testConfig()
		cfg.MyOrigin = "origin.test"
		rec := &recorder{Memory: &Memory{}}
		res := expandWith(t, cfg, rec, tc.rcpt)
		mustComplete(t, res)
		if got := rec.asked("hash:virtual"); !slices.Equal(got, tc.want) {
			t.Errorf("%s: virtual keys %q, want %q", tc.rcpt, got, tc.want)
		}
	}
}

// TestPartialKeysFixedOnly follows mail_addr_find.c's PARTIAL
// (DICT_FLAG_FIXED) and maps_find: a regexp or pcre table sees the full
// address only; the fixed table after it in the list sees every key.
func TestPartialKeysFixedOnly(t *testing.T) {
	cfg := testConfig()
	cfg.VirtualAliasMaps = []string{"regexp:v.re", "hash:virtual"}
	rec := &recorder{Memory: &Memory{}}
	rec.Set("regexp:v.re", MemTable{Pattern: true, Entries: map[string]string{}})
	mustComplete(t, expandWith(t, cfg, rec, "user+ext@local.test"))
	if got, want := rec.asked("regexp:v.re"), []string{"user+ext@local.test"}; !slices.Equal(got, want) {
		t.Errorf("regexp table asked %q, want %q", got, want)
	}
	if got := rec.asked("hash:virtual"); len(got) != 5 {
		t.Errorf("hash table asked %q, want the five keys", got)
	}
	// A pattern match on the full address wins, and its result is
	// expanded again.
	rec.Set("regexp:v.re", MemTable{Pattern: true, Match: func(k string) (string, bool) {
		if strings.HasPrefix(k, "re-") {
			return "loopuser@local.test", true
		}
		return "", false
	}})
	equalTargets(t, "regexp", expandWith(t, cfg, rec, "re-x@local.test"), "loopuser@local.test local !")
}

// TestOneToManyRecursive follows cleanup/cleanup_map1n.c: results are
// expanded again, a list fans out, duplicates go (cleanup_out_recipient's
// been_here), an address that maps to itself is kept and expanded once.
func TestOneToManyRecursive(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{"hash:virtual": `
list@local.test a@local.test, b@local.test, c@remote.test
a@local.test final@local.test
b@local.test final@local.test
self@local.test self@local.test, other@local.test
chain1@local.test chain2@local.test
chain2@local.test chain3@local.test
chain3@local.test loopuser@local.test
`})
	equalTargets(t, "one-to-many", expandWith(t, cfg, m, "list@local.test"),
		"final@local.test local !", "c@remote.test smtp")
	equalTargets(t, "self", expandWith(t, cfg, m, "self@local.test"),
		"self@local.test local !", "other@local.test local !")
	equalTargets(t, "recursive", expandWith(t, cfg, m, "chain1@local.test"), "loopuser@local.test local !")
}

// TestLimits follows cleanup_map1n.c: beyond virtual_alias_recursion_limit,
// virtual_alias_expansion_limit or virtual_alias_address_length_limit,
// cleanup defers the mail; the expansion is then incomplete (CauseLimit)
// and the recipient is judged as spelled. A cycle ends at the recursion
// limit.
func TestLimits(t *testing.T) {
	cfg := testConfig()
	var many []string
	for i := range cfg.VirtualAliasExpansionLimit + 1 {
		many = append(many, "m"+itoa(i)+"@remote.test")
	}
	m := tables(t, map[string]string{"hash:virtual": `
cycle-a@local.test cycle-b@local.test
cycle-b@local.test cycle-a@local.test
long@local.test ` + strings.Repeat("x", cfg.VirtualAliasAddressLengthLimit) + `@local.test
many@local.test ` + strings.Join(many, ",") + `
`})
	for _, rcpt := range []string{"cycle-a@local.test", "long@local.test", "many@local.test"} {
		res := expandWith(t, cfg, m, rcpt)
		if res.Complete || res.Cause != CauseLimit {
			t.Errorf("%s: complete=%v cause=%v err=%v, want an incomplete result for a limit", rcpt, res.Complete, res.Cause, res.Err)
		}
		if addrs, replace := res.Expansion(ModePostfix); addrs != nil || replace {
			t.Errorf("%s: an incomplete result gives %v, %v; want the literal recipient alone", rcpt, addrs, replace)
		}
	}
	// Exactly at the limit is fine.
	m = tables(t, map[string]string{"hash:virtual": "many@local.test " + strings.Join(many[:cfg.VirtualAliasExpansionLimit], ",")})
	if res := expandWith(t, cfg, m, "many@local.test"); !res.Complete || len(res.Targets) != cfg.VirtualAliasExpansionLimit {
		t.Errorf("at the expansion limit: complete=%v targets=%d err=%v", res.Complete, len(res.Targets), res.Err)
	}
}

func itoa(i int) string { return fmt.Sprintf("%04d", i) }

// TestExtensionPropagation follows propagate_unmatched_extensions
// (mail_addr_map.c, mail_addr_crunch.c): with "virtual", an extension that
// had to be stripped to match is appended to each result; without it, it
// is lost. An extension that matched as part of the key is never
// appended.
func TestExtensionPropagation(t *testing.T) {
	m := tables(t, map[string]string{"hash:virtual": `
valias@local.test loopuser@local.test, other@remote.test
full+ext@local.test loopuser@local.test
`})
	cfg := testConfig()
	equalTargets(t, "propagated", expandWith(t, cfg, m, "valias+ext@local.test"),
		"loopuser+ext@local.test local !", "other+ext@remote.test smtp")
	equalTargets(t, "matched with the extension", expandWith(t, cfg, m, "full+ext@local.test"),
		"loopuser@local.test local !")
	cfg.PropagateVirtual = false
	equalTargets(t, "not propagated", expandWith(t, cfg, m, "valias+ext@local.test"),
		"loopuser@local.test local !", "other@remote.test smtp")
}

// TestCatchAll follows mail_addr_map.c: an @domain key matches any local
// part; a result "@other" stands for the recipient's own local part at
// other.
func TestCatchAll(t *testing.T) {
	m := tables(t, map[string]string{"hash:virtual": `
@catch.test loopuser@local.test
@move.test @local.test
bare@move2.test @local.test
`})
	cfg := testConfig()
	equalTargets(t, "catch-all", expandWith(t, cfg, m, "anyone@catch.test"), "loopuser@local.test local !")
	equalTargets(t, "domain move", expandWith(t, cfg, m, "loopuser@move.test"), "loopuser@local.test local !")
	// Matched as @domain the extension is part of the local part kept.
	equalTargets(t, "domain move, extension", expandWith(t, cfg, m, "loopuser+x@move.test"), "loopuser+x@local.test local !")
	// Matched without its extension, "@other" takes the local part
	// without it, and propagation appends it again.
	equalTargets(t, "user@domain -> @other", expandWith(t, cfg, m, "bare+x@move2.test"), "bare+x@local.test local !")
	cfg.PropagateVirtual = false
	equalTargets(t, "user@domain -> @other, no propagation", expandWith(t, cfg, m, "bare+x@move2.test"), "bare@local.test local !")
}

// TestCanonicalClasses follows cleanup/cleanup_addr.c
// cleanup_addr_recipient: recipient_canonical_maps, then canonical_maps,
// each only when envelope_recipient is in its *_classes, each one-to-one
// (the first address of a list) before virtual aliasing.
func TestCanonicalClasses(t *testing.T) {
	cfg := testConfig()
	cfg.RecipientCanonicalMaps = []string{"hash:rcanon"}
	cfg.CanonicalMaps = []string{"hash:canon"}
	m := tables(t, map[string]string{
		"hash:rcanon":  "canon@local.test valias@local.test, ignored@local.test\n",
		"hash:canon":   "valias@local.test c2@local.test\n",
		"hash:virtual": "c2@local.test loopuser@local.test\n",
	})
	equalTargets(t, "both classes", expandWith(t, cfg, m, "canon@local.test"), "loopuser@local.test local !")
	cfg.CanonicalEnvelope = false
	equalTargets(t, "canonical_classes without envelope_recipient", expandWith(t, cfg, m, "canon@local.test"), "valias@local.test local !")
	cfg.RecipientCanonicalEnvelope = false
	equalTargets(t, "neither", expandWith(t, cfg, m, "canon@local.test"), "canon@local.test local !")
}

// TestBareLocal follows trivial-rewrite/rewrite.c rewrite_tree in the local
// context: a bare local part gets @$myorigin (append_at_myorigin); a
// bang path and the percent hack make a domain.
func TestBareLocal(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{"hash:virtual": "sales@local.test bob\n"})
	equalTargets(t, "bare result", expandWith(t, cfg, m, "sales@local.test"), "bob@local.test local !")
	equalTargets(t, "bare recipient", expandWith(t, cfg, m, "Postmaster"), "Postmaster@local.test local !")
	equalTargets(t, "bang path", expandWith(t, cfg, m, "remote.test!bob"), "bob@remote.test smtp")
	equalTargets(t, "percent hack", expandWith(t, cfg, m, "bob%remote.test"), "bob@remote.test smtp")
	// In a local domain the resolver does the percent hack too
	// (resolve.c resolve_addr).
	equalTargets(t, "percent hack in a local domain", expandWith(t, cfg, m, "bob%remote.test@local.test"), "bob@remote.test smtp")
	cfg.AppendAtMyorigin = false
	equalTargets(t, "append_at_myorigin = no", expandWith(t, cfg, m, "bob"), "bob@mx.local.test local !")
}

// TestCaseFolding follows DICT_FLAG_FOLD_FIX (cleanup_init.c): the keys of
// a fixed-string table are looked up folded; the recipient's own case is
// kept where no table rewrote it.
func TestCaseFolding(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"})
	equalTargets(t, "folded key", expandWith(t, cfg, m, "VAlias@Local.Test"), "loopuser@local.test local !")
	equalTargets(t, "kept case", expandWith(t, cfg, m, "LoopUser@LOCAL.test."), "LoopUser@LOCAL.test local !")
}

// TestAliases follows local/recipient.c deliver_switch and local/alias.c
// deliver_alias: aliases(5) under the folded local part, then without the
// extension; targets that resolve to local(8) are compared at the next
// level; files and commands carry no address; an alias naming itself is
// delivered to the mailbox; a remote target is forwarded.
func TestAliases(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{
		"hash:virtual": "valias@local.test lp@local.test\n",
		"hash:aliases": `
lp loopuser
list first, second@local.test, "|/usr/bin/true", /var/mail/x, fwd@remote.test
first deeper
self self, other
ext+tag tagged
`,
	})
	equalTargets(t, "virtual then alias", expandWith(t, cfg, m, "valias@local.test"),
		"lp@local.test local !", "loopuser@local.test local !")
	equalTargets(t, "levels", expandWith(t, cfg, m, "list@local.test"),
		"list@local.test local !", "first@local.test local !", "deeper@local.test local !",
		"second@local.test local !", "fwd@remote.test smtp")
	equalTargets(t, "self", expandWith(t, cfg, m, "self@local.test"),
		"self@local.test local !", "other@local.test local !")
	// With the extension: the full local part first.
	equalTargets(t, "extension matched", expandWith(t, cfg, m, "ext+tag@local.test"),
		"ext+tag@local.test local !", "tagged@local.test local !")
	// Then without it; "alias" is not in propagate_unmatched_extensions by
	// default.
	equalTargets(t, "extension stripped", expandWith(t, cfg, m, "lp+x@local.test"),
		"lp+x@local.test local !", "loopuser@local.test local !")
	cfg.PropagateAlias = true
	equalTargets(t, "extension propagated", expandWith(t, cfg, m, "lp+x@local.test"),
		"lp+x@local.test local !", "loopuser+x@local.test local !")
}

// TestAliasNesting follows local(8)'s nesting limit (state.level > 100 in
// deliver_recipient and deliver_alias): each aliases(5) hop costs four
// levels, so the 25th hop is bounced unchecked, and a chain that long is
// not an error of the expansion.
func TestAliasNesting(t *testing.T) {
	cfg := testConfig()
	var b strings.Builder
	for i := range 40 {
		b.WriteString("a" + itoa(i) + " a" + itoa(i+1) + "\n")
	}
	m := tables(t, map[string]string{"hash:aliases": b.String()})
	res := expandWith(t, cfg, m, "a0000@local.test")
	mustComplete(t, res)
	if got := len(res.Targets); got != 25 {
		t.Errorf("alias chain: %d targets, want 25 (hops 0..24): %s", got, fmtList(targets(res)))
	}
}

// TestTransports follows resolve.c resolve_addr and transport.c
// transport_lookup with master.cf: the class's transport, transport_maps
// over it, and which services compare Delivered-To: (local(8); pipe(8)
// with flag D).
func TestTransports(t *testing.T) {
	cfg := testConfig()
	cfg.VirtualMailboxDomains = parseList("vmail.test", false, false)
	cfg.RelayDomains = parseList("relay.test", true, true)
	cfg.TransportMaps = []string{"hash:transport"}
	cfg.Services["dovecot"] = Service{Name: "dovecot", Type: "unix", Command: "pipe", Args: []string{"flags=DRhu", "user=vmail", "argv=/usr/lib/dovecot/deliver"}}
	cfg.Services["nodel"] = Service{Name: "nodel", Type: "unix", Command: "pipe", Args: []string{"flags=Rhu", "argv=/bin/cat"}}
	m := tables(t, map[string]string{
		"hash:transport": `
lmtp.test lmtp:unix:private/dovecot-lmtp
pipe.test dovecot:
nodel.test nodel
.sub.test lmtp:[127.0.0.1]
`,
		"hash:virtual": "",
	})
	for _, tc := range []struct{ rcpt, want string }{
		{"u@local.test", "u@local.test local !"},
		{"u@vmail.test", "u@vmail.test virtual"},
		{"u@relay.test", "u@relay.test relay"},
		{"u@x.relay.test", "u@x.relay.test relay"},
		{"u@remote.test", "u@remote.test smtp"},
		{"u@lmtp.test", "u@lmtp.test lmtp"},
		{"u@pipe.test", "u@pipe.test dovecot !"},
		{"u@nodel.test", "u@nodel.test nodel"},
		{"u@a.sub.test", "u@a.sub.test lmtp"},
		{"u@sub.test", "u@sub.test smtp"},
	} {
		equalTargets(t, tc.rcpt, expandWith(t, cfg, m, tc.rcpt), tc.want)
	}
	// A virtual alias domain that the virtual table does not rewrite:
	// the error transport ("User unknown in virtual alias table").
	cfg.VirtualAliasDomains = parseList("valias.test", false, false)
	equalTargets(t, "virtual alias domain", expandWith(t, cfg, m, "u@valias.test"), "u@valias.test error")
	// local_transport as a pipe with D, e.g. Dovecot's deliver.
	cfg.LocalTransport = "dovecot"
	equalTargets(t, "local_transport = dovecot", expandWith(t, cfg, m, "u@local.test"), "u@local.test dovecot !")
}

// TestMasquerade follows cleanup/cleanup_masquerade.c
// cleanup_masquerade_external as cleanup_addr_recipient applies it: only
// with envelope_recipient in masquerade_classes; the first entry of
// masquerade_domains that is the domain or a parent of it decides ("!"
// keeps the address); masquerade_exceptions keeps a local part; it runs
// after canonical maps and before virtual aliases.
func TestMasquerade(t *testing.T) {
	cfg := testConfig()
	cfg.MasqueradeDomains = []string{"!Sub.Local.Test", "Local.Test"}
	cfg.MasqueradeExceptions = parseList("root", false, false)
	m := tables(t, map[string]string{"hash:virtual": "valias@local.test loopuser@local.test\n"})
	equalTargets(t, "classes without envelope_recipient", expandWith(t, cfg, m, "u@host.local.test"), "u@host.local.test smtp")
	cfg.MasqueradeEnvelope = true
	for rcpt, want := range map[string]string{
		"u@host.local.test":      "u@local.test local !",
		"u@a.b.local.test":       "u@local.test local !",
		"u@sub.local.test":       "u@sub.local.test smtp",
		"u@x.sub.local.test":     "u@x.sub.local.test smtp",
		"u@local.test":           "u@local.test local !",
		"u@notlocal.test":        "u@notlocal.test smtp",
		"root@host.local.test":   "root@host.local.test smtp",
		"valias@host.local.test": "loopuser@local.test local !",
	} {
		equalTargets(t, rcpt, expandWith(t, cfg, m, rcpt), want)
	}
}

// TestFoldKeyAsCasefold follows util/casefold.c casefoldx, which folds a
// fixed-string table's key: ASCII to lower case, the rest with Unicode
// case folding, bytes that are not UTF-8 copied as they are, even beside
// letters that fold.
func TestFoldKeyAsCasefold(t *testing.T) {
	for in, want := range map[string]string{
		"VAlias@Local.Test": "valias@local.test",
		"ÉLISE@x":           "élise@x",
		"AB\xffÉ@x":         "ab\xffé@x",
	} {
		if got := foldKey(in); got != want {
			t.Errorf("foldKey(%q) = %q, want %q", in, got, want)
		}
	}
}
