package smtpproxy

import (
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"

	"fmt"
	"strings"
	"testing"
)

// A transaction line lists at most maxLoggedRecipients recipients, then
// their number, so that one line stays whole however many there are; a
// transaction within the bound carries no count.
func TestTransactionLineBoundsRecipients(t *testing.T) {
	u := smtptest.StartUpstream(t)
	p := startProxy(t, baseConfig(u))
	c := dialClient(t, p.addr)
	c.ExpectReply(greeting)
	total := maxLoggedRecipients + 50
	var cmds strings.Builder
	cmds.WriteString("MAIL FROM:<s@example.org>\r\n")
	for i := range total {
		fmt.Fprintf(&cmds, "RCPT TO:<r%d@example.net>\r\n", i)
	}
	c.Send(cmds.String()) // pipelined
	for range total + 1 {
		c.ExpectReply(ok)
	}
	c.Expect("DATA", local354)
	c.Expect("Subject: many\r\n\r\nbody\r\n.", queued)
	c.Expect("MAIL FROM:<s@example.org>", ok)
	c.Expect("RCPT TO:<one@example.net>", ok)
	c.Expect("DATA", local354)
	c.Expect("Subject: one\r\n\r\nbody\r\n.", queued)
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	c.ExpectEOF()
	p.stop()
	txs := logRecords(t, p.logs.String(), "transaction")
	if len(txs) != 2 {
		t.Fatalf("%d transaction lines", len(txs))
	}
	listed := anyStrings(txs[0]["recipients"])
	if len(listed) != maxLoggedRecipients || listed[0] != "r0@example.net" || listed[len(listed)-1] != fmt.Sprintf("r%d@example.net", maxLoggedRecipients-1) {
		t.Errorf("listed %d recipients (%q ... %q), want the first %d", len(listed), listed[0], listed[len(listed)-1], maxLoggedRecipients)
	}
	if n, ok := txs[0]["recipients_total"].(float64); !ok || int(n) != total {
		t.Errorf("recipients_total = %v, want %d", txs[0]["recipients_total"], total)
	}
	if _, ok := txs[1]["recipients_total"]; ok {
		t.Errorf("a one-recipient line has a count: %v", txs[1])
	}
}
