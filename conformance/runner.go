package conformance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"
)

// DefaultCaseLimit bounds one case from start to end. It only guards
// against a hang (an implementation that never answers or never closes):
// every wait in a case ends on an event, and a correct implementation with
// the cases' short timeouts finishes a case in well under a second.
const DefaultCaseLimit = 30 * time.Second

// closeGrace is how long the upstream connections still get to close after
// the client's script has used up the case limit (a case that already
// failed by waiting): enough for an implementation to notice that its
// client is gone, so that no hang is reported that is only the runner's
// own clock having run out.
const closeGrace = 2 * time.Second

// Status is the outcome of a case.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "FAIL"
	Skip Status = "skipped"
)

// Result is the outcome of one case against one implementation.
type Result struct {
	Case   *Case
	Status Status
	// Reason is one line: the first difference for a failure, what the
	// implementation needs for a skip.
	Reason string
	// Detail is the full report of a failure: every difference, the
	// received bytes in case-file form, the implementation's log.
	Detail string
}

// RunCase runs one case against an implementation.
func RunCase(ctx context.Context, c *Case, impl Implementation, limit time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	res := Result{Case: c}
	failf := func(format string, a ...any) Result {
		res.Status = Fail
		res.Reason = fmt.Sprintf(format, a...)
		res.Detail = res.Reason
		return res
	}

	var up *upstreamServer
	upAddr := ""
	if c.Upstream.down {
		addr, err := freeAddr()
		if err != nil {
			return failf("%v", err)
		}
		upAddr = addr
	} else {
		var err error
		if up, err = startUpstream(c.Upstream); err != nil {
			return failf("%v", err)
		}
		defer up.stop()
		upAddr = up.addr()
	}

	inst, err := impl.Start(ctx, c, upAddr)
	if err != nil {
		var needs *NeedsError
		if errors.As(err, &needs) {
			res.Status = Skip
			res.Reason = needs.Error()
			return res
		}
		return failf("could not start the implementation: %v", err)
	}
	stopped := false
	var implLog string
	stop := func() {
		if !stopped {
			stopped = true
			implLog = inst.Stop()
		}
	}
	defer stop()

	run := &clientRun{addr: inst.Addr(), up: up, conns: map[string]*clientConn{}}
	warnings, scriptErr := run.run(ctx, c.Client)
	// The session is over for the client. Every upstream connection must
	// now end: closed by the implementation (it lost its client) or by
	// the scripted upstream (QUIT, a fault).
	run.closeAll()
	var hang []string
	if up != nil {
		closeCtx := ctx
		if ctx.Err() != nil {
			var cancelClose context.CancelFunc
			closeCtx, cancelClose = context.WithTimeout(context.WithoutCancel(ctx), closeGrace)
			defer cancelClose()
		}
		for i, rec := range up.records() {
			if err := rec.wait(closeCtx, func(_ []byte, closed bool) bool { return closed }); err != nil {
				hang = append(hang, fmt.Sprintf("upstream connection %d was still open when the case time limit ran out, after the client had closed", i+1))
			}
		}
	}
	stop()

	var diffs []string
	var first string
	addDiff := func(label string, want textform.Pattern, got []byte) {
		ok, mm := want.Match(got)
		if ok {
			return
		}
		d := fmt.Sprintf("%s: %s", label, mm.Describe(got))
		if first == "" {
			first = d
		}
		diffs = append(diffs, fmt.Sprintf("%s\n--- received by %s, in case-file form:\n%s", d, label, Escape(got)))
	}
	for _, name := range run.order {
		got, _ := run.conns[name].rec.snapshot()
		label := "client"
		if name != "" {
			label = "client " + name
		}
		addDiff(label, c.WantClient[name], got)
	}
	if up != nil {
		recs := up.records()
		for i := range max(len(recs), len(c.WantUpstream)) {
			var got []byte
			if i < len(recs) {
				got, _ = recs[i].snapshot()
			}
			want := textform.Pattern{}
			if i < len(c.WantUpstream) {
				want = c.WantUpstream[i]
			}
			label := "upstream"
			if i > 0 || len(recs) > 1 {
				label = fmt.Sprintf("upstream connection %d", i+1)
			}
			addDiff(label, want, got)
		}
	}
	var problems []string
	if up != nil && c.WantUpstreamConns >= 0 {
		if n := len(up.records()); n != c.WantUpstreamConns {
			d := fmt.Sprintf("upstream: %d connections accepted, want %d", n, c.WantUpstreamConns)
			if first == "" {
				first = d
			}
			diffs = append(diffs, d)
		}
	}
	if scriptErr != nil {
		problems = append(problems, scriptErr.Error())
	}
	problems = append(problems, hang...)
	if len(diffs) == 0 && len(problems) == 0 {
		res.Status = Pass
		return res
	}
	res.Status = Fail
	switch {
	case first != "":
		res.Reason = first
	default:
		res.Reason = problems[0]
	}
	var detail strings.Builder
	for _, d := range diffs {
		detail.WriteString(d)
		detail.WriteString("\n")
	}
	for _, p := range problems {
		fmt.Fprintf(&detail, "%s\n", p)
	}
	for _, w := range warnings {
		fmt.Fprintf(&detail, "note: %s\n", w)
	}
	if implLog != "" {
		fmt.Fprintf(&detail, "--- implementation output:\n%s\n", implLog)
	}
	res.Detail = detail.String()
	return res
}

