package conformance

// The Delivered-To: variants of the real-Postfix differential test
// (TestPostfixEndToEnd, item 4). Each is sent twice: around the
// proxy (the plain front smtpd, where local(8) judges it after queueing) and
// through it (the filtered front smtpd). SPEC section 5: every variant
// local(8) bounces as a loop must be rejected by the proxy at SMTP time.

// pfVerdict is what SPEC section 5 says the proxy does with a variant.
type pfVerdict int

const (
	pfSpecLoop pfVerdict = iota // SPEC: the proxy rejects it (554 5.4.6)
	pfSpecPass                  // SPEC: the proxy passes it
)

func (v pfVerdict) String() string {
	if v == pfSpecLoop {
		return "loop"
	}
	return "pass"
}

// pfLoopRcpt is the recipient most variants forge Delivered-To: for.
const pfLoopRcpt = "loopuser@local.test"

// pfUTF8Box is a local part outside ASCII, delivered to a file by an alias.
const pfUTF8Box = "jösé"

// pfFoldBox is a local part that a UTF-8 spelling folds to (straße).
const pfFoldBox = "strasse"

// pfFoldDomain is a local domain that a UTF-8 spelling folds to (straße.test).
const pfFoldDomain = "strasse.test"

// pfAliasBox is an alias local(8) expands to loopuser (see Options.Aliases).
const pfAliasBox = "lalias"

type pfVariant struct {
	name string
	// rcpts are the RCPT TO: mailboxes (default pfLoopRcpt); one that starts
	// with "<" is sent as written, parameters included.
	rcpts []string
	// smtputf8 adds SMTPUTF8 to MAIL FROM (UTF-8 addresses).
	smtputf8 bool
	// head is the start of the message, up to and without the Subject and
	// the empty line the test appends; body is what follows the empty line.
	head, body string
	// spec is what SPEC section 5 says the proxy does with it.
	spec pfVerdict
	// rewritten, when set, says why Postfix judges a recipient the proxy
	// never sees (Postfix rewrote or expanded it after the proxy's
	// verdict). SPEC section 5 and reference/postfix.md accept that such a
	// loop is caught by local(8) only; the differential records it and does
	// not require the proxy to reject it.
	rewritten string
}

func (v pfVariant) recipients() []string {
	if len(v.rcpts) == 0 {
		return []string{pfLoopRcpt}
	}
	return v.rcpts
}

// message is the variant's message: its head, a Subject naming it, the
// empty line, its body.
func (v pfVariant) message() []byte {
	return []byte(v.head + "Subject: differential " + v.name + "\nFrom: sender@local.test\n\n" + v.body + "end of " + v.name + "\n")
}

