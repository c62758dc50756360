package core

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

const (
	ehloFiltered = "250-up.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"
	ok           = "250 2.0.0 Ok\r\n"
	queued       = "250 2.0.0 Ok: queued as ABC123\r\n"
	local354     = "354 End data with <CR><LF>.<CR><LF>\r\n"
)

func loopCfg() Config { return Config{Check: smtptest.CheckDeliveredTo} }

func TestGreetingRelayedVerbatim(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.up.greeting = "220-up.example first\r\n220 second line\r\n"
	h.connect()
	h.expect("220-up.example first\r\n220 second line\r\n")
	if !h.s.WantsClientInput() {
		t.Fatal("after the greeting the session must read commands")
	}
}

func TestNoClientInputBeforeGreeting(t *testing.T) {
	h := newHarness(t, loopCfg())
	if h.s.WantsClientInput() {
		t.Fatal("wants client input before the upstream is connected")
	}
	h.s.HandleUpstreamConnected()
	if h.s.WantsClientInput() {
		t.Fatal("wants client input before the greeting")
	}
}

// A passing message reaches the upstream byte for byte: for canonical
// input the upstream receives exactly what the client sent (SPEC 2.6).
func TestPassingMessageByteForByte(t *testing.T) {
	h := openHarness(t)
	client := []string{
		"EHLO client.example\r\n",
		"MAIL FROM:<s@example.org> SIZE=100\r\n",
		"RCPT TO:<r@example.net> NOTIFY=NEVER\r\n",
		"DATA\r\n",
		"Received: from x\r\n\tby y\r\nDelivered-To: other@example.net\r\nSubject: hi\r\n\r\nbody\r\n..dotted\r\n\r\n.\r\n",
		"QUIT\r\n",
	}
	replies := []string{ehloFiltered, ok, ok, local354, queued, "221 2.0.0 Bye\r\n"}
	for i, c := range client {
		h.fromClient(c)
		h.expect(replies[i])
	}
	if got, want := h.up.raw.String(), strings.Join(client, ""); got != want {
		t.Fatalf("upstream received\n%q\nwant\n%q", got, want)
	}
	if !h.s.Done() {
		t.Fatal("session not over after QUIT")
	}
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomePass || txs[0].UpstreamReply != strings.TrimSuffix(queued, "\r\n") ||
		txs[0].Sender != "<s@example.org> SIZE=100" || !slices.Equal(txs[0].Recipients, []string{"<r@example.net> NOTIFY=NEVER"}) {
		t.Fatalf("transaction events: %+v", txs)
	}
}

