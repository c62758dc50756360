package conformance

// The text form of the cases (README.md, and the package comment) is read
// and written by package internal/textform, which the core's fuzz seed
// generator reads the cases with too.

import "github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"

// MaxRepeatBytes bounds what one {repeat N "s"} may produce.
const MaxRepeatBytes = textform.MaxRepeatBytes

// Escape writes b in the text form of a case file; reading it back gives
// b for every b. It is what the runner prints for received bytes.
func Escape(b []byte) string { return textform.Escape(b) }
