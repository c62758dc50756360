package smtpproxy

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// One test per weakness of the Perl original seen on the wire
// (reference/original.md), each showing it is gone.

// Weakness 1: several matching addresses gave several 554 lines, a stray
// empty line and a closed connection.
func TestOriginalWeakness1_SeveralMatchesOneReply(t *testing.T) {
	u := newUpstream(t)
	p := startProxy(t, Config{Upstream: u.addr()}) // the real loopcheck
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@example.org>", ok)
	c.expect("RCPT TO:<a@example.net>", ok)
	c.expect("RCPT TO:<b@example.net>", ok)
	c.expect("DATA", local354)
	c.send("Delivered-To: a@example.net, b@example.net\r\nDelivered-To: b@example.net\r\nDelivered-To: A@EXAMPLE.NET\r\n\r\nx\r\n.\r\n")
	c.expectReply("554 5.4.6 mail forwarding loop for a@example.net\r\n")
	c.expect("NOOP", ok) // no stray line, the session goes on
}

// Weakness 2: the upstream was dropped mid-DATA after its 354, without
// "." or RSET. Now the upstream never gets DATA for a loop; RSET clears
// its transaction and the connection ends with QUIT.
func TestOriginalWeakness2_LoopClearedWithRSET(t *testing.T) {
	u := newUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@x>", ok)
	c.expect("RCPT TO:<a@x>", ok)
	c.expect("DATA", local354)
	c.send("Delivered-To: a@x\r\n\r\nbody\r\n.\r\n")
	c.expectReply("554 5.4.6 mail forwarding loop for a@x\r\n")
	c.expect("QUIT", "221 2.0.0 Bye\r\n")
	u.waitEnded(t)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "QUIT"}
	if diff := cmp.Diff(want, u.cmds()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

// Weakness 3: when the upstream refused DATA the original still entered
// data mode, swallowing the client's next commands as content.
func TestOriginalWeakness3_RefusedDATAStaysInCommandMode(t *testing.T) {
	u := newUpstream(t)
	u.replies["RCPT"] = "554 5.7.1 <a@x>: Relay access denied\r\n"
	u.replies["DATA"] = "503 5.5.1 Error: need RCPT command\r\n"
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@x>", ok)
	c.expect("RCPT TO:<a@x>", "554 5.7.1 <a@x>: Relay access denied\r\n")
	c.send("DATA\r\nRSET\r\nNOOP\r\n")
	c.expectReply("503 5.5.1 Error: need RCPT command\r\n")
	c.expectReply(ok)
	c.expectReply(ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.cmds()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

// Weakness 4: a bare LF in a command line was one line to the original and
// two to the upstream: replies shifted and a RCPT escaped the check.
func TestOriginalWeakness4_BareLFInCommandLine(t *testing.T) {
	u := newUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@x>", ok)
	c.send("RCPT TO:<a@x>\nRCPT TO:<loop@x>\r\n")
	c.expectReply(ok)
	c.expectReply(ok)
	c.expect("DATA", local354)
	c.send("Delivered-To: loop@x\r\n\r\nbody\r\n.\r\n")
	c.expectReply("554 5.4.6 mail forwarding loop for loop@x\r\n")
	c.expect("NOOP", ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RCPT TO:<loop@x>", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.cmds()); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	if raw := u.rawString(); strings.Count(raw, "\n") != strings.Count(raw, "\r\n") {
		t.Fatalf("bare LF reached the upstream: %q", raw)
	}
}

// Weakness 5 (limits): a 20 000-byte NOOP was relayed and the header had
// no bound. The timeouts half of weakness 5 is
// TestIdleClientsDoNotBlockOthers and the synctest timeout tests.
func TestOriginalWeakness5_LineAndHeaderLimits(t *testing.T) {
	u := newUpstream(t)
	cfg := baseConfig(u)
	cfg.MaxHeaderBytes = 4096
	p := startProxy(t, cfg)
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("NOOP "+strings.Repeat("x", 20000), "500 5.5.2 line too long\r\n")
	c.expect("MAIL FROM:<s@x>", ok)
	c.expect("RCPT TO:<a@x>", ok)
	c.expect("DATA", local354)
	c.send("X-Big: " + strings.Repeat("y", 10000) + "\r\n\r\nbody\r\n.\r\n")
	c.expectReply("552 5.3.4 header section too large\r\n")
	c.expect("NOOP", ok)
	want := []string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "NOOP"}
	if diff := cmp.Diff(want, u.cmds()); diff != "" {
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
	u := newUpstream(t)
	u.hook = func(c *upConn, cmd string) bool {
		if strings.HasPrefix(cmd, "MAIL") {
			c.send("421 4.3.2 after.example Service shutting down\r\n")
			c.Close()
			return true
		}
		return false
	}
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.send("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	c.expectReply("421 4.3.2 after.example Service shutting down\r\n")
	c.expectEOF()
}

// Weakness 7a: no logging.
func TestOriginalWeakness7_Logging(t *testing.T) {
	u := newUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@x>", ok)
	c.expect("RCPT TO:<a@x>", ok)
	c.expect("DATA", local354)
	c.send("Delivered-To: a@x\r\n\r\n.\r\n")
	c.expectReply("554 5.4.6 mail forwarding loop for a@x\r\n")
	c.expect("QUIT", "221 2.0.0 Bye\r\n")
	c.expectEOF()
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
	u := newUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	got := c.cmd("EHLO x")
	if got != filteredEHLO || strings.Contains(got, "STARTTLS") || strings.Contains(got, "CHUNKING") {
		t.Fatalf("EHLO reply %q", got)
	}
	c.expect("STARTTLS", "454 4.7.0 TLS not available\r\n")
	c.expect("BDAT 5 LAST", "502 5.5.1 BDAT not supported\r\n")
}

// Weakness 7d: the whole message was spooled before the upstream saw a
// byte. Now the body streams: the upstream has it before the final dot.
func TestOriginalWeakness7_StreamsWithoutSpooling(t *testing.T) {
	u := newUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.expectReply(greeting)
	c.expect("MAIL FROM:<s@x>", ok)
	c.expect("RCPT TO:<a@x>", ok)
	c.expect("DATA", local354)
	marker := "streamed-before-the-dot"
	c.send("Subject: s\r\n\r\n" + marker + "\r\n" + strings.Repeat("z", 200_000) + "\r\n")
	deadline := time.Now().Add(10 * time.Second) // a hang guard, not a timing assertion
	for !strings.Contains(u.rawString(), marker) {
		if time.Now().After(deadline) {
			t.Fatal("the upstream got no body before the end of data")
		}
		time.Sleep(time.Millisecond)
	}
	c.send(".\r\n")
	c.expectReply(queued)
}
