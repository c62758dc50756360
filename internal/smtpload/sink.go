package smtpload

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Replies of the sink. The EHLO reply lists what Postfix's after-filter
// smtpd lists, with XFORWARD, so the generator sends XFORWARD through every
// path.
const (
	sinkGreeting = "220 sink.example ESMTP smtpload\r\n"
	sinkEHLO     = "250-sink.example\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
	sinkHELO     = "250 sink.example\r\n"
	sinkOK       = "250 2.0.0 Ok\r\n"
	sink354      = "354 End data with <CR><LF>.<CR><LF>\r\n"
	sinkQueued   = "250 2.0.0 Ok: queued as SINK\r\n"
	sinkBye      = "221 2.0.0 Bye\r\n"
	sinkTooLong  = "500 5.5.2 line too long\r\n"
)

// sinkBufferSize is the sink's read buffer per connection: large enough that
// a streaming message costs few reads, pooled so that a connection per
// message does not allocate one each time.
const sinkBufferSize = 64 << 10

// sinkIdleTimeout ends a connection whose peer has stopped talking, so a
// broken test cannot leave the sink waiting for ever.
const sinkIdleTimeout = 10 * time.Minute

// Sink is a fast SMTP server that accepts every message and keeps counts
// only. Its methods are safe for concurrent use.
type Sink struct {
	ln       net.Listener
	messages atomic.Int64
	bytes    atomic.Int64
	sessions atomic.Int64

	readers sync.Pool // *bufio.Reader of sinkBufferSize
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// NewSink serves SMTP on ln until Close.
func NewSink(ln net.Listener) *Sink {
	s := &Sink{ln: ln, conns: make(map[net.Conn]struct{})}
	s.readers.New = func() any { return bufio.NewReaderSize(nil, sinkBufferSize) }
	s.wg.Add(1)
	go s.accept()
	return s
}

// Addr is the address the sink listens on.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Messages is the number of messages accepted so far.
func (s *Sink) Messages() int64 { return s.messages.Load() }

// Bytes is the number of message bytes received so far, as on the wire
// (dot-stuffed, CRLF), without the final ".".
func (s *Sink) Bytes() int64 { return s.bytes.Load() }

// Sessions is the number of connections accepted so far.
func (s *Sink) Sessions() int64 { return s.sessions.Load() }

// Open is the number of connections open now.
func (s *Sink) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops the listener, closes every open connection and waits for
// their goroutines.
func (s *Sink) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Sink) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.sessions.Add(1)
		go s.serve(conn)
	}
}

func (s *Sink) serve(conn net.Conn) {
	r := s.readers.Get().(*bufio.Reader)
	r.Reset(conn)
	defer func() {
		r.Reset(nil)
		s.readers.Put(r)
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
		s.wg.Done()
	}()
	var out []byte // replies not yet written: written when no input waits
	out = append(out, sinkGreeting...)
	for {
		if len(out) > 0 && r.Buffered() == 0 {
			if _, err := conn.Write(out); err != nil {
				return
			}
			out = out[:0]
		}
		conn.SetReadDeadline(time.Now().Add(sinkIdleTimeout))
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return
			}
			out = append(out, sinkTooLong...)
			continue
		}
		if err != nil {
			return
		}
		switch verb(line) {
		case "EHLO":
			out = append(out, sinkEHLO...)
		case "HELO":
			out = append(out, sinkHELO...)
		case "DATA":
			if _, err := conn.Write(append(out, sink354...)); err != nil {
				return
			}
			out = out[:0]
			n, err := readData(r)
			if err != nil {
				return
			}
			s.messages.Add(1)
			s.bytes.Add(n)
			out = append(out, sinkQueued...)
		case "QUIT":
			conn.Write(append(out, sinkBye...))
			return
		default:
			out = append(out, sinkOK...)
		}
	}
}

// verb returns the command verb of line in upper case, for the few verbs
// the sink tells apart, without allocating.
func verb(line []byte) string {
	if len(line) < 4 {
		return ""
	}
	var v [4]byte
	for i := range v {
		v[i] = line[i] &^ 0x20 // ASCII upper case; other bytes do not matter here
	}
	if len(line) > 4 && line[4] != ' ' && line[4] != '\r' && line[4] != '\n' {
		return ""
	}
	switch string(v[:]) {
	case "EHLO":
		return "EHLO"
	case "HELO":
		return "HELO"
	case "DATA":
		return "DATA"
	case "QUIT":
		return "QUIT"
	}
	return ""
}

// dataScanner finds the end of message data: a line "." after a line end.
// It is lenient about CR (a line "." ended by LF alone also ends the data)
// since it only has to see the ends the generator and the proxy write. Its
// zero value is at the start of the data.
type dataScanner struct {
	st  uint8 // 0 start of a line, 1 inside a line, 2 after "." at the start, 3 after ".\r"
	end bool
}

// scan reads p and returns how many bytes belong to the data, the final
// "." line included; end is set once the final line has been seen.
func (d *dataScanner) scan(p []byte) int {
	for i := 0; i < len(p); {
		switch d.st {
		case 0:
			if p[i] == '.' {
				d.st = 2
				i++
				continue
			}
			d.st = 1
		case 1:
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				return len(p)
			}
			i += j + 1
			d.st = 0
		case 2:
			switch p[i] {
			case '\r':
				d.st = 3
				i++
			case '\n':
				d.end = true
				return i + 1
			default:
				d.st = 1
			}
		case 3:
			if p[i] == '\n' {
				d.end = true
				return i + 1
			}
			d.st = 1
		}
	}
	return len(p)
}

// readData reads message data through the final "." line and returns the
// number of bytes before that line.
func readData(r *bufio.Reader) (int64, error) {
	var d dataScanner
	var n int64
	for {
		if _, err := r.Peek(1); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		buf, _ := r.Peek(r.Buffered())
		k := d.scan(buf)
		r.Discard(k)
		n += int64(k)
		if d.end {
			return n - finalDotLen(d), nil
		}
	}
}

// finalDotLen is the length of the final "." line as the scanner saw it.
func finalDotLen(d dataScanner) int64 {
	if d.st == 3 {
		return 3 // ".\r\n"
	}
	return 2 // ".\n"
}
