package expand

import (
	"slices"
	"testing"
)

// TestTok822Parse follows global/tok822_parse.c tok822_parse: the address
// nodes of a value, in order, each in internal form (tok822_internalize).
// Words separated by white space or a comment only are separate addresses
// (the parser adds the missing comma); a phrase before <addr> and a group
// name are no address.
func TestTok822Parse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"user@local.test", []string{"user@local.test"}},
		{"user loopuser", []string{"user", "loopuser"}},
		{"user@local.test loopuser@local.test", []string{"user@local.test", "loopuser@local.test"}},
		{"user\tloopuser,other", []string{"user", "loopuser", "other"}},
		{"a (comment) b", []string{"a", "b"}},
		{"user @ local . test", []string{"user@local.test"}},
		{"|/bin/cmd arg", []string{"|/bin/cmd", "arg"}},
		{`"|/bin/cmd arg"`, []string{"|/bin/cmd arg"}},
		{"/var/mail/box name", []string{"/var/mail/box", "name"}},
		{":include:/etc/postfix/list.inc", []string{":include:/etc/postfix/list.inc"}},
		{"Some Name <a@local.test>", []string{"a@local.test"}},
		{"a@local.test <b@local.test>", []string{"b@local.test"}},
		{"<a@local.test> b@local.test", []string{"a@local.test", "b@local.test"}},
		{"<a@local.test> (c) <b@local.test>", []string{"a@local.test", "b@local.test"}},
		{"<@r1,@r2:u@local.test>", []string{"@r1,@r2:u@local.test"}},
		{"list: a@local.test, b@local.test;", []string{"a@local.test", "b@local.test"}},
		{`"a b"@local.test`, []string{"a b@local.test"}},
		{`a\ b@local.test`, []string{"a b@local.test"}},
		{"u@[192.0.2.1]", []string{"u@[192.0.2.1]"}},
		{"<>", nil},
		{"(only a comment)", nil},
		{"", nil},
		{`"unterminated`, []string{"unterminated"}},
		{"a@b\x00c d", []string{"a@b"}},
	} {
		var got []string
		for _, toks := range tok822Parse(tc.in) {
			got = append(got, tokText(toks))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("tok822Parse(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRewriteTokens follows trivial-rewrite/rewrite.c rewrite_tree in the
// local context, on tokens: routing operators inside a quoted string are
// text.
func TestRewriteTokens(t *testing.T) {
	cfg := testConfig()
	cfg.MyDomain = "local.test"
	cfg.AppendDotMydomain = true
	for in, want := range map[string]string{
		"bob":                   "bob@local.test",
		"bob@host":              "bob@host.local.test",
		"bob@[192.0.2.1]":       "bob@[192.0.2.1]",
		"bob@remote.test.":      "bob@remote.test",
		"remote.test!bob":       "bob@remote.test",
		`"remote.test!bob"`:     "remote.test!bob@local.test",
		"bob%remote.test":       "bob@remote.test",
		`"bob%remote.test"`:     "bob%remote.test@local.test",
		"<@r1,@r2:bob@x.test>":  "bob@x.test",
		`""`:                    "",
		"@":                     "",
		`"a b"@x.test`:          "a b@x.test",
		"a!b%c":                 "b%c@a.local.test",
		"a%b%c":                 "a%b@c.local.test",
		"bob@remote.test..":     "bob@remote.test..",
		"bob@":                  "bob@",
		"<bob@local.test> junk": "bob@local.test",
	} {
		toks := tok822Parse(in)
		if len(toks) == 0 {
			t.Errorf("%q: no address", in)
			continue
		}
		if got := cfg.rewriteTokens(toks[0]); got != want {
			t.Errorf("rewriteTokens(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWhitespaceSeparatedValues follows mail_addr_crunch.c
// mail_addr_crunch_opt (virtual and canonical results) and local/token.c
// deliver_token_string (aliases(5) values): both read a value with
// tok822_parse, so addresses separated by white space only are each
// delivered, and an unquoted "|cmd arg" delivers to the address "arg".
func TestWhitespaceSeparatedValues(t *testing.T) {
	cfg := testConfig()
	m := tables(t, map[string]string{
		"hash:virtual": "vws@local.test user loopuser\n",
		"hash:aliases": "ws user loopuser\ncmdarg |/bin/true loopuser\nquoted \"|/bin/true loopuser\"\n",
	})
	equalTargets(t, "virtual", expandWith(t, cfg, m, "vws@local.test"),
		"user@local.test local !", "loopuser@local.test local !")
	equalTargets(t, "alias", expandWith(t, cfg, m, "ws@local.test"),
		"ws@local.test local !", "user@local.test local !", "loopuser@local.test local !")
	equalTargets(t, "alias |cmd arg", expandWith(t, cfg, m, "cmdarg@local.test"),
		"cmdarg@local.test local !", "loopuser@local.test local !")
	equalTargets(t, `alias "|cmd arg"`, expandWith(t, cfg, m, "quoted@local.test"),
		"quoted@local.test local !")
}
