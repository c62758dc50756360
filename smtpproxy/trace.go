package smtpproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Transcript directions.
const (
	traceClientIn  = "C>P" // client to proxy
	traceClientOut = "P>C" // proxy to client
	traceUpOut     = "P>U" // proxy to upstream
	traceUpIn      = "U>P" // upstream to proxy
)

// tracer writes a session transcript (-debugtrace): every byte in both
// directions, one record per line, Go-quoted so CR, LF, NUL and non-ASCII
// bytes stay visible and unambiguous. It is a debugging aid: a 1 GiB
// message gives a transcript of more than 1 GiB.
type tracer struct {
	f   *os.File
	w   *bufio.Writer
	err error
}

func openTrace(prefix, id string) (*tracer, error) {
	f, err := os.OpenFile(prefix+"."+id, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("debug trace for session %s: %w", id, err)
	}
	return &tracer{f: f, w: bufio.NewWriter(f)}, nil
}

func (t *tracer) record(dir string, p []byte) {
	if t == nil || t.err != nil {
		return
	}
	stamp := time.Now().UTC().Format("15:04:05.000000")
	var line []byte
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			i = len(p) - 1
		}
		line = line[:0]
		line = append(line, stamp...)
		line = append(line, ' ')
		line = append(line, dir...)
		line = append(line, ' ')
		line = strconv.AppendQuote(line, string(p[:i+1]))
		line = append(line, '\n')
		if _, err := t.w.Write(line); err != nil {
			t.err = err
			return
		}
		p = p[i+1:]
	}
}

func (t *tracer) note(text string) {
	if t == nil || t.err != nil {
		return
	}
	_, t.err = fmt.Fprintf(t.w, "%s --- %s\n", time.Now().UTC().Format("15:04:05.000000"), text)
}

func (t *tracer) close() error {
	if t == nil {
		return nil
	}
	err := t.w.Flush()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	if t.err != nil {
		return t.err
	}
	return err
}
