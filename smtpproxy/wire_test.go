package smtpproxy

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

// A whole pipelined transaction in one write gets its replies in order,
// one per command, over real sockets.
func TestPipelinedTransactionOneWrite(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.Replies["RCPT"] = "250 2.1.5 Ok\r\n"
	_, c := openSession(t, baseConfig(u))
	c.Send("EHLO front.example\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n" +
		"Subject: one\r\n\r\nbody\r\n.\r\n" +
		"MAIL FROM:<s@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nDelivered-To: b@x\r\n\r\nloop\r\n.\r\n" +
		"NOOP\r\nQUIT\r\n")
	want := []string{filteredEHLO, ok, "250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n", local354, queued,
		ok, "250 2.1.5 Ok\r\n", local354, "554 5.4.6 mail forwarding loop for b@x\r\n", ok, "221 2.0.0 Bye\r\n"}
	var got []string
	for range want {
		got = append(got, c.Reply())
	}
	c.ExpectEOF()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("replies (-want +got):\n%s", diff)
	}
	if msgs := u.Messages(); len(msgs) != 1 || msgs[0] != "Subject: one\r\n\r\nbody\r\n" {
		t.Fatalf("upstream messages %q", msgs)
	}
}

// Framing traps over real sockets, read by a Postfix-like upstream (bare
// LF ends a line): "\n.\n" is content, "X\r\r\n" and ".\rX" do not
// desynchronise, a 100 KB line passes unbroken, and a smuggled command
// after a bare-LF dot never becomes a command upstream.
func TestFramingTrapsOverTCP(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	long := strings.Repeat("L", 100_000)
	c.Send("Subject: traps\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n" +
		"X\r\r\n.\rX\r\n" + long + "\r\n..\r\n.\r\n")
	c.ExpectReply(queued)
	c.Expect("NOOP", ok)
	want := "Subject: traps\r\n\r\nline\r\n..\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n" +
		"X\r\r\n\rX\r\n" + long + "\r\n..\r\n"
	msgs := u.Messages()
	if len(msgs) != 1 || msgs[0] != want {
		t.Fatalf("upstream message differs (len %d, want %d)", len(strings.Join(msgs, "")), len(want))
	}
	wantCmds := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "NOOP"}
	if diff := cmp.Diff(wantCmds, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}
