package core

import (
	"flag"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"
	"golang.org/x/tools/txtar"
)

// The seed corpora of FuzzSession and FuzzFramer (testdata/fuzz/...) and
// the realistic-message seeds of ../../fuzz are generated, then
// committed: run
//
//	go test ./smtpproxy/core -run TestGenerateSeeds -update-seeds
//
// after the conformance cases change. Each conformance case becomes a
// FuzzSession seed: the bytes its client sends on its first connection,
// an upstream script that answers each command and message the way the
// case's scripted upstream does (approximately: the fuzz upstream has a
// repertoire of ops, not free text; see acts_test.go), and its
// configuration. Each message file a case sends becomes a FuzzFramer
// seed. The realistic messages below become seeds of the session, framer,
// header and verdict targets.
// maxSeedBytes bounds a generated seed: the fuzzer mutates and replays
// seeds constantly, and a few conformance cases send megabytes.
const maxSeedBytes = 64 << 10

var updateSeeds = flag.Bool("update-seeds", false, "write the fuzz seed corpora from ../../conformance/testdata and the realistic messages")

func TestGenerateSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("the seed generator runs with -update-seeds")
	}
	cases, err := filepath.Glob("../../conformance/testdata/*.txt")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no conformance cases: %v", err)
	}
	sessionDir := filepath.Join("testdata", "fuzz", "FuzzSession")
	framerDir := filepath.Join("testdata", "fuzz", "FuzzFramer")
	for _, dir := range []string{sessionDir, framerDir} {
		old, _ := filepath.Glob(filepath.Join(dir, "conf-*"))
		old2, _ := filepath.Glob(filepath.Join(dir, "real-*"))
		for _, f := range append(old, old2...) {
			os.Remove(f)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	written := 0
	for _, path := range cases {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(path), ".txt")
		seed, messages, err := convertCase(txtar.Parse(data))
		if err != nil {
			t.Logf("%s: skipped: %v", name, err)
			continue
		}
		if len(seed.client) > maxSeedBytes {
			// Limit cases (megabyte lines and headers) stay with the
			// conformance suite: as seeds they would slow every exec.
			t.Logf("%s: skipped: %d bytes", name, len(seed.client))
			continue
		}
		writeSeed(t, filepath.Join(sessionDir, "conf-"+name),
			fmt.Sprintf("[]byte(%q)", seed.client), fmt.Sprintf("[]byte(%q)", seed.script),
			fmt.Sprintf("uint64(%d)", nameSeed(name)), fmt.Sprintf("byte(%q)", seed.opts))
		written++
		for i, m := range messages {
			writeSeed(t, filepath.Join(framerDir, fmt.Sprintf("conf-%s-%d", name, i)),
				fmt.Sprintf("[]byte(%q)", m), fmt.Sprintf("uint64(%d)", nameSeed(name)+uint64(i)), "uint16(0)")
		}
	}
	for i, m := range realisticMessages() {
		wire := stuffMessage(m.text)
		session := "EHLO client.example\r\nMAIL FROM:<" + m.from + "> SIZE=" + strconv.Itoa(len(wire)) + "\r\n"
		for _, r := range m.rcpts {
			session += "RCPT TO:<" + r + ">\r\n"
		}
		session += "DATA\r\n" + wire + "QUIT\r\n"
		writeSeed(t, filepath.Join(sessionDir, "real-"+m.name), fmt.Sprintf("[]byte(%q)", session), `[]byte("")`,
			fmt.Sprintf("uint64(%d)", nameSeed(m.name)), fmt.Sprintf("byte(%q)", byte(i%2)<<2))
		writeSeed(t, filepath.Join(framerDir, "real-"+m.name), fmt.Sprintf("[]byte(%q)", wire),
			fmt.Sprintf("uint64(%d)", nameSeed(m.name)), "uint16(0)")
		writeSeed(t, filepath.Join("..", "..", "fuzz", "testdata", "fuzz", "FuzzHeader", "real-"+m.name),
			fmt.Sprintf("[]byte(%q)", m.text), fmt.Sprintf("uint64(%d)", nameSeed(m.name)))
		writeSeed(t, filepath.Join("..", "..", "fuzz", "testdata", "fuzz", "FuzzHeaderTextproto", "real-"+m.name),
			fmt.Sprintf("[]byte(%q)", m.text))
		local, domain, _ := strings.Cut(m.rcpts[0], "@")
		writeSeed(t, filepath.Join("..", "..", "fuzz", "testdata", "fuzz", "FuzzVerdict", "real-"+m.name),
			fmt.Sprintf("string(%q)", local), fmt.Sprintf("string(%q)", domain), fmt.Sprintf("[]byte(%q)", m.text))
	}
	t.Logf("%d of %d conformance cases and %d realistic messages written as seeds", written, len(cases), len(realisticMessages()))
}

