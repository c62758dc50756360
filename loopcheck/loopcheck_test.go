package loopcheck

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// crlf joins lines into a message with CRLF line ends, as the proxy sees it
// after dot-unstuffing. The front smtpd always prepends its Received: field.
func crlf(lines ...string) string {
	return strings.Join(lines, "\r\n") + "\r\n"
}

const received = "Received: from client.example (client.example [192.0.2.7])\r\n\tby mx.local.test (Postfix) with ESMTP id 4ABC; Wed, 25 Nov 2026 10:00:00 +0000"

func loop(rcpt string) Verdict { return Verdict{Loop: true, Recipient: rcpt} }

var pass = Verdict{}

// verdictCase is one row of the verdict table. src says where the row comes
// from: "original" (reference/original.md behaviour table), "postfix"
// (reference/postfix.md, local(8)'s loop check), or "edge" (our own).
type verdictCase struct {
	name  string
	src   string
	rcpts []string
	msg   string
	want  Verdict
}

var verdictCases = []verdictCase{
	// reference/original.md, behaviour table, row by row. SPEC 5: we reject
	// everything the original rejects except after a non-header line, and
	// everything it missed that Postfix would bounce.
	{"normal message", "original", []string{"<user@local.test>"},
		crlf(received, "From: a@example.org", "To: user@local.test", "Subject: hi", "", "body"), pass},
	{"equal to recipient", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "Subject: x", "", "body"), loop("user@local.test")},
	{"header value upper case", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: USER@LOCAL.TEST", "", "body"), loop("user@local.test")},
	{"rcpt mixed case", "original", []string{"<UsEr@Local.Test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("UsEr@Local.Test")},
	{"name upper case", "original", []string{"<user@local.test>"},
		crlf(received, "DELIVERED-TO: user@local.test", "", "body"), loop("user@local.test")},
	{"no space after colon", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To:user@local.test", "", "body"), loop("user@local.test")},
	{"space before colon (original missed)", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To : user@local.test", "", "body"), loop("user@local.test")},
	{"tab before colon", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To\t: user@local.test", "", "body"), loop("user@local.test")},
	{"folded value", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To:", " user@local.test", "", "body"), loop("user@local.test")},
	{"folded display name", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: \"Some", " Name\" <user@local.test>", "", "body"), loop("user@local.test")},
	{"angle brackets", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: <user@local.test>", "", "body"), loop("user@local.test")},
	{"display name and trailing comment", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: \"Name\" <user@local.test> (fwd)", "", "body"), loop("user@local.test")},
	{"trailing comment", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user@local.test (comment)", "", "body"), loop("user@local.test")},
	{"list, second address matches", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: a@other.example, user@local.test", "", "body"), loop("user@local.test")},
	{"two recipients, second matches", "original", []string{"<a@local.test>", "<user@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"two fields, second matches (original missed)", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: other@local.test", "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"field after other headers", "original", []string{"<user@local.test>"},
		crlf(received, "From: a@example.org", "Subject: s", "Message-ID: <1@x>", "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"field only in the body", "original", []string{"<user@local.test>"},
		crlf(received, "Subject: s", "", "Delivered-To: user@local.test"), pass},
	{"field after a non-header line (Postfix's reading)", "original", []string{"<user@local.test>"},
		crlf(received, "Subject: s", "this is not a header", "Delivered-To: user@local.test", "", "body"), pass},
	{"extension on the header side only", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user+ext@local.test", "", "body"), pass},
	{"extension on the recipient side only", "original", []string{"<user+ext@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), pass},
	{"empty field", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To:", "Subject: s", "", "body"), pass},
	{"empty field with spaces", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To:   ", "", "body"), pass},
	{"trailing dot on the header domain (original missed)", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user@local.test.", "", "body"), loop("user@local.test")},
	{"trailing dot on the recipient domain", "edge", []string{"<user@local.test.>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test.")},
	{"quoted local part in the header (original missed)", "original", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: \"user\"@local.test", "", "body"), loop("user@local.test")},
	{"quoted local part in the recipient", "edge", []string{"<\"user\"@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("\"user\"@local.test")},
	{"rcpt with ESMTP parameter", "original", []string{"<user@local.test> NOTIFY=NEVER"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"rcpt without brackets", "original", []string{"user@local.test"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"rcpt with spaces inside brackets (original lost it)", "original", []string{"< user@local.test >"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"bare-LF header lines", "original", []string{"<user@local.test>"},
		"Received: from x\nDelivered-To: user@local.test\nSubject: s\n\nbody\n", loop("user@local.test")},

	// reference/postfix.md: what local(8) bounces must be rejected; what it
	// does not bounce but an address reading finds is rejected too (superset).
	{"postfix: exact value", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: loopuser@local.test", "", "body"), loop("loopuser@local.test")},
	{"postfix: whole address case-folded", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: LoopUser@LOCAL.test", "", "body"), loop("loopuser@local.test")},
	{"postfix: name case-insensitive", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "delivered-to: loopuser@local.test", "", "body"), loop("loopuser@local.test")},
	{"postfix: whitespace before colon", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To  : loopuser@local.test", "", "body"), loop("loopuser@local.test")},
	{"postfix misses, we reject: angle brackets", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: <loopuser@local.test>", "", "body"), loop("loopuser@local.test")},
	{"postfix misses, we reject: comment", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: loopuser@local.test (comment)", "", "body"), loop("loopuser@local.test")},
	{"postfix misses, we reject: value on the continuation line", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To:", "\tloopuser@local.test", "", "body"), loop("loopuser@local.test")},
	{"postfix misses, we reject: trailing space", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: loopuser@local.test ", "", "body"), loop("loopuser@local.test")},
	{"postfix: extension kept, both sides", "postfix", []string{"<loopuser+ext@local.test>"},
		crlf(received, "Delivered-To: loopuser+ext@local.test", "", "body"), loop("loopuser+ext@local.test")},
	{"postfix: extension differs", "postfix", []string{"<loopuser+a@local.test>"},
		crlf(received, "Delivered-To: loopuser+b@local.test", "", "body"), pass},
	{"postfix: quote_822_local form of a recipient needing quotes", "postfix", []string{"<\"loop user\"@local.test>"},
		crlf(received, "Delivered-To: \"loop user\"@local.test", "", "body"), loop("\"loop user\"@local.test")},
	{"postfix: stops at the first non-header line", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, ">From nobody", "Delivered-To: loopuser@local.test", "", "body"), pass},
	{"postfix: many distinct values, match late", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, strings.Repeat("Delivered-To: other@local.test\r\n", 999)+"Delivered-To: loopuser@local.test", "", "body"), loop("loopuser@local.test")},

	{"postfix: first physical line alone, continuation junk", "postfix", []string{"<loopuser@local.test>"},
		crlf(received, "Delivered-To: loopuser@local.test", " junk that is no address", "", "body"), loop("loopuser@local.test")},
	{"postfix: bare local part on the first line, continuation junk", "postfix", []string{"<Postmaster>"},
		crlf(received, "Delivered-To: postmaster", " 0000", "", "body"), loop("Postmaster")},

	// Our own edges.
	{"no recipients", "edge", nil,
		crlf(received, "Delivered-To: user@local.test", "", "body"), pass},
	{"empty message", "edge", []string{"<user@local.test>"}, "", pass},
	{"header section only, no body, no final line end", "edge", []string{"<user@local.test>"},
		"Delivered-To: user@local.test", loop("user@local.test")},
	{"header section only, CRLF at end", "edge", []string{"<user@local.test>"},
		"Delivered-To: user@local.test\r\n", loop("user@local.test")},
	{"first recipient in client order wins", "edge", []string{"<a@local.test>", "<b@local.test>"},
		crlf(received, "Delivered-To: b@local.test", "Delivered-To: a@local.test", "", "body"), loop("a@local.test")},
	{"recipient spelling kept for the reply", "edge", []string{"<@relay.example:User@Local.TEST.> NOTIFY=FAILURE ORCPT=rfc822;user@local.test"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("User@Local.TEST.")},
	{"X-Delivered-To is another field", "edge", []string{"<user@local.test>"},
		crlf(received, "X-Delivered-To: user@local.test", "", "body"), pass},
	{"Delivered-To-Foo is another field", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To-Foo: user@local.test", "", "body"), pass},
	{"Original-Delivered-To is another field", "edge", []string{"<user@local.test>"},
		crlf(received, "Original-Delivered-To: user@local.test", "", "body"), pass},
	{"name without colon ends the section", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To user@local.test", "Delivered-To: user@local.test", "", "body"), pass},
	{"leading continuation line is not a header", "edge", []string{"<user@local.test>"},
		crlf(" Delivered-To: user@local.test", "", "body"), pass},
	{"different domain", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user@other.test", "", "body"), pass},
	{"different local part", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user2@local.test", "", "body"), pass},
	{"subdomain is different", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: user@sub.local.test", "", "body"), pass},
	{"Postmaster recipient, bare local part value", "edge", []string{"<Postmaster>"},
		crlf(received, "Delivered-To: postmaster", "", "body"), loop("Postmaster")},
	{"Postmaster recipient, qualified value", "edge", []string{"<Postmaster>"},
		crlf(received, "Delivered-To: postmaster@local.test", "", "body"), pass},
	{"qualified recipient, bare local part value", "edge", []string{"<postmaster@local.test>"},
		crlf(received, "Delivered-To: postmaster", "", "body"), pass},
	{"source route dropped", "edge", []string{"<@a.example,@b.example:user@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"IDNA: A-label recipient, U-label value", "edge", []string{"<user@xn--bcher-kva.example>"},
		crlf(received, "Delivered-To: user@bücher.example", "", "body"), loop("user@xn--bcher-kva.example")},
	{"IDNA: U-label recipient, upper-case A-label value", "edge", []string{"<user@bücher.example> SMTPUTF8"},
		crlf(received, "Delivered-To: user@XN--BCHER-KVA.example", "", "body"), loop("user@bücher.example")},
	{"IDNA: U-label case folding", "edge", []string{"<user@BÜCHER.example>"},
		crlf(received, "Delivered-To: user@bücher.example", "", "body"), loop("user@BÜCHER.example")},
	{"UTF-8 local part, Unicode case folding", "edge", []string{"<ÜSER@local.test>"},
		crlf(received, "Delivered-To: üser@local.test", "", "body"), loop("ÜSER@local.test")},
	{"UTF-8 local parts that differ", "edge", []string{"<üser@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), pass},
	{"address literal, IPv4", "edge", []string{"<user@[192.0.2.1]>"},
		crlf(received, "Delivered-To: user@[192.0.2.1]", "", "body"), loop("user@[192.0.2.1]")},
	{"address literal, IPv6 spellings", "edge", []string{"<user@[IPv6:2001:DB8:0:0::1]>"},
		crlf(received, "Delivered-To: user@[ipv6:2001:db8::1]", "", "body"), loop("user@[IPv6:2001:DB8:0:0::1]")},
	{"address literal differs", "edge", []string{"<user@[192.0.2.1]>"},
		crlf(received, "Delivered-To: user@[192.0.2.2]", "", "body"), pass},
	{"group syntax", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: friends: a@x.example, user@local.test;", "", "body"), loop("user@local.test")},
	{"nested comments", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: (a (nested (deep)) comment) user@local.test (x)", "", "body"), loop("user@local.test")},
	{"invalid list still yields addr-specs", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: garbage \"unterminated user@local.test <junk", "", "body"), loop("user@local.test")},
	{"invalid list, brackets unbalanced", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: <<user@local.test", "", "body"), loop("user@local.test")},
	{"null path value", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: <>", "", "body"), pass},
	{"8-bit bytes in another field", "edge", []string{"<user@local.test>"},
		crlf(received, "Subject: \xe4\xf6\xfc raw latin-1", "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"CR inside a line is content", "edge", []string{"<user@local.test>"},
		crlf(received, "Subject: a\rb", "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"mixed CRLF and LF", "edge", []string{"<user@local.test>"},
		"Received: from x\r\nSubject: s\nDelivered-To:\r\n user@local.test\n\r\nbody\r\n", loop("user@local.test")},
	{"blank line with only CR LF ends section", "edge", []string{"<user@local.test>"},
		"Subject: s\r\n\r\nDelivered-To: user@local.test\r\n", pass},
	{"line of spaces after a field is a continuation", "edge", []string{"<user@local.test>"},
		crlf("Subject: s", "   ", "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"long folded value with many addresses", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: "+strings.Repeat("other@local.test,\r\n ", 500)+"user@local.test", "", "body"), loop("user@local.test")},
	{"many commas", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: "+strings.Repeat(",", 100000)+"user@local.test", "", "body"), loop("user@local.test")},
	{"deep comment nesting hides nothing after it closes", "edge", []string{"<user@local.test>"},
		crlf(received, "Delivered-To: "+strings.Repeat("(", 10000)+strings.Repeat(")", 10000)+" user@local.test", "", "body"), loop("user@local.test")},
	{"duplicate recipients", "edge", []string{"<user@local.test>", "<USER@local.test>"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("user@local.test")},
	{"unparsable recipient still checked", "edge", []string{"<user@local.test"},
		crlf(received, "Delivered-To: user@local.test", "", "body"), loop("<user@local.test")},
}

func TestCheckTable(t *testing.T) {
	if len(verdictCases) < 60 {
		t.Fatalf("the verdict table has %d cases; it must hold at least 60", len(verdictCases))
	}
	for _, tc := range verdictCases {
		t.Run(tc.src+"/"+tc.name, func(t *testing.T) {
			got := Check(tc.rcpts, []byte(tc.msg))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Check(%q) mismatch (-want +got):\n%s", tc.rcpts, diff)
			}
			// The same message with LF line ends gives the same verdict:
			// the proxy normalises bare LF, the check command may not.
			lf := strings.ReplaceAll(tc.msg, "\r\n", "\n")
			if got := Check(tc.rcpts, []byte(lf)); got != tc.want {
				t.Errorf("with LF line ends: got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCheckReadsOnlyTheHeaderSection(t *testing.T) {
	// Everything after the header section may be cut off or garbage: the
	// verdict must not change.
	head := crlf(received, "Delivered-To: user@local.test", "")
	for _, tail := range []string{"", "body\r\n", "Delivered-To: x@y\r\n", strings.Repeat("\x00\xff", 1000)} {
		if got := Check([]string{"<user@local.test>"}, []byte(head+tail)); !got.Loop {
			t.Errorf("tail %q: got %+v, want a loop", tail[:min(len(tail), 20)], got)
		}
		if got := Check([]string{"<x@y>"}, []byte(head+tail)); got.Loop {
			t.Errorf("tail %q: a body field counted: %+v", tail[:min(len(tail), 20)], got)
		}
	}
}

func TestCheckRecipientsReusable(t *testing.T) {
	rcpts := []Recipient{NewRecipient("<a@local.test>"), NewRecipient("<b@local.test> NOTIFY=NEVER")}
	if got, want := rcpts[1].Mailbox, "b@local.test"; got != want {
		t.Errorf("Mailbox = %q, want %q", got, want)
	}
	m1 := []byte(crlf("Delivered-To: b@local.test", "", "x"))
	m2 := []byte(crlf("Delivered-To: c@local.test", "", "x"))
	if got := CheckRecipients(rcpts, m1); got != loop("b@local.test") {
		t.Errorf("first message: %+v", got)
	}
	if got := CheckRecipients(rcpts, m2); got != pass {
		t.Errorf("second message: %+v", got)
	}
}

func addrs(ss ...string) []address.Addr {
	var out []address.Addr
	for _, s := range ss {
		out = append(out, address.ParseList([]byte(s))...)
	}
	return out
}

func TestWithExpansion(t *testing.T) {
	msg := []byte(crlf(received, "Delivered-To: loopuser@local.test", "", "body"))
	for _, tc := range []struct {
		name    string
		rcpt    string
		exp     []address.Addr
		replace bool
		want    Verdict
	}{
		{"no expansion, literal misses", "<valias@local.test>", nil, false, pass},
		{"expansion matches", "<valias@local.test>", addrs("loopuser@local.test"), false,
			Verdict{Loop: true, Recipient: "valias@local.test", Via: "loopuser@local.test"}},
		{"expansion matches, case folded", "<valias@local.test>", addrs("LoopUser@Local.Test"), false,
			Verdict{Loop: true, Recipient: "valias@local.test", Via: "LoopUser@Local.Test"}},
		{"one of many", "<list@local.test>", addrs("a@local.test", "loopuser@local.test", "b@remote.example"), false,
			Verdict{Loop: true, Recipient: "list@local.test", Via: "loopuser@local.test"}},
		{"extension propagated is no loop", "<valias+ext@local.test>", addrs("loopuser+ext@local.test"), false, pass},
		{"literal match keeps no via", "<loopuser@local.test>", addrs("loopuser@local.test"), false, loop("loopuser@local.test")},
		{"literal match beside an expansion", "<loopuser@local.test>", addrs("other@local.test"), false, loop("loopuser@local.test")},
		{"replace: literal no longer counts", "<loopuser@local.test>", addrs("other@local.test"), true, pass},
		{"replace: empty expansion never loops", "<loopuser@local.test>", nil, true, pass},
		{"replace: itself among its expansion", "<LoopUser@local.test>", addrs("loopuser@local.test"), true, loop("LoopUser@local.test")},
		{"replace: expansion matches", "<valias@local.test>", addrs("loopuser@local.test"), true,
			Verdict{Loop: true, Recipient: "valias@local.test", Via: "loopuser@local.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecipient(tc.rcpt).WithExpansion(tc.exp, tc.replace)
			if diff := cmp.Diff(tc.want, CheckRecipients([]Recipient{r}, msg)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestExpansionLeavesRecipientUnchanged(t *testing.T) {
	r := NewRecipient("<valias@local.test>")
	_ = r.WithExpansion(addrs("loopuser@local.test"), false)
	msg := []byte(crlf("Delivered-To: loopuser@local.test", "", "x"))
	if v := CheckRecipients([]Recipient{r}, msg); v.Loop {
		t.Errorf("the recipient without its expansion loops: %+v", v)
	}
}

func TestLoops(t *testing.T) {
	rcpts := []Recipient{
		NewRecipient("<a@local.test>"),
		NewRecipient("<valias@local.test>").WithExpansion(addrs("loopuser@local.test"), false),
		NewRecipient("<b@local.test>"),
		NewRecipient("<loopuser@local.test>").WithExpansion(addrs("loopuser@local.test"), false),
	}
	msg := []byte(crlf("Delivered-To: b@local.test", "Delivered-To: loopuser@local.test", "", "x"))
	want := []Match{{Index: 1, Via: "loopuser@local.test"}, {Index: 2}, {Index: 3}}
	if diff := cmp.Diff(want, Loops(rcpts, msg)); diff != "" {
		t.Errorf("Loops (-want +got):\n%s", diff)
	}
	if got := Loops(rcpts, []byte(crlf("Subject: x", "", "Delivered-To: a@local.test"))); got != nil {
		t.Errorf("Loops on a clean message = %+v, want none", got)
	}
	// CheckRecipients names the first of them.
	if diff := cmp.Diff(Verdict{Loop: true, Recipient: "valias@local.test", Via: "loopuser@local.test"}, CheckRecipients(rcpts, msg)); diff != "" {
		t.Errorf("CheckRecipients (-want +got):\n%s", diff)
	}
}

func TestSpelledMatchBeatsExpansion(t *testing.T) {
	// The recipient matches both as spelled (second field) and through its
	// expansion (first field): the verdict names no detour.
	r := NewRecipient("<a@local.test>").WithExpansion(addrs("loopuser@local.test"), false)
	msg := []byte(crlf("Delivered-To: loopuser@local.test", "Delivered-To: a@local.test", "", "x"))
	if diff := cmp.Diff(loop("a@local.test"), CheckRecipients([]Recipient{r}, msg)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestLoopsWhole: Match.Whole says that every address a recipient is
// delivered to matched, and is false when those are not known.
func TestLoopsWhole(t *testing.T) {
	msg := []byte(crlf("Delivered-To: loopuser@local.test", "Delivered-To: b@local.test", "", "x"))
	exp := func(rcpt string, to ...string) Recipient {
		return NewRecipient("<"+rcpt+">").WithExpansion(addrs(to...), false).WithDeliveries(addrs(to...))
	}
	for _, tc := range []struct {
		name string
		r    Recipient
		want []Match
	}{
		{"as spelled, deliveries unknown", NewRecipient("<loopuser@local.test>"), []Match{{Index: 0}}},
		{"itself only", exp("loopuser@local.test", "loopuser@local.test"), []Match{{Index: 0, Whole: true}}},
		{"itself, case differs", exp("LoopUser@Local.Test", "LoopUser@Local.Test"), []Match{{Index: 0, Whole: true}}},
		{"alias to the looping address", exp("valias@local.test", "loopuser@local.test"), []Match{{Index: 0, Via: "loopuser@local.test", Whole: true}}},
		{"alias to two, both loop", exp("team@local.test", "loopuser@local.test", "b@local.test"), []Match{{Index: 0, Via: "loopuser@local.test", Whole: true}}},
		{"alias to two, one loops", exp("team@local.test", "loopuser@local.test", "other@local.test"), []Match{{Index: 0, Via: "loopuser@local.test"}}},
		{"loops as spelled, delivered elsewhere", exp("b@local.test", "other@local.test"), []Match{{Index: 0}}},
		{"deliveries given empty", NewRecipient("<loopuser@local.test>").WithDeliveries(nil), []Match{{Index: 0}}},
		{"expansion after deliveries keeps them", NewRecipient("<valias@local.test>").WithDeliveries(addrs("loopuser@local.test")).WithExpansion(addrs("loopuser@local.test"), true),
			[]Match{{Index: 0, Via: "loopuser@local.test", Whole: true}}},
		{"no loop", exp("c@local.test", "c@local.test"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Loops([]Recipient{tc.r}, msg)); diff != "" {
				t.Errorf("Loops (-want +got):\n%s", diff)
			}
			// CheckRecipients is not changed by deliveries.
			want := CheckRecipients([]Recipient{{Mailbox: tc.r.Mailbox, keys: tc.r.keys}}, msg)
			if got := CheckRecipients([]Recipient{tc.r}, msg); got != want {
				t.Errorf("CheckRecipients %+v, without deliveries %+v", got, want)
			}
		})
	}
	// Among several recipients, each is judged on its own deliveries.
	rs := []Recipient{exp("team@local.test", "loopuser@local.test", "other@local.test"), NewRecipient("<x@local.test>"), exp("valias@local.test", "loopuser@local.test")}
	want := []Match{{Index: 0, Via: "loopuser@local.test"}, {Index: 2, Via: "loopuser@local.test", Whole: true}}
	if diff := cmp.Diff(want, Loops(rs, msg)); diff != "" {
		t.Errorf("several: Loops (-want +got):\n%s", diff)
	}
}

// TestLoopsWholePostfix: under -loops=postfix the deliveries are compared
// as the recipient's keys are, exactly: a bracketed field that local(8)
// does not match leaves that copy delivered, so the recipient is not
// whole, and removing it would lose that copy.
func TestLoopsWholePostfix(t *testing.T) {
	msg := []byte(crlf("Delivered-To: a@local.test", "Delivered-To: <b@local.test>", "", "x"))
	to := addrs("a@local.test", "b@local.test")
	for _, tc := range []struct {
		postfix bool
		want    []Match
	}{
		{true, []Match{{Index: 0, Via: "a@local.test"}}},
		{false, []Match{{Index: 0, Via: "a@local.test", Whole: true}}},
	} {
		for _, order := range []string{"expansion first", "deliveries first"} {
			r := NewRecipient("<team@local.test>")
			if order == "expansion first" {
				r = r.WithExpansion(to, tc.postfix).WithDeliveries(to)
			} else {
				r = r.WithDeliveries(to).WithExpansion(to, tc.postfix)
			}
			if diff := cmp.Diff(tc.want, Loops([]Recipient{r}, msg)); diff != "" {
				t.Errorf("postfix=%v, %s: Loops (-want +got):\n%s", tc.postfix, order, diff)
			}
		}
	}
}

// TestPostfixComparison follows global/delivered_hdr.c delivered_hdr_init
// and delivered_hdr_find, as local(8) and pipe(8) flag D call them: an
// expansion given as Postfix's judgement (WithExpansion with postfix) is
// compared with the first physical line of each Delivered-To: value,
// leading white space skipped, case-folded, exactly; the same expansion
// added leniently (any mode) matches every address a value holds. Each row
// gives both verdicts; the spellings Postfix delivers were checked live
// (expand's and conformance's Postfix tests).
func TestPostfixComparison(t *testing.T) {
	long := strings.Repeat("a", postfixLineLimit-len(FieldName)-1-len("@local.test")) + "@local.test"
	for _, tc := range []struct {
		name     string
		target   string // the expansion: one address delivered by local(8)
		fields   string // the Delivered-To: lines of the section
		postfix  bool   // a loop in postfix mode (Postfix bounces)
		lenient  bool   // a loop in any mode
		viaFirst bool
	}{
		{"exact", "loopuser@local.test", "Delivered-To: loopuser@local.test", true, true, true},
		{"case folded", "loopuser@local.test", "Delivered-To: LoopUser@LOCAL.Test", true, true, true},
		{"target case folded", "LoopUser@Local.Test", "Delivered-To: loopuser@local.test", true, true, true},
		{"leading white space skipped", "loopuser@local.test", "Delivered-To:\t  loopuser@local.test", true, true, true},
		{"name case, space before the colon", "loopuser@local.test", "DELIVERED-TO : loopuser@local.test", true, true, true},
		{"angle brackets", "loopuser@local.test", "Delivered-To: <loopuser@local.test>", false, true, false},
		{"a list", "loopuser@local.test", "Delivered-To: x@y, loopuser@local.test", false, true, false},
		{"quoted local part that needs none", "loopuser@local.test", `Delivered-To: "loopuser"@local.test`, false, true, false},
		{"trailing dot", "loopuser@local.test", "Delivered-To: loopuser@LOCAL.TEST.", false, true, false},
		{"trailing space", "loopuser@local.test", "Delivered-To: loopuser@local.test ", false, true, false},
		{"comment", "loopuser@local.test", "Delivered-To: loopuser@local.test (c)", false, true, false},
		{"value on the continuation line", "loopuser@local.test", "Delivered-To:\r\n loopuser@local.test", false, true, false},
		{"continuation after the value", "loopuser@local.test", "Delivered-To: loopuser@local.test\r\n junk", true, true, true},
		{"NUL ends the C string", "loopuser@local.test", "Delivered-To: loopuser@local.test\x00junk", true, true, true},
		{"stray CR is a space", "loopuser@local.test", "Delivered-To: loopuser@local.test\rjunk", false, true, false},
		{"quoted target, quote_822_local form", "loop user@local.test", `Delivered-To: "Loop User"@local.test`, true, true, true},
		{"quoted target, unquoted value", "loop user@local.test", "Delivered-To: loop user@local.test", false, false, false},
		{"extension differs", "loopuser+a@local.test", "Delivered-To: loopuser@local.test", false, false, false},
		{"first record only", long, "Delivered-To:" + long + "junk", true, true, true},
		{"first record only, one byte short", long, "Delivered-To: " + long + "junk", false, false, false},
		{"the 1000th field counts", "loopuser@local.test",
			strings.Repeat("Delivered-To: other@local.test\r\n", postfixFieldLimit-1) + "Delivered-To: loopuser@local.test", true, true, true},
		{"the 1001st field does not", "loopuser@local.test",
			strings.Repeat("Delivered-To: loopuser@local.test \r\n", postfixFieldLimit) + "Delivered-To: loopuser@local.test", false, true, false},
	} {
		msg := []byte(crlf(received, tc.fields, "Subject: s", "", "body"))
		local, domain, _ := strings.Cut(tc.target, "@")
		exp := []address.Addr{address.FromText(local, domain)}
		spelled := NewRecipient("<valias@local.test>")
		for _, mode := range []struct {
			postfix bool
			want    bool
		}{{true, tc.postfix}, {false, tc.lenient}} {
			v := CheckRecipients([]Recipient{spelled.WithExpansion(exp, mode.postfix)}, msg)
			if v.Loop != mode.want {
				t.Errorf("%s, postfix=%v: %+v, want loop=%v", tc.name, mode.postfix, v, mode.want)
			}
			if v.Loop && v.Via != exp[0].String() {
				t.Errorf("%s, postfix=%v: via %q, want %q", tc.name, mode.postfix, v.Via, exp[0].String())
			}
		}
	}
}

// A recipient as spelled that is among its own expansion in postfix mode
// is compared exactly too, and names no detour.
func TestPostfixComparisonSpelled(t *testing.T) {
	r := NewRecipient("<LoopUser@Local.Test>").WithExpansion(addrs("loopuser@local.test"), true)
	if v := CheckRecipients([]Recipient{r}, []byte(crlf("Delivered-To: <loopuser@local.test>", "", "x"))); v.Loop {
		t.Errorf("bracketed value in postfix mode: %+v", v)
	}
	if diff := cmp.Diff(loop("LoopUser@Local.Test"), CheckRecipients([]Recipient{r}, []byte(crlf("Delivered-To: LOOPUSER@local.test", "", "x")))); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
