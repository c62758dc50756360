// Package loopcheck decides whether a message is a mail-forwarding loop for
// its accepted envelope recipients (SPEC section 5).
//
// CONTRACT STUB: the exported API below is fixed; the bodies are being written.
package loopcheck

// Verdict is the result of Check.
type Verdict struct {
	Loop bool
	// Recipient is the first accepted recipient that matched, as the client
	// spelled it: the mailbox only, without brackets, route or parameters.
	Recipient string
}

// Check judges a header section (the message's bytes up to the end of its
// header section, dot-unstuffed, CRLF or LF line ends) against the accepted
// recipients, each given as the client sent its RCPT TO: argument (the text
// after the colon, parameters included).
func Check(rcptArgs []string, section []byte) Verdict { panic("unimplemented") }
