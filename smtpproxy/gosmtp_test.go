package smtpproxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// goSMTPBackend records what go-smtp, as the upstream server, receives.
type goSMTPBackend struct {
	mu       sync.Mutex
	messages []string
	rcpts    [][]string
}

type goSMTPSession struct {
	be    *goSMTPBackend
	rcpts []string
}

func (be *goSMTPBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &goSMTPSession{be: be}, nil
}

func (s *goSMTPSession) Reset()                               { s.rcpts = nil }
func (s *goSMTPSession) Logout() error                        { return nil }
func (s *goSMTPSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *goSMTPSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *goSMTPSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.be.mu.Lock()
	defer s.be.mu.Unlock()
	s.be.messages = append(s.be.messages, string(b))
	s.be.rcpts = append(s.be.rcpts, s.rcpts)
	return nil
}

func startGoSMTPUpstream(t *testing.T) (*goSMTPBackend, string) {
	t.Helper()
	be := &goSMTPBackend{}
	srv := smtp.NewServer(be)
	srv.Domain = "gosmtp.example"
	srv.EnableBINARYMIME = true // advertised, must be removed by the proxy
	srv.MaxLineLength = 1 << 20 // Postfix has no line limit in data; go-smtp's default is 2000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return be, ln.Addr().String()
}

// go-smtp as an independent client and as the upstream server: a message
// passes byte for byte, a loop is refused with 554 5.4.6 and the session
// goes on, and the EHLO reply the client sees offers nothing the proxy
// cannot carry.
func TestGoSMTPClientAndUpstream(t *testing.T) {
	be, upAddr := startGoSMTPUpstream(t)
	p := startProxy(t, Config{Upstream: upAddr}) // the real loopcheck
	c, err := smtp.Dial(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("front.example"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"STARTTLS", "CHUNKING", "BINARYMIME"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("EHLO through the proxy offers %s", ext)
		}
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("PIPELINING not relayed")
	}
	msg := "From: a@example.org\r\nSubject: pass\r\nDelivered-To: someone-else@example.net\r\n\r\n.leading dot\r\n" +
		strings.Repeat("x", 5000) + "\r\nend\r\n"
	if err := c.SendMail("a@example.org", []string{"user@example.net"}, strings.NewReader(msg)); err != nil {
		t.Fatalf("passing message: %v", err)
	}
	loop := "Delivered-To: User@Example.NET\r\nSubject: loop\r\n\r\nbody\r\n"
	err = c.SendMail("a@example.org", []string{"other@example.net", "user@example.net"}, strings.NewReader(loop))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 4, 6}) ||
		se.Message != "mail forwarding loop for user@example.net" {
		t.Fatalf("loop message: err %v, want 554 5.4.6 mail forwarding loop for user@example.net", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("session unusable after the loop: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.messages) != 1 || be.messages[0] != msg {
		t.Fatalf("upstream got %d messages; first %q", len(be.messages), be.messages)
	}
}
