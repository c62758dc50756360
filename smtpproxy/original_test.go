package smtpproxy

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

// One test per weakness of the Perl original seen on the wire
// (reference/original.md), each showing it is gone.

// Weakness 1: several matching addresses gave several 554 lines, a stray
// empty line and a closed connection.
func TestOriginalWeakness1_SeveralMatchesOneReply(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p := startProxy(t, Config{Upstream: u.Addr()}) // the real loopcheck
	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	c.StartMessage("<s@example.org>", "<a@example.net>", "<b@example.net>")
	c.Send("Delivered-To: a@example.net, b@example.net\r\nDelivered-To: b@example.net\r\nDelivered-To: A@EXAMPLE.NET\r\n\r\nx\r\n.\r\n")
	c.ExpectReply("554 5.4.6 mail forwarding loop for a@example.net\r\n")
	c.Expect("NOOP", ok) // no stray line, the session goes on
}

// Weakness 2: the upstream was dropped mid-DATA after its 354, without
// "." or RSET. Now the upstream never gets DATA for a loop; RSET clears
// its transaction and the connection ends with QUIT.
func TestOriginalWeakness2_LoopClearedWithRSET(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Delivered-To: a@x\r\n\r\nbody\r\n.\r\n")
	c.ExpectReply("554 5.4.6 mail forwarding loop for a@x\r\n")
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	u.WaitEnded(t)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "QUIT"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

// Weakness 3: when the upstream refused DATA the original still entered
// data mode, swallowing the client's next commands as content.
func TestOriginalWeakness3_RefusedDATAStaysInCommandMode(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.Replies["RCPT"] = "554 5.7.1 <a@x>: Relay access denied\r\n"
	u.Replies["DATA"] = "503 5.5.1 Error: need RCPT command\r\n"
	_, c := openSession(t, baseConfig(u))
	c.Expect("MAIL FROM:<s@x>", ok)
	c.Expect("RCPT TO:<a@x>", "554 5.7.1 <a@x>: Relay access denied\r\n")
	c.Send("DATA\r\nRSET\r\nNOOP\r\n")
	c.ExpectReply("503 5.5.1 Error: need RCPT command\r\n")
	c.ExpectReply(ok)
	c.ExpectReply(ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

// Weakness 4: a bare LF in a command line was one line to the original and
// two to the upstream: replies shifted and a RCPT escaped the check.
func TestOriginalWeakness4_BareLFInCommandLine(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	c.Expect("MAIL FROM:<s@x>", ok)
	c.Send("RCPT TO:<a@x>\nRCPT TO:<loop@x>\r\n")
	c.ExpectReply(ok)
	c.ExpectReply(ok)
	c.Expect("DATA", local354)
	c.Send("Delivered-To: loop@x\r\n\r\nbody\r\n.\r\n")
	c.ExpectReply("554 5.4.6 mail forwarding loop for loop@x\r\n")
	c.Expect("NOOP", ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RCPT TO:<loop@x>", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	if raw := u.Raw(); strings.Count(raw, "\n") != strings.Count(raw, "\r\n") {
		t.Fatalf("bare LF reached the upstream: %q", raw)
	}
}

// Weakness 5 (limits): a 20 000-byte NOOP was relayed and the header had
// no bound. The timeouts half of weakness 5 is
// TestIdleClientsDoNotBlockOthers and the synctest timeout tests.
func TestOriginalWeakness5_LineAndHeaderLimits(t *testing.T) {
	u := smtptest.StartUpstream(t)
	cfg := baseConfig(u)
	cfg.MaxHeaderBytes = 4096
	_, c := openSession(t, cfg)
	c.Expect("NOOP "+strings.Repeat("x", 20000), "500 5.5.2 line too long\r\n")
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("X-Big: " + strings.Repeat("y", 10000) + "\r\n\r\nbody\r\n.\r\n")
	c.ExpectReply("552 5.3.4 header section too large\r\n")
	c.Expect("NOOP", ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.Commands()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

// Weakness 6a: with the upstream down the client saw EOF and no 421.
func TestOriginalWeakness6_UpstreamDownGives421(t *testing.T) {
	TestUpstreamUnreachable(t)
}

// Weakness 6b: an upstream 421 was relayed, then an empty reply, then the
// worker died. Now: the 421 exactly, then a clean close.
func TestOriginalWeakness6_Upstream421ThenCleanClose(t *testing.T) {
	u := smtptest.StartUpstream(t)
	u.Hook = func(c *smtptest.Conn, cmd string) bool {
		if strings.HasPrefix(cmd, "MAIL") {
			c.Send("421 4.3.2 after.example Service shutting down\r\n")
			c.Close()
			return true
		}
		return false
	}
	_, c := openSession(t, baseConfig(u))
	c.Send("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	c.ExpectReply("421 4.3.2 after.example Service shutting down\r\n")
	c.ExpectEOF()
}

// Weakness 7a: no logging.
func TestOriginalWeakness7_Logging(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	c.Send("Delivered-To: a@x\r\n\r\n.\r\n")
	c.ExpectReply("554 5.4.6 mail forwarding loop for a@x\r\n")
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	p.stop()
	txs := logRecords(t, p.logs.String(), "transaction")
	if len(txs) != 1 || txs[0]["verdict"] != "loop" || txs[0]["sender"] != "s@x" {
		t.Fatalf("transaction log: %v\n%s", txs, p.logs.String())
	}
}

// Weakness 7b: IPv4 only. See TestListenIPv6AndUnix.
func TestOriginalWeakness7_IPv6(t *testing.T) { TestListenIPv6AndUnix(t) }

// Weakness 7c: STARTTLS and CHUNKING were advertised though the original
// could not carry them.
func TestOriginalWeakness7_NoSTARTTLSOrCHUNKINGAdvertised(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	got := c.Cmd("EHLO x")
	if got != filteredEHLO || strings.Contains(got, "STARTTLS") || strings.Contains(got, "CHUNKING") {
		t.Fatalf("EHLO reply %q", got)
	}
	c.Expect("STARTTLS", "454 4.7.0 TLS not available\r\n")
	c.Expect("BDAT 5 LAST", "502 5.5.1 BDAT not supported\r\n")
}

// Weakness 7d: the whole message was spooled before the upstream saw a
// byte. Now the body streams: the upstream has it before the final dot.
func TestOriginalWeakness7_StreamsWithoutSpooling(t *testing.T) {
	u := smtptest.StartUpstream(t)
	_, c := openSession(t, baseConfig(u))
	c.StartMessage("<s@x>", "<a@x>")
	marker := "streamed-before-the-dot"
	c.Send("Subject: s\r\n\r\n" + marker + "\r\n" + strings.Repeat("z", 200_000) + "\r\n")
	deadline := time.Now().Add(10 * time.Second) // a hang guard, not a timing assertion
	for !strings.Contains(u.Raw(), marker) {
		if time.Now().After(deadline) {
			t.Fatal("the upstream got no body before the end of data")
		}
		time.Sleep(time.Millisecond)
	}
	c.Send(".\r\n")
	c.ExpectReply(queued)
}
