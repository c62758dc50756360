package conformance

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	gomilter "github.com/d--j/go-milter"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// What a real Postfix sends a milter (docs/reference/milter.md): the facts
// the milter front-end rests on, checked live with a milter that records
// every event. Two recorders run side by side in smtpd_milters, one with
// the header leading-space option (SMFIP_HDR_LEADSPC) and one without.

// pfRecord is what a recording milter saw of one message.
type pfRecord struct {
	offered  string // what the MTA offered at negotiation
	client   string // the connect event: family and address
	rcpts    []pfRcptEvent
	headers  [][2]string
	queueID  string // macro i at end of message
	protocol gomilter.OptProtocol
}

type pfRcptEvent struct {
	rcpt, args, rcptAddr, rcptMailer string
}

// pfRecorder is a go-milter backend that records messages by Subject.
type pfRecorder struct {
	gomilter.NoOpMilter
	mu     *sync.Mutex
	into   map[string]*pfRecord
	cur    *pfRecord
	prot   gomilter.OptProtocol
	client string
}

func (r *pfRecorder) Connect(_, family string, _ uint16, addr string, _ gomilter.Modifier) (*gomilter.Response, error) {
	r.client = family + " " + addr
	return gomilter.RespContinue, nil
}

func (r *pfRecorder) MailFrom(string, string, gomilter.Modifier) (*gomilter.Response, error) {
	r.cur = &pfRecord{protocol: r.prot, client: r.client}
	return gomilter.RespContinue, nil
}

func (r *pfRecorder) RcptTo(rcpt, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	r.cur.rcpts = append(r.cur.rcpts, pfRcptEvent{rcpt, args, m.Get(gomilter.MacroRcptAddr), m.Get(gomilter.MacroRcptMailer)})
	return gomilter.RespContinue, nil
}

func (r *pfRecorder) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	r.cur.headers = append(r.cur.headers, [2]string{name, value})
	return gomilter.RespContinue, nil
}

func (r *pfRecorder) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	r.cur.queueID = m.Get(gomilter.MacroQueueId)
	subject := ""
	for _, h := range r.cur.headers {
		if strings.EqualFold(h[0], "Subject") {
			subject = strings.TrimSpace(h[1])
		}
	}
	r.mu.Lock()
	r.into[subject] = r.cur
	r.mu.Unlock()
	return gomilter.RespAccept, nil
}

// pfStartRecorder serves a recording milter on loopback; its records are
// in the map, by Subject.
func pfStartRecorder(t *testing.T, leadingSpace bool) (addr string, mu *sync.Mutex, records map[string]*pfRecord) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mu, records = &sync.Mutex{}, map[string]*pfRecord{}
	var offered string
	prot := gomilter.OptNoBody
	if leadingSpace {
		prot |= gomilter.OptHeaderLeadingSpace
	}
	srv := gomilter.NewServer(
		gomilter.WithDynamicMilter(func(_ uint32, _ gomilter.OptAction, p gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
			return &pfRecorder{mu: mu, into: records, prot: p}
		}),
		gomilter.WithProtocol(prot),
		gomilter.WithNegotiationCallback(func(mtaVersion, _ uint32, mtaActions, milterActions gomilter.OptAction, mtaProtocol, milterProtocol gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
			mu.Lock()
			offered = fmt.Sprintf("version %d, actions %v, protocol %v", mtaVersion, mtaActions, mtaProtocol)
			records[""] = &pfRecord{offered: offered}
			mu.Unlock()
			return min(mtaVersion, gomilter.MaxServerProtocolVersion), milterActions & mtaActions, milterProtocol & mtaProtocol, gomilter.DataSize64K, nil
		}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []string{gomilter.MacroRcptAddr, gomilter.MacroRcptMailer}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []string{gomilter.MacroQueueId}),
	)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), mu, records
}

