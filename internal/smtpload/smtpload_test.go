package smtpload

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func startSink(t *testing.T) *Sink {
	t.Helper()
	s := NewSink(listen(t))
	t.Cleanup(func() { s.Close() })
	return s
}

func TestDataScannerAnyCut(t *testing.T) {
	cases := []struct {
		data string
		n    int // bytes before the final line
	}{
		{".\r\n", 0},
		{"a\r\n.\r\n", 3},
		{"..x\r\n.\r\n", 5},         // a stuffed line is not the end
		{"a\r\n.x\r\n.\r\n", 7},     // nor is a line that only starts with "."
		{".\rx\r\n.\r\n", 5},        // nor ".\r" followed by more
		{"a\n.\n", 2},               // LF alone is taken too
		{"x.\r\n\r\n.\r\n", 6},      // a dot inside a line is content
		{"a\r\n.\r\ntrailing", 3},   // bytes after the end are not data
		{"a\r\n..\r\n\r\n.\r\n", 9}, // ".." line, empty line, end
	}
	for _, c := range cases {
		for cut := 0; cut <= len(c.data); cut++ {
			var d dataScanner
			n := d.scan([]byte(c.data[:cut]))
			if !d.end {
				n += d.scan([]byte(c.data[cut:]))
			}
			if !d.end {
				t.Errorf("%q cut at %d: end not seen", c.data, cut)
				continue
			}
			if got := int64(n) - finalDotLen(d); got != int64(c.n) {
				t.Errorf("%q cut at %d: %d data bytes, want %d", c.data, cut, got, c.n)
			}
		}
	}
	var d dataScanner
	d.scan([]byte("a\r\n..\r\n.x\r\n"))
	if d.end {
		t.Error("end seen in data without a final line")
	}
}

func TestMessageShape(t *testing.T) {
	sizes := []int{0, 100, 1 << 20}
	for k := range 80 { // every remainder of the 78-octet body line
		sizes = append(sizes, 10<<10+k)
	}
	for _, size := range sizes {
		m := Message(size, "X-Extra: yes\r\n")
		if size >= 1024 && len(m) != size {
			t.Errorf("Message(%d) has %d bytes", size, len(m))
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) {
			t.Errorf("Message(%d) does not end in CRLF", size)
		}
		if !bytes.Contains(m, []byte("X-Extra: yes\r\n\r\n")) {
			t.Errorf("Message(%d): extra header not at the end of the header section", size)
		}
		for _, line := range bytes.SplitAfter(m, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			if line[0] == '.' || !bytes.HasSuffix(line, []byte("\r\n")) || bytes.Count(line, []byte("\r")) != 1 {
				t.Fatalf("Message(%d): line %q is not a plain CRLF line", size, line)
			}
		}
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {100, 10}, {10, 1}, {11, 2}} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

func TestLoadToSink(t *testing.T) {
	for _, perConn := range []int{1, 3} {
		s := startSink(t)
		msg := Message(10<<10, "")
		l := &Load{Addr: s.Addr(), Message: msg, Concurrency: 2, PerConn: perConn}
		res, err := l.Run(context.Background(), 7)
		if err != nil {
			t.Fatalf("per-conn %d: %v", perConn, err)
		}
		if res.Accepted != 7 || res.Rejected != 0 || s.Messages() != 7 {
			t.Fatalf("per-conn %d: accepted %d rejected %d, sink has %d", perConn, res.Accepted, res.Rejected, s.Messages())
		}
		if got, want := s.Bytes(), int64(7*len(msg)); got != want {
			t.Errorf("per-conn %d: sink got %d bytes, want %d", perConn, got, want)
		}
		if res.LastReply != strings.TrimSuffix(sinkQueued, "\r\n") {
			t.Errorf("per-conn %d: last reply %q", perConn, res.LastReply)
		}
		// Two workers share 7 messages; each closes after perConn or at
		// the last message.
		if n := s.Sessions(); perConn == 1 && n != 7 || perConn == 3 && (n < 3 || n > 5) {
			t.Errorf("per-conn %d: %d sessions", perConn, n)
		}
		for i, d := range res.Latencies {
			if d <= 0 {
				t.Fatalf("per-conn %d: message %d has no latency", perConn, i)
			}
		}
	}
}

func TestLoadThroughRelay(t *testing.T) {
	for _, c := range []struct {
		name    string
		bufSize int // 0: the splice relay
	}{{"splice", 0}, {"copy", 64 << 10}, {"copy-small-buffer", 512}} {
		t.Run(c.name, func(t *testing.T) {
			s := startSink(t)
			var r *Relay
			if c.bufSize == 0 {
				r = NewRelay(listen(t), s.Addr())
			} else {
				r = NewCopyRelay(listen(t), s.Addr(), c.bufSize)
			}
			t.Cleanup(func() { r.Close() })
			msg := Message(200<<10, "")
			l := &Load{Addr: r.Addr(), Message: msg, Concurrency: 3, WaitQuit: true}
			res, err := l.Run(context.Background(), 6)
			if err != nil {
				t.Fatal(err)
			}
			if res.Accepted != 6 || s.Messages() != 6 || s.Bytes() != int64(6*len(msg)) {
				t.Fatalf("accepted %d; sink has %d messages, %d bytes", res.Accepted, s.Messages(), s.Bytes())
			}
			if r.Sessions() != 6 {
				t.Errorf("relay carried %d sessions, want 6", r.Sessions())
			}
			r.Close() // the sessions end, and their counts are in
			// The copying relay reads every byte into its buffers: the
			// messages, the commands and the replies.
			if c.bufSize > 0 && r.Buffered() <= int64(6*len(msg)) {
				t.Errorf("copying relay read %d bytes into its buffers, want more than the %d of the messages", r.Buffered(), 6*len(msg))
			}
		})
	}
}

// TestLoadSendsLikePostfix checks the dialogue against a scripted server:
// XFORWARD only when offered, MAIL with its parameters, no pipelining
// (each command after the previous reply), QUIT last.
func TestLoadSendsLikePostfix(t *testing.T) {
	for _, offer := range []bool{true, false} {
		ln := listen(t)
		got := make(chan []string, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			var cmds []string
			conn.Write([]byte("220 x\r\n"))
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					got <- cmds
					return
				}
				if r.Buffered() > 0 && !strings.HasPrefix(line, "DATA") {
					cmds = append(cmds, "PIPELINED")
				}
				cmd := strings.TrimRight(line, "\r\n")
				cmds = append(cmds, strings.Fields(cmd)[0])
				switch {
				case strings.HasPrefix(cmd, "EHLO") && offer:
					conn.Write([]byte("250-x\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR\r\n"))
				case strings.HasPrefix(cmd, "DATA"):
					conn.Write([]byte("354 go\r\n"))
					for {
						l, err := r.ReadString('\n')
						if err != nil || l == ".\r\n" {
							break
						}
					}
					conn.Write([]byte("250 ok\r\n"))
				case cmd == "QUIT":
					conn.Write([]byte("221 bye\r\n"))
				case strings.HasPrefix(cmd, "MAIL") && !strings.Contains(cmd, "SIZE="):
					conn.Write([]byte("555 no SIZE\r\n"))
				default:
					conn.Write([]byte("250 ok\r\n"))
				}
			}
		}()
		l := &Load{Addr: ln.Addr().String(), Message: Message(2000, "")}
		if _, err := l.Run(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		want := "EHLO XFORWARD MAIL RCPT DATA QUIT"
		if !offer {
			want = "EHLO MAIL RCPT DATA QUIT"
		}
		if cmds := strings.Join(<-got, " "); cmds != want {
			t.Errorf("XFORWARD offered %v: commands %q, want %q", offer, cmds, want)
		}
		ln.Close()
	}
}

