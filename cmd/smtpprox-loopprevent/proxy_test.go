package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"

	"github.com/emersion/go-smtp"
	"github.com/google/go-cmp/cmp"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

func TestParseArgs(t *testing.T) {
	o, err := parseArgs([]string{"-dry-run", "127.0.0.1:10025", "-bare-lf=reject", "[::1]:10026",
		"--drop-ehlo-keyword", "etrn,vrfy", "-drop-ehlo-keyword=dsn", "--max-sessions", "7",
		"-client-data-timeout=1m", "--debugtrace=/tmp/t", "-log-format", "json", "-log-level=debug",
		"-metrics-listen=127.0.0.1:9125"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if o.listen != "127.0.0.1:10025" || c.Upstream != "[::1]:10026" || !c.DryRun || c.BareLF != smtpproxy.BareLFReject ||
		c.MaxSessions != 7 || c.DataIdleTimeout != time.Minute || c.DebugTrace != "/tmp/t" || o.logFormat != "json" ||
		o.logLevel.String() != "DEBUG" || len(o.warnings) != 0 || o.metricsListen != "127.0.0.1:9125" {
		t.Fatalf("parsed %+v", o)
	}
	if diff := cmp.Diff([]string{"ETRN", "VRFY", "DSN"}, c.DropEHLOKeywords); diff != "" {
		t.Fatalf("keywords (-want +got):\n%s", diff)
	}
	// Defaults of SPEC section 6.
	o, err = parseArgs([]string{"unix:/run/in.sock", "unix:/run/out.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c = o.cfg
	if c.ConnectTimeout != 30*time.Second || c.ReplyTimeout != 90*time.Second || c.CommandTimeout != 300*time.Second ||
		c.DataIdleTimeout != 180*time.Second || c.DrainTimeout != 30*time.Second || c.MaxSessions != 1000 ||
		c.MaxHeaderBytes != 1<<20 || c.DryRun || c.BareLF != smtpproxy.BareLFNormalize || o.logFormat != "text" ||
		o.metricsListen != "" {
		t.Fatalf("defaults %+v", o)
	}
}

func TestParseArgsErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "want two addresses, LISTEN and UPSTREAM; got none"},
		{[]string{"127.0.0.1:1"}, `want two addresses, LISTEN and UPSTREAM; got one ("127.0.0.1:1")`},
		{[]string{"127.0.0.1:1", "127.0.0.1:2", "extra"}, `got 3 (["127.0.0.1:1" "127.0.0.1:2" "extra"])`},
		{[]string{"10025", "127.0.0.1:2"}, "host:port"},
		{[]string{"127.0.0.1:1", "::1:2"}, "brackets"},
		{[]string{"-bare-lf=maybe", "a:1", "b:2"}, "-bare-lf must be normalize or reject"},
		{[]string{"-log-format=xml", "a:1", "b:2"}, "-log-format"},
		{[]string{"-log-level=loud", "a:1", "b:2"}, "-log-level"},
		{[]string{"-max-sessions=0", "a:1", "b:2"}, "-max-sessions must be positive"},
		{[]string{"-max-header-bytes=10", "a:1", "b:2"}, "-max-header-bytes must be at least"},
		{[]string{"-max-header-memory=1000000", "a:1", "b:2"}, "-max-header-memory must hold one maximal header section: at least 1056770"},
		{[]string{"-drain-timeout=-1s", "a:1", "b:2"}, "-drain-timeout must be positive"},
		{[]string{"-postfix-config=/etc/postfix", "-expansion-wait=100s", "a:1", "b:2"}, "-expansion-wait must be at most 1m0s"},
		{[]string{"-postfix-config=/etc/postfix", "-expansion-wait=0s", "a:1", "b:2"}, "-expansion-wait must be positive"},
		{[]string{"-no-such-flag", "a:1", "b:2"}, "flag provided but not defined"},
		{[]string{"-metrics-listen=9125", "a:1", "b:2"}, "-metrics-listen: "},
		{[]string{"-client-command-timeout=soon", "a:1", "b:2"}, "invalid value"},
		{[]string{"-allow-client=10.0.0.1/8", "a:1", "b:2"}, "host bits set"},
		{[]string{"-allow-client=example.org", "a:1", "b:2"}, "not an IP address or a network prefix"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		_, err := parseArgs(c.args, &stderr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseArgs(%q) = %v, want an error containing %q", c.args, err, c.want)
		}
	}
	// The command exits 2 with a clear message.
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-bare-lf=maybe", "a:1", "b:2"}, nil, io.Discard, &stderr); code != exitUsage {
		t.Fatalf("exit %d, want %d", code, exitUsage)
	}
	if !strings.Contains(stderr.String(), "smtpprox-loopprevent: -bare-lf must be normalize or reject") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

// The Perl original's pool flags are accepted in both spellings, with one
// warning for all of them.
func TestPerlCompatFlagsOneWarning(t *testing.T) {
	o, err := parseArgs([]string{"--children=16", "--minperchild", "5", "--maxperchild=100", "127.0.0.1:10025", "127.0.0.1:10026"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.warnings) != 1 || !strings.Contains(o.warnings[0], "--children, --maxperchild, --minperchild") {
		t.Fatalf("warnings %q", o.warnings)
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, nil, io.Discard, &stderr); code != exitOK {
		t.Fatalf("-h exit %d", code)
	}
	help := stderr.String()
	for _, want := range []string{
		"LISTEN UPSTREAM", "check -rcpt",
		"-upstream-connect-timeout duration", "(default 30s)",
		"-upstream-reply-timeout duration", "(default 1m30s)",
		"-client-command-timeout duration", "(default 5m0s)",
		"-client-data-timeout duration", "(default 3m0s)",
		"-drain-timeout duration", "-max-sessions int", "(default 1000)",
		"-max-header-bytes int", "(default 1048576)", "-dry-run", "-bare-lf MODE", `(default "normalize")`,
		"-drop-ehlo-keyword KEYWORD", "-log-format string", "-log-level string", "-debugtrace PREFIX", "-metrics-listen ADDR",
		"-children int", "-minperchild int", "-maxperchild int",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("-h output lacks %q", want)
		}
	}
}

// recordingBackend is a go-smtp upstream that keeps the messages.
type recordingBackend struct {
	mu       sync.Mutex
	messages []string
}

type recordingSession struct{ be *recordingBackend }

func (be *recordingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return recordingSession{be}, nil
}
func (recordingSession) Reset()                               {}
func (recordingSession) Logout() error                        { return nil }
func (recordingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (recordingSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s recordingSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.be.mu.Lock()
	s.be.messages = append(s.be.messages, string(b))
	s.be.mu.Unlock()
	return err
}

func startUpstream(t *testing.T) (*recordingBackend, string) {
	be := &recordingBackend{}
	srv := smtp.NewServer(be)
	srv.Domain = "after.example"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return be, ln.Addr().String()
}

// waitForSocket waits until the proxy listens on path.
func waitForSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second) // a hang guard, not a timing assertion
	for {
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy never listened on %s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The command wired end to end, in process: a loop refused, a message
// passed, logs in JSON on stderr, a transcript written, and a clean exit
// when its context (the signal) ends.
func TestRunProxyEndToEnd(t *testing.T) {
	be, up := startUpstream(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "proxy.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--children=4", "-log-format=json", "--debugtrace=" + filepath.Join(dir, "trace"), "unix:" + sock, up}, nil, io.Discard, &stderr)
	}()
	waitForSocket(t, sock)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	if err := c.Hello("front.example"); err != nil {
		t.Fatal(err)
	}
	err = c.SendMail("s@example.org", []string{"u@example.net"}, strings.NewReader("Delivered-To: U@example.net\r\n\r\nloop\r\n"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 {
		t.Fatalf("loop: %v", err)
	}
	msg := "Subject: fine\r\n\r\nhello\r\n"
	if err := c.SendMail("s@example.org", []string{"u@example.net"}, strings.NewReader(msg)); err != nil {
		t.Fatalf("pass: %v", err)
	}
	c.Quit()
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d after shutdown; stderr:\n%s", code, stderr.String())
	}
	logs := stderr.String()
	if strings.Count(logs, "ignoring --children") != 1 || !strings.Contains(logs, `"verdict":"loop"`) ||
		!strings.Contains(logs, `"verdict":"pass"`) || !strings.Contains(logs, `"msg":"stopped"`) {
		t.Fatalf("logs:\n%s", logs)
	}
	be.mu.Lock()
	if len(be.messages) != 1 || be.messages[0] != msg {
		t.Fatalf("upstream messages %q", be.messages)
	}
	be.mu.Unlock()
	// One transcript per session: waitForSocket's probe made one too.
	traces, _ := filepath.Glob(filepath.Join(dir, "trace.*"))
	found := false
	for _, f := range traces {
		b, _ := os.ReadFile(f)
		found = found || strings.Contains(string(b), `C>P "EHLO front.example\r\n"`)
	}
	if len(traces) != 2 || !found {
		t.Fatalf("transcripts %v (the session's found: %v)", traces, found)
	}
}