func TestPostfixMilterFacts(t *testing.T) {
	t.Parallel()
	exact, muExact, recExact := pfStartRecorder(t, true)
	eaten, muEaten, recEaten := pfStartRecorder(t, false)
	p := postfixtest.New(t, postfixtest.Options{
		Mailboxes: []string{"other"},
		MainCF: map[string]string{
			"virtual_alias_maps":       "hash:{etc}/virtual",
			"recipient_canonical_maps": "hash:{etc}/canonical",
			"milter_protocol":          "6",
		},
		Files: map[string]string{
			"virtual":   "valias@" + postfixtest.Domain + " loopuser@" + postfixtest.Domain + "\n",
			"canonical": "canon@" + postfixtest.Domain + " valias@" + postfixtest.Domain + "\n",
		},
		Postmap: []string{"hash:virtual", "hash:canonical"},
		PlainSMTPD: map[string]string{
			"smtpd_milters":         "inet:" + exact + ", inet:" + eaten,
			"milter_default_action": "tempfail",
		},
	})
	p.Start()

	const subject = "milter facts"
	head := "Delivered-To: one-space@local.test\n" +
		"Delivered-To:  two-spaces@local.test\n" +
		"Delivered-To:\ttab@local.test\n" +
		"Delivered-To:no-space@local.test\n" +
		"Delivered-To : space-before-colon@local.test\n" +
		"delivered-to: lower@local.test\n" +
		"Delivered-To: folded@local.test,\n\tsecond@local.test\n" +
		"Delivered-To: trailing@local.test  \n" +
		"Subject: " + subject + "\n\nbody\n"
	c := postfixtest.Client{LocalAddr: "127.0.0.2"}
	res, err := c.Send(p.PlainAddr(), "sender@local.test",
		[]string{"<LoopUser@Local.Test> NOTIFY=NEVER", "valias@Local.Test", "<user@local.test> ORCPT=rfc822;x@example.org NOTIFY=SUCCESS,FAILURE", "canon@local.test"},
		[]byte(head))
	if err != nil || res.QueueID() == "" {
		t.Fatalf("send: %v; end-of-data %v", err, res.EndOfData)
	}
	p.WaitDone(res.QueueID())

	get := func(mu *sync.Mutex, recs map[string]*pfRecord) *pfRecord {
		mu.Lock()
		defer mu.Unlock()
		r := recs[subject]
		if r == nil {
			t.Fatalf("the milter recorded no message %q; records %v\nmaillog:\n%s", subject, recs, p.Maillog())
		}
		return r
	}
	withSpace, without := get(muExact, recExact), get(muEaten, recEaten)
	muExact.Lock()
	t.Logf("Postfix offered: %s", recExact[""].offered)
	muExact.Unlock()
	t.Logf("negotiated with the leading-space option: %v", withSpace.protocol)
	t.Logf("header events with it:    %q", withSpace.headers)
	t.Logf("header events without it: %q", without.headers)
	t.Logf("connect event: %s; RCPT events: %+v", withSpace.client, withSpace.rcpts)
	t.Logf("queue id at end of message: %q (the end-of-data reply's: %q)", withSpace.queueID, res.QueueID())

	if withSpace.protocol&gomilter.OptHeaderLeadingSpace == 0 {
		t.Fatalf("Postfix did not take SMFIP_HDR_LEADSPC")
	}
	dts := func(r *pfRecord) [][2]string {
		var d [][2]string
		for _, h := range r.headers {
			if strings.EqualFold(h[0], "Delivered-To") {
				d = append(d, h)
			}
		}
		return d
	}
	wantExact := [][2]string{
		{"Delivered-To", " one-space@local.test"},
		{"Delivered-To", "  two-spaces@local.test"},
		{"Delivered-To", "\ttab@local.test"},
		{"Delivered-To", "no-space@local.test"},
		{"Delivered-To", " space-before-colon@local.test"}, // the space before the colon is gone
		{"delivered-to", " lower@local.test"},              // the name's case is kept
		{"Delivered-To", " folded@local.test,\n\tsecond@local.test"},
		{"Delivered-To", " trailing@local.test  "},
	}
	if got := dts(withSpace); !slices.Equal(got, wantExact) {
		t.Errorf("with the leading-space option:\n got %q\nwant %q", got, wantExact)
	}
	wantEaten := make([][2]string, len(wantExact))
	for i, h := range wantExact {
		wantEaten[i] = [2]string{h[0], strings.TrimPrefix(h[1], " ")} // one space eaten, a tab kept
	}
	if got := dts(without); !slices.Equal(got, wantEaten) {
		t.Errorf("without the leading-space option:\n got %q\nwant %q", got, wantEaten)
	}
	for _, h := range withSpace.headers {
		if strings.ContainsRune(h[1], '\r') {
			t.Errorf("a header value holds a CR: %q", h)
		}
	}

	wantRcpts := []pfRcptEvent{
		// The client's token (go-milter removes one pair of brackets) and
		// its ESMTP parameters; {rcpt_addr} resolved and case-folded;
		// {rcpt_mailer} the transport.
		{"LoopUser@Local.Test", "NOTIFY=NEVER", "loopuser@local.test", "local"},
		// valias is a virtual alias of loopuser: the milter sees the
		// address before virtual aliasing, {rcpt_addr} included.
		{"valias@Local.Test", "", "valias@local.test", "local"},
		{"user@local.test", "ORCPT=rfc822;x@example.org NOTIFY=SUCCESS,FAILURE", "user@local.test", "local"},
		// canon is rewritten to valias by recipient_canonical_maps: the
		// milter sees canon, {rcpt_addr} included.
		{"canon@local.test", "", "canon@local.test", "local"},
	}
	if !slices.Equal(withSpace.rcpts, wantRcpts) {
		t.Errorf("RCPT events:\n got %+v\nwant %+v", withSpace.rcpts, wantRcpts)
	}
	if withSpace.client != "tcp4 127.0.0.2" {
		t.Errorf("connect event %q, want the SMTP client's address (tcp4 127.0.0.2)", withSpace.client)
	}
	if withSpace.queueID != res.QueueID() {
		t.Errorf("macro i at end of message %q, want the queue id %q", withSpace.queueID, res.QueueID())
	}
	// Nothing of the message's header section is left out but Postfix's
	// own Received: field.
	if n := len(dts(withSpace)); n != 8 {
		t.Errorf("%d Delivered-To: events, want 8", n)
	}
	for _, h := range withSpace.headers {
		if strings.EqualFold(h[0], "Received") {
			t.Errorf("Postfix's own Received: field was sent: %q", h)
		}
	}
	if m := regexp.MustCompile(`warning: .*milter`).FindString(p.Maillog()); m != "" {
		t.Errorf("Postfix warned about a milter: %s", m)
	}
}
