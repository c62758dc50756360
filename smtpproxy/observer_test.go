package smtpproxy

import (
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy/core"
)

// recordingObserver keeps every call, in order.
type recordingObserver struct {
	mu                            sync.Mutex
	started, ended, refuse, peers int
	txs                           []observedTx
	failures                      []core.UpstreamFailure
	shortages                     []ResourceOp
	headerMemory                  int64
	replies                       []observedReply
	toUp, toClient                int
}

type observedTx struct {
	Verdict  string
	Size     int64
	Duration time.Duration
}

type observedReply struct {
	Latency time.Duration
	InData  bool
}

func (o *recordingObserver) SessionStarted() { o.mu.Lock(); o.started++; o.mu.Unlock() }
func (o *recordingObserver) SessionEnded()   { o.mu.Lock(); o.ended++; o.mu.Unlock() }
func (o *recordingObserver) SessionRefused() { o.mu.Lock(); o.refuse++; o.mu.Unlock() }
func (o *recordingObserver) PeerRefused()    { o.mu.Lock(); o.peers++; o.mu.Unlock() }
func (o *recordingObserver) HeaderMemory(delta int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.headerMemory += delta
}
func (o *recordingObserver) ResourceShortage(op ResourceOp) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.shortages = append(o.shortages, op)
}
func (o *recordingObserver) TransactionEnded(tx *core.Transaction, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.txs = append(o.txs, observedTx{tx.Outcome.String(), tx.Size, d})
}
func (o *recordingObserver) UpstreamFailed(kind core.UpstreamFailure) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failures = append(o.failures, kind)
}
func (o *recordingObserver) UpstreamReplied(d time.Duration, inData bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.replies = append(o.replies, observedReply{d, inData})
}
func (o *recordingObserver) Relayed(toUpstream, toClient int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.toUp += toUpstream
	o.toClient += toClient
}

// The runtime tells its Observer what happened, with durations measured
// on its own clock (fake time here, so they are exact): the upstream
// takes 2 s over MAIL and 5 s over the end of data.
func TestObserverSeesSessionsTransactionsAndLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		obs := &recordingObserver{}
		b := newBubble(t, Config{Observer: obs})
		b.u.Hook = func(c *smtptest.Conn, cmd string) bool {
			switch {
			case strings.HasPrefix(cmd, "MAIL"):
				time.Sleep(2 * time.Second)
			case cmd == "DATA":
				c.Send(local354)
				if c.ReadData() {
					time.Sleep(5 * time.Second) // writing the queue file
					c.Send(queued)
				}
				return true
			}
			return false
		}
		c := b.dial()
		var toClient int
		expect := func(line, want string) {
			c.Expect(line, want)
			toClient += len(want)
		}
		c.ExpectReply(greeting)
		toClient += len(greeting)
		expect("MAIL FROM:<s@x>", ok)
		expect("RCPT TO:<a@x>", ok)
		expect("DATA", local354)
		msg := "Subject: s\r\n\r\nbody\r\n"
		expect(msg+".", queued)
		expect("MAIL FROM:<s@x>", ok)
		expect("RCPT TO:<a@x>", ok)
		expect("DATA", local354)
		expect("Delivered-To: a@x\r\n\r\nloop\r\n.", "554 5.4.6 mail forwarding loop for a@x\r\n")
		expect("QUIT", "221 2.0.0 Bye\r\n")
		c.ExpectEOF()
		b.u.WaitEnded(t)
		b.stop()

		obs.mu.Lock()
		defer obs.mu.Unlock()
		if obs.started != 1 || obs.ended != 1 || obs.refuse != 0 || len(obs.failures) != 0 {
			t.Fatalf("sessions %d started, %d ended, %d refused; failures %v", obs.started, obs.ended, obs.refuse, obs.failures)
		}
		wantTx := []observedTx{
			{"pass", int64(len(msg)), 5 * time.Second},
			{"loop", int64(len("Delivered-To: a@x\r\n\r\nloop\r\n")), 0},
		}
		if diff := cmp.Diff(wantTx, obs.txs); diff != "" {
			t.Errorf("transactions (-want +got):\n%s", diff)
		}
		// Greeting, MAIL (2 s), RCPT, DATA's 354 and the end of data (5 s)
		// of the message; MAIL, RCPT, then the RSET after the loop and
		// QUIT.
		wantReplies := []observedReply{
			{0, false}, {2 * time.Second, false}, {0, false}, {0, true}, {5 * time.Second, true},
			{2 * time.Second, false}, {0, false}, {0, false}, {0, false},
		}
		if diff := cmp.Diff(wantReplies, obs.replies); diff != "" {
			t.Errorf("upstream reply latencies (-want +got):\n%s", diff)
		}
		if obs.toClient != toClient || obs.toUp != len(b.u.Raw()) {
			t.Errorf("relayed %d octets to the client, %d upstream; want %d and %d", obs.toClient, obs.toUp, toClient, len(b.u.Raw()))
		}
	})
}

// Upstream failures and refused connections reach the Observer too.
func TestObserverSeesFailuresAndRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		obs := &recordingObserver{}
		b := newBubble(t, Config{Observer: obs, MaxSessions: 1})
		b.u.DataHook = func(c *smtptest.Conn, line string) bool {
			c.Close()
			return true
		}
		c := b.open()
		over := b.dial()
		over.ExpectReply("421 4.3.2 too many connections\r\n")
		c.StartMessage("<s@x>", "<a@x>")
		c.Expect("Subject: s\r\n\r\nbody\r\n.", "451 4.4.2 upstream up.test:10026 closed the connection\r\n")
		c.Expect("NOOP", "421 4.4.2 upstream up.test:10026 closed the connection\r\n")
		b.stop()

		obs.mu.Lock()
		defer obs.mu.Unlock()
		if obs.started != 1 || obs.ended != 1 || obs.refuse != 1 {
			t.Fatalf("sessions %d started, %d ended, %d refused", obs.started, obs.ended, obs.refuse)
		}
		if diff := cmp.Diff([]core.UpstreamFailure{core.FailClosed}, obs.failures); diff != "" {
			t.Errorf("upstream failures (-want +got):\n%s", diff)
		}
		if len(obs.txs) != 1 || obs.txs[0].Verdict != "upstream-failed" {
			t.Errorf("transactions %+v, want one upstream-failed", obs.txs)
		}
	})
}