// TestLoadFailsOnRefusedCommand: a path that refuses the transaction must
// fail the run, so a broken benchmark path cannot pass for a fast one.
func TestLoadFailsOnRefusedCommand(t *testing.T) {
	ln := listen(t)
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		conn.Write([]byte("220 x\r\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "RCPT") {
				conn.Write([]byte("550 5.1.1 no such user\r\n"))
			} else {
				conn.Write([]byte("250 ok\r\n"))
			}
		}
	}()
	l := &Load{Addr: ln.Addr().String(), Message: Message(100, "")}
	res, err := l.Run(context.Background(), 3)
	if err == nil || !strings.Contains(err.Error(), "RCPT") || !strings.Contains(err.Error(), "550") {
		t.Fatalf("err = %v, want the refused RCPT", err)
	}
	if res.Accepted != 0 {
		t.Errorf("accepted %d after a refusal", res.Accepted)
	}
}

func TestVerb(t *testing.T) {
	for line, want := range map[string]string{
		"EHLO x\r\n": "EHLO", "ehlo x\r\n": "EHLO", "DATA\r\n": "DATA", "data\n": "DATA",
		"QUIT\r\n": "QUIT", "DATAX\r\n": "", "MAIL FROM:<>\r\n": "", "HEL\r\n": "", "HELO a\r\n": "HELO",
	} {
		if got := verb([]byte(line)); got != want {
			t.Errorf("verb(%q) = %q, want %q", line, got, want)
		}
	}
}

// TestPostfixBuffer: VSTREAM_BUFSIZE unless 4 MSS is larger, as in
// Postfix's vstream_tweak_tcp.
func TestPostfixBuffer(t *testing.T) {
	for _, c := range []struct{ mss, want int }{
		{0, 4096}, {536, 4096}, {1024, 4096}, {1025, 4100}, {1460, 5840}, {65483, 261932},
	} {
		if got := postfixBuffer(c.mss); got != c.want {
			t.Errorf("postfixBuffer(%d) = %d, want %d", c.mss, got, c.want)
		}
	}
}