// FormatTable writes results as a plain-text table: case, rule, result,
// first difference (or why skipped), with a count line at the end.
func FormatTable(impl string, results []Result) string {
	const reasonWidth = 110
	nameW, ruleW := len("case"), len("rule")
	for _, r := range results {
		nameW = max(nameW, len(r.Case.Name))
		ruleW = max(ruleW, utf8.RuneCountInString(ruleText(r.Case)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "conformance results for %s\n", impl)
	row := func(name, rule, status, reason string) {
		fmt.Fprintf(&b, "%-*s  %-*s  %-7s  %s\n", nameW, name, ruleW, rule, status, reason)
	}
	row("case", "rule", "result", "first difference")
	counts := map[Status]int{}
	for _, r := range results {
		counts[r.Status]++
		reason := r.Reason
		if utf8.RuneCountInString(reason) > reasonWidth {
			reason = string([]rune(reason)[:reasonWidth]) + "…"
		}
		row(r.Case.Name, ruleText(r.Case), string(r.Status), reason)
	}
	fmt.Fprintf(&b, "%d cases: %d pass, %d fail, %d skipped\n", len(results), counts[Pass], counts[Fail], counts[Skip])
	return b.String()
}

func ruleText(c *Case) string { return strings.Join(c.Rules, "; ") }

// SortResults orders results by case name.
func SortResults(results []Result) {
	slices.SortFunc(results, func(a, b Result) int { return strings.Compare(a.Case.Name, b.Case.Name) })
}

// InProcess adapts a function that serves the proxy on a listener, so the
// runner can drive an implementation inside the test binary.
type InProcess struct {
	Label string
	// Serve starts serving the case's configuration on ln, relaying to
	// upstream, and returns a function that stops it and returns its log.
	Serve func(ln net.Listener, c *Case, upstream string) (stop func() string, err error)
}

// Name implements Implementation.
func (p InProcess) Name() string { return p.Label }

// Start implements Implementation.
func (p InProcess) Start(ctx context.Context, c *Case, upstream string) (Instance, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for %s: %w", p.Label, err)
	}
	stop, err := p.Serve(ln, c, upstream)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &inProcessInstance{addr: ln.Addr().String(), stop: stop}, nil
}

type inProcessInstance struct {
	addr string
	stop func() string
}

func (i *inProcessInstance) Addr() string { return i.addr }
func (i *inProcessInstance) Stop() string { return i.stop() }