func writeSeed(t *testing.T, path string, values ...string) {
	t.Helper()
	body := "go test fuzz v1\n" + strings.Join(values, "\n") + "\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func nameSeed(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// stuffMessage writes message text (LF line ends) as a client sends it:
// CRLF lines, dot-stuffed, ended by the end of data.
func stuffMessage(text string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimSuffix(text, "\n"), "\n") {
		l = strings.TrimSuffix(l, "\n")
		if strings.HasPrefix(l, ".") {
			b.WriteString(".")
		}
		b.WriteString(l + "\r\n")
	}
	b.WriteString(".\r\n")
	return b.String()
}

// sessionSeed is one FuzzSession input.
type sessionSeed struct {
	client, script []byte
	opts           byte
}

// convertCase turns a conformance case into a FuzzSession seed and the
// message files it sends.
func convertCase(a *txtar.Archive) (seed sessionSeed, messages [][]byte, err error) {
	files := map[string]string{}
	for _, f := range a.Files {
		files[f.Name] = string(f.Data)
	}
	// Configuration.
	end := byte(0)
	for _, line := range strings.Split(files["config"], "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		switch k {
		case "bare-lf":
			if v == "reject" {
				seed.opts |= 1
			}
		case "dry-run":
			if v == "true" {
				seed.opts |= 2
			}
		case "max-header-bytes":
			n, _ := strconv.Atoi(v)
			seed.opts |= byte(nearestLimit(n)) << 2
		case "drop-ehlo-keywords":
			seed.opts |= 16
		case "command-timeout", "data-timeout":
			end = 1 // its client waits for the proxy to time out
		}
	}
	// The client's bytes on its first connection.
	current := "main"
	timeoutWait := false
	for _, step := range strings.Split(files["client"], "\n") {
		op, arg, _ := strings.Cut(step, " ")
		switch op {
		case "send":
			if current == "main" {
				b, err := textform.Decode(arg + "\n")
				if err != nil {
					return seed, nil, err
				}
				seed.client = append(seed.client, b...)
			}
		case "send-file":
			if current == "main" {
				b, err := textform.Decode(files[arg])
				if err != nil {
					return seed, nil, err
				}
				seed.client = append(seed.client, b...)
				messages = append(messages, b)
			}
		case "connect", "use":
			current = arg
		case "closed":
			timeoutWait = current == "main"
		case "close", "shutdown":
			if current == "main" {
				timeoutWait = false
			}
		}
	}
	if end == 1 && !timeoutWait {
		end = 0
	}
	seed.opts |= end << 5
	seed.script, err = convertUpstream(files["upstream"], files["want-upstream"])
	return seed, messages, err
}

// nearestLimit picks FuzzSession's header limit option nearest to n.
func nearestLimit(n int) int {
	best, bestDist := 0, math.Inf(1)
	for i, l := range []int{DefaultMaxHeaderBytes, 256, 64, 4096} {
		if d := math.Abs(math.Log(float64(max(n, 1)) / float64(l))); d < bestDist {
			best, bestDist = i, d
		}
	}
	return best
}

// upRule is one rule of a conformance upstream script.
type upRule struct {
	greeting   bool
	match      string // VERB, VERB#N, *#N, content, content#N
	mode       string // "", close, stall, close-after
	closeAfter int
	reply      []byte
}

