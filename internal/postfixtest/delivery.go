package postfixtest

import (
	"fmt"
	"regexp"
	"strings"
)

// Delivery is one delivery attempt of one recipient, as a delivery agent
// logged it: "QID: to=<rcpt>, [orig_to=<...>, ]relay=..., dsn=X.Y.Z,
// status=STATUS (DETAIL)".
type Delivery struct {
	QueueID   string
	Recipient string // to=<...>
	Agent     string // the logging program, e.g. postfix/local
	DSN       string // e.g. 2.0.0, 5.4.6
	Status    string // sent, bounced, deferred, expired
	Detail    string // the parenthesised text
	Line      string // the whole log line
}

// LoopPrefix begins the detail local(8) logs when it finds the recipient in
// a Delivered-To: header (src/local/recipient.c).
const LoopPrefix = "mail forwarding loop for "

// IsLoopBounce reports whether the delivery is local(8)'s loop bounce:
// "dsn=5.4.6, status=bounced (mail forwarding loop for ...)".
func (d Delivery) IsLoopBounce() bool {
	return d.Status == "bounced" && d.DSN == "5.4.6" && strings.HasPrefix(d.Detail, LoopPrefix)
}

func (d Delivery) String() string {
	return fmt.Sprintf("%s: to=<%s> dsn=%s status=%s (%s)", d.QueueID, d.Recipient, d.DSN, d.Status, d.Detail)
}

var deliveryRE = regexp.MustCompile(`\s(postfix[^\s\[]*)\[\d+\]: ([0-9A-Za-z]+): to=<([^>]*)>, .*?dsn=([0-9.]+), status=(\S+) \((.*)\)$`)

// Deliveries returns every delivery attempt logged for the queue id so far.
func Deliveries(log, qid string) []Delivery {
	var ds []Delivery
	for line := range strings.Lines(log) {
		line = strings.TrimRight(line, "\n")
		m := deliveryRE.FindStringSubmatch(line)
		if m == nil || m[2] != qid {
			continue
		}
		ds = append(ds, Delivery{QueueID: m[2], Recipient: m[3], Agent: m[1], DSN: m[4], Status: m[5], Detail: m[6], Line: line})
	}
	return ds
}

// done reports whether the queue manager is finished with qid: it logged
// "QID: removed", or some delivery of it was deferred (it would only be
// retried much later).
func done(log, qid string) bool {
	if strings.Contains(log, ": "+qid+": removed\n") {
		return true
	}
	for _, d := range Deliveries(log, qid) {
		if d.Status == "deferred" {
			return true
		}
	}
	return false
}

// WaitDone waits until Postfix is finished with the message queued as qid
// (removed from the queue, or deferred) and returns its deliveries.
func (p *Instance) WaitDone(qid string) []Delivery {
	p.t.Helper()
	if qid == "" {
		p.t.Fatalf("postfixtest: WaitDone with an empty queue id")
	}
	var ds []Delivery
	p.waitFor("end of delivery of "+qid, func(log string) bool {
		if !done(log, qid) {
			return false
		}
		ds = Deliveries(log, qid)
		return true
	})
	return ds
}

// forwardedRE finds the queue id local(8) logged it forwarded a message
// as ("status=sent (forwarded as QID)": an alias to a remote address,
// :include: or .forward).
var forwardedRE = regexp.MustCompile(`^forwarded as ([0-9A-Za-z]+)`)

// WaitDoneFollowing is WaitDone for the message queued as qid and for
// every message local(8) forwarded it as, recursively: every delivery the
// message led to.
func (p *Instance) WaitDoneFollowing(qid string) []Delivery {
	p.t.Helper()
	var all []Delivery
	for _, d := range p.WaitDone(qid) {
		all = append(all, d)
		if m := forwardedRE.FindStringSubmatch(d.Detail); m != nil {
			all = append(all, p.WaitDoneFollowing(m[1])...)
		}
	}
	return all
}

// LoopBounced waits until Postfix is finished with qid and reports whether
// its delivery to rcpt (compared case-insensitively, as Postfix logs it
// after folding) was local(8)'s loop bounce.
func (p *Instance) LoopBounced(qid, rcpt string) bool {
	p.t.Helper()
	for _, d := range p.WaitDone(qid) {
		if strings.EqualFold(d.Recipient, rcpt) && d.IsLoopBounce() {
			return true
		}
	}
	return false
}
