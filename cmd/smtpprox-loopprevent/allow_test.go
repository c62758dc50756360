package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/syncbuf"
)

// A listener other hosts can reach needs an explicit -allow-client: the
// command refuses to start, exits 2 and says why and how to allow it.
func TestReachableListenNeedsAllowClient(t *testing.T) {
	listens := []struct{ addr, want string }{
		{"0.0.0.0:0", "every interface"},
		{"[::]:0", "every interface"},
	}
	if ip := routableAddr(t); ip != "" {
		listens = append(listens, struct{ addr, want string }{net.JoinHostPort(ip, "0"), "not a loopback address"})
	} else {
		t.Log("this machine has no non-loopback address; the wildcard cases stand for it")
	}
	for _, l := range listens {
		var stderr bytes.Buffer
		code := run(context.Background(), []string{l.addr, "127.0.0.1:10026"}, nil, io.Discard, &stderr)
		if code != exitUsage {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", l.addr, code, exitUsage, stderr.String())
			continue
		}
		msg := stderr.String()
		for _, want := range []string{l.want, "without -allow-client", "relay mail", "XFORWARD", "-allow-client CIDR"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: the message lacks %q:\n%s", l.addr, want, msg)
			}
		}
		if n := strings.Count(msg, "\n"); n != 1 {
			t.Errorf("%s: the message has %d lines, want one:\n%s", l.addr, n, msg)
		}
	}
}

// routableAddr is one of this machine's non-loopback IPv4 addresses, or "".
func routableAddr(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Logf("interface addresses: %v", err)
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
}

// With an explicit list the proxy listens on every interface, logs the
// list at start, and refuses a loopback peer that is not in it.
func TestExplicitAllowClientStarts(t *testing.T) {
	_, up := startUpstream(t)
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-log-format=json", "-allow-client", "192.0.2.0/24,127.0.0.1/32", "0.0.0.0:" + port, up}, nil, io.Discard, &stderr)
	}()
	addr := net.JoinHostPort("127.0.0.1", port)
	conn := dialWhenUp(t, addr, nil)
	greeting, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if !strings.HasPrefix(greeting, "220 ") {
		t.Errorf("allowed peer 127.0.0.1: greeting %q", greeting)
	}
	other := dialWhenUp(t, addr, &net.TCPAddr{IP: net.ParseIP("127.0.0.2")})
	refused, _ := io.ReadAll(other)
	other.Close()
	if got, want := string(refused), "554 5.7.1 not authorized to use this service\r\n"; got != want {
		t.Errorf("peer 127.0.0.2: got %q, want %q", got, want)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	var listening map[string]any
	for line := range strings.Lines(stderr.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "listening" {
			listening = rec
		}
	}
	if listening == nil || listening["allow_client"] != "192.0.2.0/24,127.0.0.1/32" {
		t.Fatalf("no listening line naming the allowed clients; logs:\n%s", stderr.String())
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// dialWhenUp dials addr (from local, when set) until the command listens.
func dialWhenUp(t *testing.T, addr string, local net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: local}
	deadline := time.Now().Add(20 * time.Second) // a hang guard, not a timing assertion
	for {
		conn, err := d.Dial("tcp", addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hang guard
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A flag error is one line and a hint, not the whole usage.
func TestFlagErrorIsOneLine(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-no-such-flag", "a:1", "b:2"}, nil, io.Discard, &stderr); code != exitUsage {
		t.Fatalf("exit %d", code)
	}
	want := "smtpprox-loopprevent: flag provided but not defined: -no-such-flag\nRun with -h for usage.\n"
	if got := stderr.String(); got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
}

// A Unix-domain LISTEN socket gets -socket-mode (default 0660): its file
// mode, not -allow-client, says who may connect.
func TestSocketMode(t *testing.T) {
	_, up := startUpstream(t)
	for _, tc := range []struct {
		args []string
		want os.FileMode
	}{
		{nil, 0o660},
		{[]string{"-socket-mode", "0600"}, 0o600},
	} {
		sock := filepath.Join(t.TempDir(), "proxy.sock")
		ctx, cancel := context.WithCancel(context.Background())
		var stderr syncbuf.Buffer
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, append(tc.args, "unix:"+sock, up), nil, io.Discard, &stderr)
		}()
		waitForSocket(t, sock)
		fi, err := os.Stat(sock)
		cancel()
		if code := <-done; code != exitOK {
			t.Fatalf("%q: exit %d; stderr:\n%s", tc.args, code, stderr.String())
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tc.want {
			t.Errorf("%q: socket mode %v, want %v", tc.args, got, tc.want)
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-socket-mode", "0999", "unix:/x", up}, nil, io.Discard, &stderr); code != exitUsage ||
		!strings.Contains(stderr.String(), "-socket-mode must be an octal file mode") {
		t.Errorf("-socket-mode 0999: exit %d, stderr %q", code, stderr.String())
	}
}

// -exempt-client takes CIDRs as -allow-client does; -exempt-sasl is the
// milter's alone, and the proxy says why.
func TestProxyExemptFlags(t *testing.T) {
	o, err := parseArgs([]string{"-exempt-client", "192.0.2.0/24,2001:db8::/32", "127.0.0.1:10025", "127.0.0.1:10026"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.cfg.ExemptClients.String(); got != "192.0.2.0/24,2001:db8::/32" {
		t.Errorf("exempt clients %q", got)
	}
	if o, _ := parseArgs([]string{"127.0.0.1:10025", "127.0.0.1:10026"}, io.Discard); o.cfg.ExemptClients != nil {
		t.Errorf("exempt clients without the flag: %q", o.cfg.ExemptClients)
	}
	_, err = parseArgs([]string{"-exempt-sasl", "127.0.0.1:10025", "127.0.0.1:10026"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-exempt-sasl works only for the milter") || !strings.Contains(err.Error(), "XFORWARD") {
		t.Errorf("-exempt-sasl for the proxy: %v", err)
	}
}
