package smtpproxy

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// fakeExpander expands recipients from a table (local part -> addresses),
// each after delay; it records what it was asked.
type fakeExpander struct {
	table map[string][]string
	delay time.Duration

	mu    sync.Mutex
	asked []string
}

func (f *fakeExpander) expand(rcptArg string) func(context.Context) loopcheck.Recipient {
	f.mu.Lock()
	f.asked = append(f.asked, rcptArg)
	f.mu.Unlock()
	r := loopcheck.NewRecipient(rcptArg)
	ready := time.After(f.delay) // the expansion runs from now
	return func(ctx context.Context) loopcheck.Recipient {
		select {
		case <-ready:
		case <-ctx.Done():
			return r // incomplete: as spelled
		}
		var addrs []address.Addr
		for _, a := range f.table[r.Mailbox] {
			addrs = append(addrs, address.ParseList([]byte(a))...)
		}
		return r.WithExpansion(addrs, false)
	}
}

func (f *fakeExpander) askedFor() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// With Expand, a recipient is judged by its expansion: a forged
// Delivered-To: naming the mailbox an alias rewrites to is a loop for the
// alias, refused with the alias as spelled and logged with the address
// that matched. Only recipients the upstream accepted are expanded.
func TestExpansionRefusesLoopThroughAlias(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := &fakeExpander{table: map[string][]string{"valias@x": {"loopuser@x"}}, delay: time.Second}
		b := newBubble(t, Config{Expand: fx.expand})
		b.u.Hook = func(c *smtptest.Conn, cmd string) bool {
			if cmd == "RCPT TO:<refused@x>" {
				c.Send("550 5.1.1 no such user\r\n")
				return true
			}
			return false
		}
		c := b.open()
		c.Expect("MAIL FROM:<s@x>", ok)
		c.Expect("RCPT TO:<refused@x>", "550 5.1.1 no such user\r\n")
		c.Expect("RCPT TO:<valias@x>", ok)
		c.Expect("DATA", local354)
		c.Send("Delivered-To: loopuser@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
		c.ExpectReply("554 5.4.6 mail forwarding loop for valias@x\r\n")
		// Without an expansion entry the same header passes.
		c.Expect("MAIL FROM:<s@x>", ok)
		c.Expect("RCPT TO:<other@x>", ok)
		c.Expect("DATA", local354)
		c.Send("Delivered-To: loopuser@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
		c.ExpectReply(queued)
		c.Expect("QUIT", "221 2.0.0 Bye\r\n")
		c.ExpectEOF()
		b.stop()
		if got := fx.askedFor(); len(got) != 2 || got[0] != "<valias@x>" || got[1] != "<other@x>" {
			t.Errorf("expanded %q, want the two accepted recipients", got)
		}
		var loops []map[string]any
		for _, rec := range logRecords(t, b.logs.String(), "transaction") {
			if rec["verdict"] == "loop" {
				loops = append(loops, rec)
			}
		}
		if len(loops) != 1 || loops[0]["loop_recipient"] != "valias@x" || loops[0]["loop_via"] != "loopuser@x" {
			t.Errorf("loop lines %v, want one naming valias@x via loopuser@x", loops)
		}
		if msgs := b.u.Messages(); len(msgs) != 1 {
			t.Errorf("upstream messages %q, want the second one alone", msgs)
		}
	})
}

// An expansion that has not finished when the wait bound runs out leaves
// its recipient judged as spelled: the message passes after exactly the
// bound, never tempfailed.
func TestExpansionWaitBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait = 2 * time.Second
		fx := &fakeExpander{table: map[string][]string{"valias@x": {"loopuser@x"}}, delay: time.Hour}
		b := newBubble(t, Config{Expand: fx.expand, ExpansionWait: wait})
		c := b.open()
		c.StartMessage("<s@x>", "<valias@x>")
		start := time.Now()
		c.Send("Delivered-To: loopuser@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
		c.ExpectReply(queued)
		if waited := time.Since(start); waited != wait {
			t.Errorf("the verdict came after %v, want the wait bound %v", waited, wait)
		}
		c.Expect("QUIT", "221 2.0.0 Bye\r\n")
		b.stop()
	})
}

// The drain deadline ends the wait for expansions too: a session waiting
// for them is closed at the deadline (its message never acknowledged), and
// Serve returns then, however long the expansions would take.
func TestExpansionWaitEndsAtDrainDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const drain = 2 * time.Second
		fx := &fakeExpander{delay: time.Hour}
		b := newBubble(t, Config{Expand: fx.expand, ExpansionWait: time.Hour, DrainTimeout: drain})
		c := b.open()
		c.StartMessage("<s@x>", "<valias@x>")
		c.Send("Subject: s\r\n\r\nbody\r\n.\r\n")
		synctest.Wait() // the session waits for the expansion
		start := time.Now()
		b.cancel()
		c.ExpectReply("421 4.3.2 shutting down\r\n")
		c.ExpectEOF()
		b.servedWithin(start, drain)
		if n := len(b.u.Messages()); n != 0 {
			t.Errorf("the upstream took %d messages", n)
		}
	})
}

// A broken expansion (a panic when it starts, or in its wait) fails open:
// its recipient is judged as spelled, the session and the process go on,
// and the failure is logged. A loop as spelled is still refused.
func TestExpansionPanicFailsOpen(t *testing.T) {
	for _, where := range []string{"start", "wait"} {
		t.Run(where, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				expand := func(rcptArg string) func(context.Context) loopcheck.Recipient {
					if where == "start" {
						panic("broken lookup")
					}
					return func(context.Context) loopcheck.Recipient { panic("broken lookup") }
				}
				b := newBubble(t, Config{Expand: expand})
				c := b.open()
				c.StartMessage("<s@x>", "<valias@x>")
				c.Send("Delivered-To: loopuser@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
				c.ExpectReply(queued)
				c.StartMessage("<s@x>", "<valias@x>")
				c.Send("Delivered-To: valias@x\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
				c.ExpectReply("554 5.4.6 mail forwarding loop for valias@x\r\n")
				c.Expect("QUIT", "221 2.0.0 Bye\r\n")
				c.ExpectEOF()
				b.stop()
				if n := len(logRecords(t, b.logs.String(), "recipient expansion failed; the recipient is judged as spelled")); n != 2 {
					t.Errorf("%d expansion failures logged, want 2:\n%s", n, b.logs.String())
				}
			})
		})
	}
}