// A loop message leaves the upstream with MAIL, RCPT, RSET: no DATA, no
// content byte; the client gets one 554 line; the session goes on.
func TestLoopMessageNeverReachesUpstream(t *testing.T) {
	h := openHarness(t)
	h.fromClient("MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
	h.expect(ok + ok + local354)
	h.fromClient("Delivered-To: r@example.net\r\nSubject: loop\r\n\r\nsecret body\r\n")
	h.expect("")
	h.fromClient(".\r\n")
	h.expect("554 5.4.6 mail forwarding loop for r@example.net\r\n")
	if diff := cmp.Diff([]string{"MAIL FROM:<s@example.org>", "RCPT TO:<r@example.net>", "RSET"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	if strings.Contains(h.up.raw.String(), "secret") || strings.Contains(h.up.raw.String(), "DATA") {
		t.Fatalf("upstream saw the message: %q", h.up.raw.String())
	}
	// The session goes on and the next message passes.
	h.fromClient("MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\nSubject: fine\r\n\r\nok\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	if len(h.up.messages) != 1 || h.up.messages[0] != "Subject: fine\r\n\r\nok\r\n" {
		t.Fatalf("upstream messages: %q", h.up.messages)
	}
	txs := h.txEvents()
	if len(txs) != 2 || txs[0].Outcome != OutcomeLoop || txs[0].LoopRecipient != "r@example.net" || txs[1].Outcome != OutcomePass {
		t.Fatalf("transactions: %+v", txs)
	}
}

// With the real verdict, two matching recipients and two matching fields
// still give exactly one 554 line.
func TestTwoMatchesOneReply(t *testing.T) {
	h := newHarness(t, Config{}).connect() // nil Check: loopcheck.Check
	h.got()
	h.fromClient("MAIL FROM:<>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<B@Example.NET>\r\nDATA\r\n" +
		"Delivered-To: a@example.net\r\nDelivered-To: b@example.net\r\n\r\nx\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + ok + local354 + "554 5.4.6 mail forwarding loop for a@example.net\r\n" + ok)
}

func TestDryRunPassesLoop(t *testing.T) {
	cfg := loopCfg()
	cfg.DryRun = true
	h := newHarness(t, cfg).connect()
	h.got()
	h.fromClient("MAIL FROM:<>\r\nRCPT TO:<r@x>\r\nDATA\r\nDelivered-To: r@x\r\n\r\nb\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomeDryRunLoop || txs[0].LoopRecipient != "r@x" {
		t.Fatalf("transactions: %+v", txs)
	}
}

// A whole pipelined transaction in one write gets its replies in order,
// one per command, and the upstream gets one command at a time.
func TestPipelinedTransactionInOneWrite(t *testing.T) {
	h := openHarness(t)
	h.up.replies["RCPT"] = "550 5.1.1 <bad@x>: Recipient address rejected\r\n"
	// The refused RCPT must not count; but a second accepted one does.
	in := "EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<bad@x>\r\nNOOP\r\nRSET\r\nQUIT\r\n"
	h.fromClient(in)
	h.expect(ehloFiltered + ok + "550 5.1.1 <bad@x>: Recipient address rejected\r\n" + ok + ok + "221 2.0.0 Bye\r\n")
	if len(h.up.commands) != 6 {
		t.Fatalf("upstream commands: %q", h.up.commands)
	}
	// The whole message transaction pipelined in one write.
	h2 := newHarness(t, loopCfg()).connect()
	h2.got()
	h2.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nDelivered-To: a@x\r\n\r\n.\r\nQUIT\r\n")
	h2.expect(ok + ok + ok + local354 + queued + ok + ok + local354 + "554 5.4.6 mail forwarding loop for a@x\r\n" + "221 2.0.0 Bye\r\n")
}

func TestBackpressureOneCommandAtATime(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.s.HandleUpstreamConnected()
	h.s.HandleUpstreamData([]byte("220 hi\r\n"))
	h.s.TakeClientOutput()
	in := []byte("NOOP\r\nNOOP\r\nNOOP\r\n")
	n := h.s.HandleClientData(in)
	if n != 6 {
		t.Fatalf("consumed %d bytes of a pipelined batch, want only the first command (6)", n)
	}
	if h.s.WantsClientInput() {
		t.Fatal("wants more input while a reply is outstanding")
	}
	if up := string(h.s.TakeUpstreamOutput()); up != "NOOP\r\n" {
		t.Fatalf("upstream got %q", up)
	}
	h.s.HandleUpstreamData([]byte(ok))
	if !h.s.WantsClientInput() {
		t.Fatal("does not want input after the reply")
	}
}

func TestStreamBackpressureBoundsOutput(t *testing.T) {
	h := newHarness(t, loopCfg()).connect()
	h.fromClient("MAIL FROM:<>\r\nRCPT TO:<a@x>\r\nDATA\r\nSubject: s\r\n\r\n")
	h.fromClient("x") // the body starts: header judged, DATA sent, 354 taken
	h.got()
	if h.s.st != stStream {
		t.Fatalf("state %d, want streaming", h.s.st)
	}
	// A big chunk of bare LFs doubles when framed; the session stops
	// taking input when its output buffer is full.
	big := []byte(strings.Repeat("\n", 1<<20))
	n := h.s.HandleClientData(big)
	out := h.s.TakeUpstreamOutput()
	if n >= len(big) || len(out) > maxStreamOutput+2 {
		t.Fatalf("consumed %d of %d, output %d bytes: no backpressure", n, len(big), len(out))
	}
}

func TestEHLOFilterAndXFORWARD(t *testing.T) {
	h := openHarness(t)
	h.fromClient("EHLO front.example\r\n")
	h.expect(ehloFiltered)
	h.fromClient("XFORWARD NAME=client.example ADDR=192.0.2.7 PORT=54268 HELO=c+2Bx IDENT=[UNAVAILABLE]\r\n")
	h.expect(ok)
	if last := h.up.commands[len(h.up.commands)-1]; last != "XFORWARD NAME=client.example ADDR=192.0.2.7 PORT=54268 HELO=c+2Bx IDENT=[UNAVAILABLE]" {
		t.Fatalf("XFORWARD forwarded as %q", last)
	}
	h.fromClient("MAIL FROM:<>\r\nRCPT TO:<a@x>\r\nDATA\r\n\r\n.\r\n")
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].ClientAddr != "192.0.2.7" || txs[0].ClientName != "client.example" {
		t.Fatalf("transactions: %+v", txs)
	}
	// HELO's reply is not filtered (it has no keywords), EHLO with extra
	// keywords dropped by configuration.
	cfg := loopCfg()
	cfg.DropEHLOKeywords = []string{"pipelining", "XFORWARD"}
	h2 := newHarness(t, cfg).connect()
	h2.got()
	h2.fromClient("ehlo x\r\n")
	h2.expect("250-up.example\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
}

func TestLocalAnswers(t *testing.T) {
	h := openHarness(t)
	h.fromClient("STARTTLS\r\nstarttls\r\nBDAT 10 LAST\r\nNOOP\r\n")
	h.expect("454 4.7.0 TLS not available\r\n454 4.7.0 TLS not available\r\n502 5.5.1 BDAT not supported\r\n" + ok)
	if diff := cmp.Diff([]string{"NOOP"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
}

func TestRefusedCommandLines(t *testing.T) {
	h := openHarness(t)
	h.fromClient("NOOP " + strings.Repeat("x", 20000) + "\r\n")
	h.fromClient("NO\x00OP\r\n")
	h.fromClient("RCPT TO:<a@x>\rRCPT TO:<b@x>\r\n")
	h.fromClient("NOOP " + strings.Repeat("y", MaxCommandLine-5) + "\r\n") // exactly at the limit: fine
	h.expect("500 5.5.2 line too long\r\n500 5.5.2 NUL in command\r\n500 5.5.2 bare CR in command\r\n" + ok)
	if len(h.up.commands) != 1 || len(h.up.commands[0]) != MaxCommandLine {
		t.Fatalf("upstream commands: %d", len(h.up.commands))
	}
}

// A bare LF ends a command line for the proxy as for the upstream, so
// both count the same commands (the original's weakness 4).
func TestBareLFInCommands(t *testing.T) {
	h := openHarness(t)
	h.fromClient("MAIL FROM:<s@x>\nRCPT TO:<a@x>\nDATA\nDelivered-To: a@x\r\n\r\n.\r\n")
	h.expect(ok + ok + local354 + "554 5.4.6 mail forwarding loop for a@x\r\n")
	if diff := cmp.Diff([]string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	if strings.Contains(h.up.raw.String(), "\n") && strings.Count(h.up.raw.String(), "\n") != strings.Count(h.up.raw.String(), "\r\n") {
		t.Fatalf("bare LF upstream: %q", h.up.raw.String())
	}
}

func sendMessage(h *harness, data string) {
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n" + data)
}

// "\n.\n" inside DATA ends the data neither for the proxy nor for the
// upstream; it goes upstream as the content line "." stuffed.
func TestBareLFDotInData(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	want := "Subject: s\r\n\r\nline\r\n..\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\n"
	if len(h.up.messages) != 1 || h.up.messages[0] != want {
		t.Fatalf("upstream message %q, want %q", h.up.messages, want)
	}
	if slices.Contains(h.up.commands, "MAIL FROM:<evil@x>") {
		t.Fatal("smuggled command reached the upstream as a command")
	}
	// Also "\r\n.\n" (dot with bare LF after a CRLF line).
	h.got()
	sendMessage(h, "Subject: s\r\n\r\nline\r\n.\nmore\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	if got := h.up.messages[1]; got != "Subject: s\r\n\r\nline\r\n..\r\nmore\r\n" {
		t.Fatalf("upstream message %q", got)
	}
}

func TestLongContentLineUnbroken(t *testing.T) {
	h := openHarness(t)
	long := strings.Repeat("0123456789", 10_000) // 100 KB, no line end
	sendMessage(h, "Subject: s\r\n\r\n"+long[:30000])
	h.fromClient(long[30000:] + "\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	if want := "Subject: s\r\n\r\n" + long + "\r\n"; h.up.messages[0] != want {
		t.Fatalf("long line changed: got %d bytes, want %d", len(h.up.messages[0]), len(want))
	}
	// A 100 KB header line (a field) is captured whole and passes too.
	sendMessage(h, "X-Long: "+long+"\r\n\r\nb\r\n.\r\n")
	if want := "X-Long: " + long + "\r\n\r\nb\r\n"; h.up.messages[1] != want {
		t.Fatalf("long header line changed")
	}
}

// "X\r\r\n" and ".\rX" do not desynchronise: the message and the commands
// after it are where the client put them.
func TestCRCornerCasesInData(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\nX\r\r\n.\rX\r\n.\r\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + local354 + queued + ok)
	if want := "Subject: s\r\n\r\nX\r\r\n\rX\r\n\r\r\n"; h.up.messages[0] != want {
		t.Fatalf("upstream message %q, want %q", h.up.messages[0], want)
	}
	if last := h.up.commands[len(h.up.commands)-1]; last != "NOOP" {
		t.Fatalf("last upstream command %q", last)
	}
}

func TestHeaderWithLeadingDotStuffedUpstream(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "..odd: header\r\n\r\n..body\r\n.\r\n")
	h.expect(ok + ok + local354 + queued)
	if want := "..odd: header\r\n\r\n..body\r\n"; h.up.messages[0] != want {
		t.Fatalf("upstream message %q, want %q", h.up.messages[0], want)
	}
}

func TestHeaderTooLarge(t *testing.T) {
	cfg := loopCfg()
	cfg.MaxHeaderBytes = 100
	h := newHarness(t, cfg).connect()
	h.got()
	sendMessage(h, "Subject: "+strings.Repeat("x", 200)+"\r\n\r\nbody\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + local354 + "552 5.3.4 header section too large\r\n" + ok)
	if diff := cmp.Diff([]string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "NOOP"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	// The log shows the limit crossed, not what happened to be buffered
	// before the crossing piece (here: nothing, one long first line).
	if txs := h.txEvents(); len(txs) != 1 || txs[0].Outcome != OutcomeHeaderTooLarge || txs[0].HeaderBytes <= cfg.MaxHeaderBytes {
		t.Fatalf("transactions: %+v, want one header-too-large with more than %d header bytes", txs, cfg.MaxHeaderBytes)
	}
	// A header at the limit passes, and a long first body line does not
	// count against it.
	sendMessage(h, "Subject: "+strings.Repeat("x", 89)+"\r\n\r\n"+strings.Repeat("b", 10000)+"\r\n.\r\n")
	h.got()
	if len(h.up.messages) != 1 {
		t.Fatalf("header at the limit refused")
	}
	sendMessage(h, "Subject: x\r\nthis line ends the header "+strings.Repeat("b", 10000)+"\r\n.\r\n")
	if len(h.up.messages) != 2 {
		t.Fatalf("a long non-header line counted as header: %q", h.got())
	}
}

func TestUpstreamRefusesDATA(t *testing.T) {
	h := openHarness(t)
	h.up.replies["DATA"] = "554 5.5.1 Error: no valid recipients\r\n"
	sendMessage(h, "Subject: s\r\n\r\nMAIL FROM:<evil@x>\r\nmore\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + local354 + "554 5.5.1 Error: no valid recipients\r\n" + ok)
	if diff := cmp.Diff([]string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "RSET", "NOOP"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomeUpstreamRefused {
		t.Fatalf("transactions: %+v", txs)
	}
}

// With no accepted recipient DATA is forwarded; a refusal keeps the
// session in command mode (the original's weakness 3).
func TestDATAWithoutRecipients(t *testing.T) {
	h := openHarness(t)
	h.up.replies["RCPT"] = "550 5.1.1 no\r\n"
	h.up.replies["DATA"] = "503 5.5.1 Error: need RCPT command\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nNOOP\r\n")
	h.expect(ok + "550 5.1.1 no\r\n" + "503 5.5.1 Error: need RCPT command\r\n" + ok)
	if diff := cmp.Diff([]string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "DATA", "NOOP"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	// An upstream that says 354 anyway gets the message, framed.
	h.up.replies["DATA"] = "354 go ahead\r\n"
	// The "." after a bare LF is content, not the end of data.
	h.fromClient("DATA\r\nSubject: s\r\n\r\n..x\n.\r\n.\r\n")
	h.expect("354 go ahead\r\n" + queued)
	if want := "Subject: s\r\n\r\n..x\r\n..\r\n"; len(h.up.messages) != 1 || h.up.messages[0] != want {
		t.Fatalf("messages %q", h.up.messages)
	}
}

// DATA with arguments is forwarded; should an upstream answer 354 to it,
// the message is still judged, and a loop never reaches it.
func TestForwarded354IsStillJudged(t *testing.T) {
	h := openHarness(t)
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA x\r\n")
	h.expect(ok + ok + local354) // the fake upstream says 354 to any DATA
	h.fromClient("Delivered-To: a@x\r\n\r\nsecret\r\n.\r\nNOOP\r\n")
	h.expect("554 5.4.6 mail forwarding loop for a@x\r\n421 4.4.2 upstream 127.0.0.1:10026 closed by the proxy to abort a rejected message\r\n")
	if strings.Contains(h.up.raw.String(), "secret") || strings.Contains(h.up.raw.String(), "Delivered-To") {
		t.Fatalf("loop content reached the upstream: %q", h.up.raw.String())
	}
	if !h.upGone || !h.s.Done() {
		t.Fatal("upstream not closed")
	}
}

func TestSASLContinuationRelayedRaw(t *testing.T) {
	h := openHarness(t)
	h.up.replies["AUTH"] = "334 VXNlcm5hbWU6\r\n"
	h.up.replies["DGVZDA=="] = "334 UGFzc3dvcmQ6\r\n"
	h.up.replies["BDAT"] = "235 2.7.0 Authentication successful\r\n"
	h.fromClient("AUTH LOGIN\r\ndGVzdA==\r\nBDAT\r\nBDAT\r\n")
	// "dGVzdA==" is a continuation, relayed; the second 334 makes "BDAT" a
	// continuation too, so it reaches the upstream, not answered locally;
	// after the 235 the next BDAT is a command again.
	h.expect("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n502 5.5.1 BDAT not supported\r\n")
	if diff := cmp.Diff([]string{"AUTH LOGIN", "dGVzdA==", "BDAT"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	// A continuation line with a bare CR becomes the SASL cancel "*".
	h.fromClient("AUTH PLAIN\r\nab\rcd\r\n")
	if last := h.up.commands[len(h.up.commands)-1]; last != "*" {
		t.Fatalf("bad continuation forwarded as %q", last)
	}
	// A long continuation line (over the command limit, under the SASL
	// one) is relayed whole.
	long := strings.Repeat("A", 5000)
	h.fromClient("AUTH PLAIN\r\n" + long + "\r\n")
	if last := h.up.commands[len(h.up.commands)-1]; last != long {
		t.Fatalf("long continuation not relayed whole")
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.s.HandleUpstreamConnectFailed("connection refused")
	h.flush()
	h.expect("421 4.4.1 upstream 127.0.0.1:10026 unreachable: connection refused\r\n")
	if !h.s.Done() {
		t.Fatal("not done")
	}
}

// A local shortage (the proxy out of file descriptors for the upstream
// connection) is the proxy's own fault: 421 4.3.2 naming it, no upstream
// error reported.
func TestLocalResourcesExhausted(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.s.HandleLocalResourcesExhausted("too many open files")
	h.flush()
	h.expect("421 4.3.2 proxy out of resources (too many open files), try again later\r\n")
	if !h.s.Done() || !h.s.UpstreamGone() || h.s.EndReason() != "out of local resources" {
		t.Fatalf("done %v, upstream gone %v, end reason %q", h.s.Done(), h.s.UpstreamGone(), h.s.EndReason())
	}
	for _, e := range h.events {
		if e.Kind == EventUpstreamError {
			t.Errorf("an upstream error was reported: %+v", e)
		}
	}
	// Once connected it changes nothing.
	h2 := newHarness(t, loopCfg()).connect()
	h2.expect("220 up.example ESMTP\r\n")
	h2.s.HandleLocalResourcesExhausted("too many open files")
	h2.flush()
	if h2.got() != "" || h2.s.Done() {
		t.Fatalf("a late shortage changed the session: %q, done %v", h2.got(), h2.s.Done())
	}
}

func TestUpstreamFailsBeforeGreeting(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.s.HandleUpstreamConnected()
	h.s.HandleUpstreamClosed(EndClosed)
	h.flush()
	h.expect("421 4.4.1 upstream 127.0.0.1:10026 closed the connection before its greeting\r\n")
	h2 := newHarness(t, loopCfg())
	h2.s.HandleUpstreamConnected()
	if !h2.s.PollTimers().Upstream {
		t.Fatal("no upstream timer while waiting for the greeting")
	}
	h2.s.HandleTimeout(TimerUpstreamReply)
	h2.flush()
	h2.expect("421 4.4.1 upstream 127.0.0.1:10026 timed out before its greeting\r\n")
}

func TestUpstreamGreeting421(t *testing.T) {
	h := newHarness(t, loopCfg())
	h.up.greeting = "421 4.3.2 Service shutting down\r\n"
	h.connect()
	h.expect("421 4.3.2 Service shutting down\r\n")
	if !h.s.Done() {
		t.Fatal("not done after a 421 greeting")
	}
}

func TestUpstreamClosesDuringCommand(t *testing.T) {
	h := openHarness(t)
	h.up.silent = true
	h.fromClient("MAIL FROM:<s@x>\r\n")
	h.s.HandleUpstreamClosed(EndClosed)
	h.flush()
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 closed the connection\r\n")
	if !h.s.Done() {
		t.Fatal("not done")
	}
}

func TestUpstream421ToCommand(t *testing.T) {
	h := openHarness(t)
	h.up.replies["MAIL"] = "421 4.7.0 too busy\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.expect("421 4.7.0 too busy\r\n")
	if !h.s.Done() || !h.s.UpstreamGone() {
		t.Fatal("not closed after a 421")
	}
}

// The upstream is lost mid-DATA: the client's data is drained, it gets
// 451, then 421 on its next command; never a 250.
func TestUpstreamClosesMidDATA(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\nfirst part\r\n")
	h.expect(ok + ok + local354)
	h.s.HandleUpstreamClosed(EndReset)
	h.flush()
	h.expect("")
	h.fromClient("more\r\n.\r\n")
	h.expect("451 4.4.2 upstream 127.0.0.1:10026 reset the connection\r\n")
	h.fromClient("MAIL FROM:<s@x>\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 reset the connection\r\n")
	if strings.HasSuffix(h.up.raw.String(), ".\r\n") {
		t.Fatal("the upstream saw an end of data")
	}
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomeUpstreamFailed {
		t.Fatalf("transactions: %+v", txs)
	}
}

// The upstream stalls at each point of a transaction: the client gets a
// timeout reply, never a 250, and the next command a 421.
func TestUpstreamStalls(t *testing.T) {
	const timedOut = "upstream 127.0.0.1:10026 timed out\r\n"
	stall := func(name string, setup func(h *harness), want string) {
		t.Helper()
		h := newHarness(t, loopCfg()).connect()
		setup(h)
		h.got()
		if !h.s.PollTimers().Upstream {
			t.Fatalf("%s: no upstream timer running in state %d", name, h.s.st)
		}
		h.s.HandleTimeout(TimerUpstreamReply)
		h.flush()
		h.pump()
		if got := h.got(); got != want {
			t.Fatalf("%s: client got %q, want %q", name, got, want)
		}
		if !h.s.Done() {
			h.fromClient("NOOP\r\n")
			if got := h.got(); got != "421 4.4.2 "+timedOut {
				t.Fatalf("%s: next command got %q", name, got)
			}
		}
	}
	stall("command reply", func(h *harness) { h.up.silent = true; h.fromClient("MAIL FROM:<s@x>\r\n") },
		"421 4.4.2 "+timedOut)
	stall("354 after the verdict", func(h *harness) {
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
		h.up.silent = true
		h.fromClient("DATA\r\nSubject: s\r\n\r\nb\r\n.\r\n")
	}, "451 4.4.2 "+timedOut)
	stall("end-of-data reply", func(h *harness) {
		h.up.dataReply = ""
		sendMessage(h, "Subject: s\r\n\r\nb\r\n.\r\n")
	}, "451 4.4.2 "+timedOut)
	stall("swallowed RSET reply", func(h *harness) {
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
		h.up.silent = true
		h.fromClient("DATA\r\nDelivered-To: a@x\r\n\r\n.\r\n")
	}, "")
}

func TestUpstreamStallWhile354AwaitedDrainsClient(t *testing.T) {
	h := newHarness(t, loopCfg()).connect()
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.got()
	h.up.silent = true
	h.fromClient("DATA\r\nSubject: s\r\n\r\nbody begins")
	h.s.HandleTimeout(TimerUpstreamReply)
	h.flush()
	h.expect(local354)
	h.fromClient(" and ends\r\n.\r\nNOOP\r\n")
	h.expect("451 4.4.2 upstream 127.0.0.1:10026 timed out\r\n421 4.4.2 upstream 127.0.0.1:10026 timed out\r\n")
}

func TestStaleTimerIgnored(t *testing.T) {
	h := openHarness(t)
	h.s.HandleTimeout(TimerUpstreamReply) // not running: nothing waits for the upstream
	h.s.HandleTimeout(TimerClientData)    // not running either
	h.flush()
	h.expect("")
	if h.s.Done() {
		t.Fatal("a stale timer ended the session")
	}
}

// The client goes away mid-DATA: the upstream never sees the final dot.
func TestClientDisconnectMidDATA(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\npartial body\r\n")
	h.s.HandleClientClosed()
	h.flush()
	if !h.s.Done() || !h.upGone {
		t.Fatal("not closed")
	}
	if strings.Contains(h.up.raw.String(), "\r\n.\r\n") || len(h.up.messages) != 0 {
		t.Fatalf("upstream saw an end of data: %q", h.up.raw.String())
	}
	txs := h.txEvents()
	if len(txs) != 1 || txs[0].Outcome != OutcomeAborted {
		t.Fatalf("transactions: %+v", txs)
	}
}

func TestClientTimeouts(t *testing.T) {
	h := openHarness(t)
	if h.s.PollTimers().Client != TimerClientCommand {
		t.Fatalf("client timer %v while waiting for a command", h.s.PollTimers().Client)
	}
	h.s.HandleTimeout(TimerClientCommand)
	h.flush()
	h.expect("421 4.4.2 timeout\r\n")
	if last := h.up.commands[len(h.up.commands)-1]; last != "QUIT" || !h.s.Done() {
		t.Fatalf("upstream not told QUIT (%q) or session not over", last)
	}

	h = newHarness(t, loopCfg()).connect()
	h.got()
	sendMessage(h, "Subject: s\r\n\r\nbody")
	h.got()
	tm := h.s.PollTimers()
	if tm.Client != TimerClientData {
		t.Fatalf("client timer %v during DATA", tm.Client)
	}
	h.fromClient(" more")
	if h.s.PollTimers().ClientGen == tm.ClientGen {
		t.Fatal("data idle timer not restarted by client data")
	}
	h.s.HandleTimeout(TimerClientData)
	h.flush()
	h.expect("421 4.4.2 timeout\r\n")
	if strings.Contains(h.up.raw.String(), "\r\n.\r\n") {
		t.Fatal("upstream saw an end of data")
	}
}

func TestCommandTimerNotRestartedByPartialLine(t *testing.T) {
	h := newHarness(t, loopCfg()).connect()
	gen := h.s.PollTimers().ClientGen
	h.fromClient("NO")
	h.fromClient("O")
	if h.s.PollTimers().ClientGen != gen {
		t.Fatal("a trickle of bytes restarts the command timer")
	}
	h.fromClient("P\r\n")
	if h.s.PollTimers().ClientGen == gen {
		t.Fatal("a complete command does not restart the command timer")
	}
}

func TestUnsolicitedUpstreamBytes(t *testing.T) {
	h := openHarness(t)
	h.fromUpstream("421 4.4.2 up.example Error: timeout exceeded\r\n")
	h.expect("")
	if !h.upGone {
		t.Fatal("upstream not closed after unsolicited bytes")
	}
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 sent unexpected data\r\n")
}

func TestUpstreamReplyMalformedOrHuge(t *testing.T) {
	h := openHarness(t)
	h.up.replies["NOOP"] = "hello there\r\n"
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 sent a malformed reply\r\n")

	h = newHarness(t, loopCfg()).connect()
	h.got()
	h.up.replies["NOOP"] = strings.Repeat("250-"+strings.Repeat("x", 996)+"\r\n", 70) + "250 end\r\n"
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 sent a reply over 65536 bytes\r\n")
}

func TestShutdownBetweenTransactions(t *testing.T) {
	h := openHarness(t)
	h.fromClient("EHLO c\r\n")
	h.got()
	h.s.HandleShutdown()
	h.flush()
	h.expect("421 4.3.2 shutting down\r\n")
	if !h.s.Done() {
		t.Fatal("not done")
	}
}

func TestShutdownInsideTransactionFinishesIt(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\nbody\r\n")
	h.got()
	h.s.HandleShutdown()
	h.flush()
	h.expect("")
	h.fromClient(".\r\nMAIL FROM:<s@x>\r\n")
	h.expect(queued + "421 4.3.2 shutting down\r\n")
	if len(h.up.messages) != 1 {
		t.Fatal("message not delivered")
	}
	// MAIL accepted, then shutdown, then RSET: ends at the boundary.
	h = newHarness(t, loopCfg()).connect()
	h.got()
	h.fromClient("MAIL FROM:<s@x>\r\n")
	h.s.HandleShutdown()
	h.flush()
	h.expect(ok)
	h.fromClient("RSET\r\n")
	h.expect(ok + "421 4.3.2 shutting down\r\n")
}

func TestDrainExpiredNeverGives2xx(t *testing.T) {
	h := openHarness(t)
	h.up.dataReply = "" // the upstream has not answered yet
	sendMessage(h, "Subject: s\r\n\r\nbody\r\n.\r\n")
	h.got()
	h.s.HandleShutdown()
	h.s.HandleDrainExpired()
	h.flush()
	h.expect("421 4.3.2 shutting down\r\n")
	h.s.HandleUpstreamData([]byte(queued)) // too late
	h.flush()
	h.expect("")
}

func TestBareLFReject(t *testing.T) {
	cfg := loopCfg()
	cfg.BareLF = BareLFReject
	// In the header: nothing streamed yet, a local rejection with RSET.
	h := newHarness(t, cfg).connect()
	h.got()
	sendMessage(h, "Subject: s\nX: y\r\n\r\nbody\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + local354 + "550 5.5.2 bare LF in message\r\n" + ok)
	if diff := cmp.Diff([]string{"MAIL FROM:<s@x>", "RCPT TO:<a@x>", "RSET", "NOOP"}, h.up.commands); diff != "" {
		t.Fatalf("upstream commands (-want +got):\n%s", diff)
	}
	// In the body after streaming began: the upstream is closed without
	// the final dot, the next command gets 421.
	h = newHarness(t, cfg).connect()
	h.got()
	sendMessage(h, "Subject: s\r\n\r\nbody\r\nbare\nmore\r\n.\r\nNOOP\r\n")
	h.expect(ok + ok + local354 + "550 5.5.2 bare LF in message\r\n421 4.4.2 upstream 127.0.0.1:10026 closed by the proxy to abort a rejected message\r\n")
	if strings.Contains(h.up.raw.String(), "\r\n.\r\n") || len(h.up.messages) != 0 {
		t.Fatalf("upstream saw an end of data: %q", h.up.raw.String())
	}
}

func TestCheckPanicTempfails(t *testing.T) {
	cfg := Config{Check: func([]string, []byte) loopcheck.Verdict { panic("boom") }}
	h := newHarness(t, cfg).connect()
	h.got()
	sendMessage(h, "Subject: s\r\n\r\nb\r\n.\r\n")
	h.expect(ok + ok + local354 + "451 4.3.0 loop check failed, try again later\r\n")
	if len(h.up.messages) != 0 {
		t.Fatal("message passed")
	}
}

func TestQUITClosesBoth(t *testing.T) {
	h := openHarness(t)
	h.fromClient("QUIT\r\nNOOP\r\n")
	h.expect("221 2.0.0 Bye\r\n")
	if !h.s.Done() || !h.upGone || h.s.WantsClientInput() {
		t.Fatal("not closed after QUIT")
	}
}

func TestTransactionStateFollowsUpstream(t *testing.T) {
	h := openHarness(t)
	// MAIL refused: RCPT and DATA are forwarded (no local 354).
	h.up.replies["MAIL"] = "451 4.3.0 try later\r\n"
	h.up.replies["DATA"] = "503 5.5.1 need MAIL\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
	// The fake upstream accepts the RCPT regardless; the proxy counts it
	// (the upstream said 2xx) and answers 354 itself.
	h.expect("451 4.3.0 try later\r\n" + ok + local354)
	h.fromClient(".\r\n")
	h.expect("503 5.5.1 need MAIL\r\n")
	// After RSET the recipients are gone: DATA is forwarded again.
	h.fromClient("RCPT TO:<a@x>\r\nRSET\r\nDATA\r\n")
	h.expect(ok + ok + "503 5.5.1 need MAIL\r\n")
}

// An upstream that answers in the middle of the message (a server
// enforcing a line limit, say) is not trusted to have taken it: 451, then
// 421 on the next command.
func TestUpstreamRepliesMidMessage(t *testing.T) {
	h := openHarness(t)
	sendMessage(h, "Subject: s\r\n\r\nfirst\r\n")
	h.expect(ok + ok + local354)
	h.fromUpstream("500 5.5.2 line too long\r\n")
	h.fromClient("rest\r\n.\r\n")
	h.expect("451 4.4.2 upstream 127.0.0.1:10026 replied before the end of data\r\n")
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 replied before the end of data\r\n")
}

// The line after a header section close to the limit is judged the same
// wherever the client's data is cut: it may run into a lookahead before it
// shows it is no header line.
func TestHeaderLimitIndependentOfChunking(t *testing.T) {
	const limit = 40
	section := "Subject: " + strings.Repeat("s", limit-2-len("Subject: ")) + "\r\n" // exactly the limit
	data := section + "Hello world, no header\r\n.\r\n"
	for cut := 0; cut <= len(data); cut++ {
		h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MaxHeaderBytes: limit}).connect()
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
		h.got()
		h.fromClient(data[:cut])
		h.fromClient(data[cut:])
		if got := h.got(); got != queued {
			t.Fatalf("cut at %d: %q", cut, got)
		}
	}
	// A header section over the limit is refused wherever it is cut.
	data = section + "X: y\r\n\r\nbody\r\n.\r\n"
	for cut := 0; cut <= len(data); cut++ {
		h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MaxHeaderBytes: limit}).connect()
		h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
		h.got()
		h.fromClient(data[:cut])
		h.fromClient(data[cut:])
		if got := h.got(); got != replyHeaderTooBig {
			t.Fatalf("cut at %d: %q", cut, got)
		}
	}
}

// TestHeaderLookaheadIndependentOfChunking: the line after the header
// section may stay undecided ("XXXX" could still become a field name) for
// at most MaxHeaderBytes+HeaderLookahead bytes of header buffer. Whether a
// message crosses that bound must not depend on how its bytes are cut:
// once, a piece that crossed the bound and decided the line within itself
// skipped the check (552 byte by byte, 250 in one piece).
func TestHeaderLookaheadIndependentOfChunking(t *testing.T) {
	const limit = 256
	for _, undecided := range []int{limit + HeaderLookahead - 1, limit + HeaderLookahead, limit + HeaderLookahead + 1, limit + HeaderLookahead + captureStep} {
		// undecided-1 name bytes and a space leave the line open; the 'b'
		// after them decides it is no field line.
		data := strings.Repeat("X", undecided-1) + " b\r\n.\r\n"
		want := queued
		if undecided > limit+HeaderLookahead {
			want = replyHeaderTooBig
		}
		for _, step := range []int{1, 7, captureStep - 1, captureStep, len(data)} {
			h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo, MaxHeaderBytes: limit}).connect()
			h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
			h.got()
			for i := 0; i < len(data); i += step {
				h.fromClient(data[i:min(i+step, len(data))])
			}
			if got := h.got(); got != want {
				t.Fatalf("%d undecided bytes in pieces of %d: got %q, want %q", undecided, step, got, want)
			}
		}
	}
}

// TestReplyAlongWith354IsNoEndOfDataReply: a reply that comes in the same
// read as the 354 to the proxy's DATA cannot answer the message, which is
// not written yet. It once reached the client as the end-of-data reply of a
// header-only message (captured whole before DATA went upstream), so the
// client could hear 250 for a message the upstream then refused.
func TestReplyAlongWith354IsNoEndOfDataReply(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.got()
	h.up.replies["DATA"] = "354 go on\r\n250 2.0.0 Ok: queued as EARLY\r\n"
	h.fromClient("MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nSubject: x\r\n.\r\n")
	h.expect("250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n" + replyData354 +
		"451 4.4.2 upstream 127.0.0.1:10026 replied before the end of data\r\n")
	if len(h.up.messages) != 0 || !h.upGone {
		t.Fatalf("the upstream got %q and is gone: %v; want nothing and gone", h.up.messages, h.upGone)
	}
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 replied before the end of data\r\n")

	// The same for a reply to a command: the bytes after it answer nothing.
	h = newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.got()
	h.up.replies["NOOP"] = "250 2.0.0 Ok\r\n250 2.0.0 again\r\n"
	h.fromClient("NOOP\r\n")
	h.expect("250 2.0.0 Ok\r\n")
	h.fromClient("NOOP\r\n")
	h.expect("421 4.4.2 upstream 127.0.0.1:10026 sent unexpected data\r\n")
}

// TestVerbsAndKeywordsCompareAsASCII: verbs and EHLO keywords are ASCII
// words. Unicode case mapping once made "quıt" (dotless i) the QUIT verb,
// so the session closed after the upstream's 502 to a word it did not
// know, and made "ſtarttls" (long s) STARTTLS, answered locally.
func TestVerbsAndKeywordsCompareAsASCII(t *testing.T) {
	h := newHarness(t, Config{Check: smtptest.CheckDeliveredTo}).connect()
	h.got()
	// The fake upstream looks verbs up with strings.ToUpper: "quıt" is
	// "QUIT" to it, and it answers as Postfix would.
	h.up.replies["QUIT"] = "502 5.5.2 Error: command not recognized\r\n"
	h.fromClient("quıt\r\n")
	h.expect("502 5.5.2 Error: command not recognized\r\n")
	if h.s.Done() {
		t.Fatal("the session ended after a 502 to an unknown verb")
	}
	h.fromClient("ſtarttls\r\nmaıl FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
	h.expect("250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n")
	if got, want := h.up.commands[len(h.up.commands)-3:], []string{"ſtarttls", "maıl FROM:<s@x>", "RCPT TO:<a@x>"}; !slices.Equal(got, want) {
		t.Fatalf("upstream got %q, want %q", got, want)
	}
	if h.s.env.open {
		t.Fatal("a 250 to 'maıl' started a transaction")
	}
	if got := string(filterEHLO(nil, []byte("250-up\r\n250-ſTARTTLS\r\n250-starttls\r\n250 \u212aEEP\r\n"), []string{"keep"})); got != "250-up\r\n250-ſTARTTLS\r\n250 \u212aEEP\r\n" {
		t.Fatalf("EHLO filter gave %q", got)
	}
}

// ClientReading is ReadingBody only while a judged message's body
// streams: ReadingMessage while its header section is read and while a
// refused message is drained, ReadingCommands between messages and while
// the session waits for the upstream.
func TestClientReading(t *testing.T) {
	h := openHarness(t)
	want := func(when string, r Reading) {
		t.Helper()
		if got := h.s.ClientReading(); got != r {
			t.Fatalf("%s: reading %d, want %d", when, got, r)
		}
	}
	want("between messages", ReadingCommands)
	h.fromClient("MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
	h.expect(ok + ok + local354)
	h.fromClient("Subject: streams\r\n")
	want("while the header section is read", ReadingMessage)
	h.up.silent = true
	h.fromClient("\r\n")
	want("while DATA waits for the upstream's 354", ReadingCommands)
	h.up.silent, h.up.inData = false, true
	h.fromUpstream("354 go on\r\n")
	h.fromClient("the body\r\n")
	want("once the header section has gone upstream", ReadingBody)
	h.fromClient("more body\r\n.\r\n")
	h.expect(queued)
	want("after the end of data", ReadingCommands)
	h.fromClient("MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
	h.expect(ok + ok + local354)
	h.fromClient("Delivered-To: r@example.net\r\n\r\nbody of a loop\r\n")
	want("while a message refused as a loop is drained", ReadingMessage)
}

// Every way the upstream fails is reported with its kind, the fixed label
// metrics counts, beside the phrase the client and the log read.
func TestUpstreamFailureKinds(t *testing.T) {
	fromCommand := func(h *harness) { h.connect() }
	inReply := func(h *harness) {
		h.connect()
		h.up.silent = true
		h.fromClient("MAIL FROM:<s@x>\r\n")
		h.up.silent = false
	}
	inData := func(h *harness) {
		h.connect()
		sendMessage(h, "Subject: s\r\n\r\nbody\r\n")
	}
	for _, c := range []struct {
		name   string
		setup  func(h *harness)
		fail   func(h *harness)
		kind   UpstreamFailure
		reason string
	}{
		{"unreachable", func(*harness) {}, func(h *harness) { h.s.HandleUpstreamConnectFailed("connection refused") },
			FailConnect, "connect: connection refused"},
		{"reply timer", inReply, func(h *harness) { h.s.HandleTimeout(TimerUpstreamReply) }, FailTimeout, "timed out"},
		{"closed", inReply, func(h *harness) { h.s.HandleUpstreamClosed(EndClosed) }, FailClosed, "closed the connection"},
		{"reset", inReply, func(h *harness) { h.s.HandleUpstreamClosed(EndReset) }, FailClosed, "reset the connection"},
		{"broken", inReply, func(h *harness) { h.s.HandleUpstreamClosed(EndBroken) }, FailClosed, "broke the connection"},
		{"write timed out", inData, func(h *harness) { h.s.HandleUpstreamClosed(EndTimedOut) }, FailTimeout, "timed out"},
		{"unsolicited", fromCommand, func(h *harness) { h.fromUpstream("421 4.4.2 idle\r\n") }, FailProtocol, "sent unexpected data"},
		{"malformed", inReply, func(h *harness) { h.fromUpstream("hello\r\n") }, FailProtocol, "sent a malformed reply"},
		{"too long", inReply, func(h *harness) { h.fromUpstream(strings.Repeat("250-"+strings.Repeat("x", 1000)+"\r\n", 70)) },
			FailProtocol, "sent a reply over 65536 bytes"},
		{"odd reply to DATA", func(h *harness) {
			h.connect()
			h.up.replies["DATA"] = "250 what\r\n"
			sendMessage(h, "Subject: s\r\n\r\nbody\r\n")
		}, func(*harness) {}, FailProtocol, "sent an unexpected reply to DATA (250)"},
		{"early reply", inData, func(h *harness) { h.fromUpstream("250 2.0.0 Ok: queued\r\n") }, FailProtocol, "replied before the end of data"},
		{"refused RSET", func(h *harness) {
			h.connect()
			h.up.replies["RSET"] = "500 5.5.1 no\r\n"
			sendMessage(h, "Delivered-To: a@x\r\n\r\nloop\r\n.\r\n")
		}, func(*harness) {}, FailProtocol, "refused RSET: 500 5.5.1 no"},
	} {
		h := newHarness(t, loopCfg())
		c.setup(h)
		c.fail(h)
		h.flush()
		var got []Event
		for _, e := range h.events {
			if e.Kind == EventUpstreamError {
				got = append(got, e)
			}
		}
		if len(got) != 1 || got[0].Failure != c.kind || got[0].Reason != c.reason {
			t.Errorf("%s: upstream errors %+v, want one of kind %v: %q", c.name, got, c.kind, c.reason)
		}
	}
}