var pfVariants = []pfVariant{
	// Spellings local(8) reads as the recipient.
	{name: "exact", head: "Delivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "value upper case", head: "Delivered-To: LOOPUSER@LOCAL.TEST\n", spec: pfSpecLoop},
	{name: "rcpt mixed case", rcpts: []string{"LoopUser@Local.Test"}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "name upper case", head: "DELIVERED-TO: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "name lower case no space", head: "delivered-to:loopuser@local.test\n", spec: pfSpecLoop},
	{name: "space before colon", head: "Delivered-To : loopuser@local.test\n", spec: pfSpecLoop},
	{name: "tab before colon", head: "Delivered-To\t: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "tab and spaces before value", head: "Delivered-To:\t   loopuser@local.test\n", spec: pfSpecLoop},
	{name: "second field matches", head: "Delivered-To: other@example.org\nDelivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "after other fields", head: "X-Mailer: test\nReceived: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\nDelivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "second recipient matches", rcpts: []string{"user@local.test", pfLoopRcpt}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "extension on both", rcpts: []string{"loopuser+ext@local.test"}, head: "Delivered-To: loopuser+ext@local.test\n", spec: pfSpecLoop},
	{name: "rcpt with NOTIFY=NEVER", rcpts: []string{"<loopuser@local.test> NOTIFY=NEVER"}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "rcpt with ORCPT", rcpts: []string{"<loopuser@local.test> ORCPT=rfc822;loopuser@local.test"}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecLoop},
	{name: "utf8 address", rcpts: []string{pfUTF8Box + "@local.test"}, smtputf8: true, head: "Delivered-To: " + pfUTF8Box + "@local.test\n", spec: pfSpecLoop},
	{name: "utf8 address upper case", rcpts: []string{pfUTF8Box + "@local.test"}, smtputf8: true, head: "Delivered-To: JÖSÉ@LOCAL.TEST\n", spec: pfSpecLoop},
	// Postfix folds addresses with full Unicode case folding: ß is ss, in
	// the local part and in the domain alike.
	{name: "sharp s in the local part", rcpts: []string{pfFoldBox + "@local.test"}, smtputf8: true, head: "Delivered-To: straße@local.test\n", spec: pfSpecLoop},
	{name: "sharp s in the domain", rcpts: []string{"loopuser@" + pfFoldDomain}, smtputf8: true, head: "Delivered-To: loopuser@straße.test\n", spec: pfSpecLoop},

	// Spellings local(8) does not read as the recipient but SPEC does.
	{name: "angle brackets", head: "Delivered-To: <loopuser@local.test>\n", spec: pfSpecLoop},
	{name: "trailing comment", head: "Delivered-To: loopuser@local.test (forwarded)\n", spec: pfSpecLoop},
	{name: "display name", head: "Delivered-To: \"Loop User\" <loopuser@local.test>\n", spec: pfSpecLoop},
	{name: "trailing space", head: "Delivered-To: loopuser@local.test \n", spec: pfSpecLoop},
	{name: "value on continuation line", head: "Delivered-To:\n loopuser@local.test\n", spec: pfSpecLoop},
	{name: "folded display name", head: "Delivered-To: \"Loop\n User\" <loopuser@local.test>\n", spec: pfSpecLoop},
	{name: "address list", head: "Delivered-To: other@example.org, loopuser@local.test\n", spec: pfSpecLoop},
	{name: "group", head: "Delivered-To: team: other@example.org, loopuser@local.test;\n", spec: pfSpecLoop},
	{name: "trailing dot on domain", head: "Delivered-To: loopuser@local.test.\n", spec: pfSpecLoop},
	{name: "quoted local part", head: "Delivered-To: \"loopuser\"@local.test\n", spec: pfSpecLoop},

	// Not loops, for either.
	{name: "other address", head: "Delivered-To: user@local.test\n", spec: pfSpecPass},
	{name: "empty value", head: "Delivered-To:\n", spec: pfSpecPass},
	{name: "extension on header only", head: "Delivered-To: loopuser+ext@local.test\n", spec: pfSpecPass},
	{name: "extension on rcpt only", rcpts: []string{"loopuser+ext@local.test"}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecPass},
	{name: "after a non-header line", head: "X-Mailer: test\nthis line is not a header field\nDelivered-To: loopuser@local.test\n", spec: pfSpecPass},
	{name: "body only", head: "X-Mailer: test\n", body: "Delivered-To: loopuser@local.test\n", spec: pfSpecPass},
	{name: "other name", head: "X-Delivered-To: loopuser@local.test\nDelivered-Too: loopuser@local.test\n", spec: pfSpecPass},

	// Loops of a recipient Postfix rewrites after the proxy's verdict. This
	// differential runs the proxy without -postfix-config; with it both are
	// refused at SMTP time (TestPostfixExpansionDifferential).
	{name: "alias expanded to looping user", rcpts: []string{pfAliasBox + "@local.test"}, head: "Delivered-To: loopuser@local.test\n", spec: pfSpecPass,
		rewritten: "local(8) expands alias " + pfAliasBox + " to loopuser@local.test and judges that address"},
	{name: "bare Postmaster", rcpts: []string{"<Postmaster>"}, head: "Delivered-To: postmaster@local.test\n", spec: pfSpecPass,
		rewritten: "trivial-rewrite appends @$myorigin to <Postmaster>; SPEC 5 lets a bare local part match only a bare local part"},
}