// convertUpstream maps a conformance upstream script onto the fuzz
// upstream's op bytes, one per unit the upstream reads (the units being
// read off the case's want-upstream).
func convertUpstream(script, wantUp string) ([]byte, error) {
	var rules []*upRule
	var cur *upRule
	for _, line := range strings.Split(script, "\n") {
		if strings.HasPrefix(line, "  ") && cur != nil {
			b, err := textform.Decode(line[2:] + "\n")
			if err != nil {
				return nil, err
			}
			cur.reply = append(cur.reply, b...)
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		cur = &upRule{}
		switch f[0] {
		case "down":
			cur.greeting, cur.mode = true, "close"
		case "greeting":
			cur.greeting = true
			if len(f) > 1 {
				cur.mode = f[1]
			}
		case "on":
			if len(f) < 2 {
				return nil, fmt.Errorf("bad upstream rule %q", line)
			}
			cur.match = f[1]
			if len(f) > 2 {
				cur.mode = f[2]
			}
			if cur.mode == "close-after" && len(f) > 3 {
				cur.closeAfter, _ = strconv.Atoi(f[3])
			}
		default:
			return nil, fmt.Errorf("unknown upstream rule %q", line)
		}
		rules = append(rules, cur)
	}
	// The units the upstream reads, from want-upstream.
	var up []byte
	for _, line := range strings.Split(strings.TrimSuffix(wantUp, "\n"), "\n") {
		line = strings.TrimPrefix(line, "{optional}")
		line = strings.ReplaceAll(line, "{any-text}", "")
		if i := strings.Index(line, "{prefix}"); i >= 0 {
			b, err := textform.Decode(line[:i] + `\` + "\n")
			if err != nil {
				return nil, err
			}
			up = append(up, b...)
			break
		}
		b, err := textform.Decode(line + "\n")
		if err != nil {
			return nil, err
		}
		up = append(up, b...)
	}
	ops := []byte{greetingOp(rules)}
	perVerb := map[string]int{}
	commands, contents := 0, 0
	lines := strings.SplitAfter(string(up), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimRight(lines[i], "\r\n")
		if line == "" && i == len(lines)-1 {
			break
		}
		verb, _, _ := strings.Cut(line, " ")
		verb = asciiUpper(verb)
		commands++
		perVerb[verb]++
		r := findRule(rules, verb, perVerb[verb], commands)
		op := ruleOp(r, verb)
		// Did the upstream answer 354, so that message data follows?
		var opens bool
		switch {
		case r == nil:
			opens = verb == "DATA"
		case r.mode == "stall" || r.mode == "close":
		default:
			opens = endsIn354(r.reply) || len(r.reply) == 0 && verb == "DATA"
		}
		if c := findContentRule(rules, contents+1); opens && c != nil && c.mode == "close-after" {
			op = byte(opCloseAfter) | byte(min(15, max(0, (c.closeAfter-1)/13)))<<4
		}
		ops = append(ops, op)
		if !opens {
			continue
		}
		// Message data up to its end.
		contents++
		for i++; i < len(lines) && strings.TrimRight(lines[i], "\r\n") != "."; i++ {
		}
		ops = append(ops, ruleOp(findContentRule(rules, contents), "content"))
	}
	for len(ops) > 0 && ops[len(ops)-1] == 0 {
		ops = ops[:len(ops)-1]
	}
	return ops, nil
}

func greetingOp(rules []*upRule) byte {
	for _, r := range rules {
		if r.greeting {
			return ruleOp(r, "greeting")
		}
	}
	return 0
}

func findRule(rules []*upRule, verb string, nth, overall int) *upRule {
	for _, r := range rules {
		if r.greeting {
			continue
		}
		m, n, hasN := strings.Cut(r.match, "#")
		want, _ := strconv.Atoi(n)
		switch {
		case m == "*" && hasN && want == overall:
			return r
		case asciiUpper(m) == verb && (!hasN || want == nth):
			return r
		}
	}
	return nil
}

func findContentRule(rules []*upRule, nth int) *upRule {
	for _, r := range rules {
		m, n, hasN := strings.Cut(r.match, "#")
		want, _ := strconv.Atoi(n)
		if m == "content" && (!hasN || want == nth) {
			return r
		}
	}
	return nil
}

// ruleOp is the fuzz op nearest to what a rule makes the upstream do.
func ruleOp(r *upRule, verb string) byte {
	if r == nil {
		return byte(opDefault)
	}
	switch r.mode {
	case "stall":
		return byte(opStall)
	case "close":
		if len(r.reply) == 0 {
			return byte(opClose)
		}
		if rr, _, st := parseRefReply(r.reply); st == replyOK && rr.code == 421 {
			return byte(op421)
		}
		return byte(opReplyClose)
	case "close-after":
		return byte(opDefault)
	}
	if len(r.reply) == 0 {
		return byte(opDefault)
	}
	rr, _, st := parseRefReply(r.reply)
	if st != replyOK {
		return byte(opMalformed)
	}
	switch {
	case rr.code == 354 && verb == "DATA":
		return byte(opDefault)
	case rr.code == 354:
		return byte(op354)
	case rr.code == 334:
		return byte(op334)
	case rr.code == 421:
		return byte(op421)
	case rr.code/100 == 4:
		return byte(opTempFail)
	case rr.code/100 == 5:
		return byte(opPermFail)
	case len(rr.lines) > 1:
		return byte(opMultiline)
	}
	return byte(opDefault)
}
