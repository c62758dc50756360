package smtptest

import (
	"net"
	"slices"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// The default script answers a whole session as Postfix's smtpd would,
// and records what it read.
func TestUpstreamDefaultScript(t *testing.T) {
	u := NewUpstream(t)
	a, z := net.Pipe()
	u.ServeConn(z)
	c := NewClient(t, a)
	c.ExpectReply(Greeting)
	c.Expect("EHLO front.example", EHLOReply)
	c.StartMessage("<s@x>", "<a@x>", "<b@x>")
	c.Send("Subject: s\r\n\r\n..dot\r\n.\r\n")
	c.ExpectReply(Queued)
	c.Expect("QUIT", Bye)
	c.ExpectEOF()
	u.WaitEnded(t)
	if want := []string{"EHLO front.example", "MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RCPT TO:<b@x>", "DATA", "QUIT"}; !slices.Equal(u.Commands(), want) {
		t.Errorf("commands %q, want %q", u.Commands(), want)
	}
	if want := []string{"Subject: s\r\n\r\n..dot\r\n"}; !slices.Equal(u.Messages(), want) {
		t.Errorf("messages %q, want %q", u.Messages(), want)
	}
	if c.Received() == 0 || len(u.Raw()) == 0 {
		t.Errorf("received %d octets, upstream read %d", c.Received(), len(u.Raw()))
	}
}

// A hook answers in place of the script.
func TestUpstreamHook(t *testing.T) {
	u := NewUpstream(t)
	u.Hook = func(c *Conn, cmd string) bool {
		if cmd == "NOOP" {
			c.Send("421 4.3.0 bye\r\n")
			c.Close()
			return true
		}
		return false
	}
	a, z := net.Pipe()
	u.ServeConn(z)
	c := NewClient(t, a)
	c.ExpectReply(Greeting)
	c.Expect("RSET", OK)
	c.Expect("NOOP", "421 4.3.0 bye\r\n")
	c.ExpectEOF()
}

func TestCheckDeliveredTo(t *testing.T) {
	for _, c := range []struct {
		rcpts   []string
		section string
		want    loopcheck.Verdict
	}{
		{[]string{"<a@x> NOTIFY=NEVER"}, "Subject: s\r\nDelivered-To: A@X\r\n", loopcheck.Verdict{Loop: true, Recipient: "a@x"}},
		{[]string{"<b@x>", "<a@x>"}, "delivered-to : a@x\r\n", loopcheck.Verdict{Loop: true, Recipient: "a@x"}},
		{[]string{"<a@x>"}, "Delivered-To: other@x\r\nX-Delivered-To: a@x\r\n", loopcheck.Verdict{}},
	} {
		if got := CheckDeliveredTo(c.rcpts, []byte(c.section)); got != c.want {
			t.Errorf("CheckDeliveredTo(%q, %q) = %+v, want %+v", c.rcpts, c.section, got, c.want)
		}
	}
}
