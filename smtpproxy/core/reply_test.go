package core

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReplyReaderSplitsAtEveryByte(t *testing.T) {
	input := "250-mail.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n220 next\r\n"
	for cut := 0; cut <= len(input); cut++ {
		var r replyReader
		var got []string
		for _, part := range []string{input[:cut], input[cut:]} {
			p := []byte(part)
			for len(p) > 0 {
				n, rep, err := r.feed(p)
				if err != nil {
					t.Fatalf("cut %d: %v", cut, err)
				}
				p = p[n:]
				if rep != nil {
					got = append(got, string(rep.Raw))
				}
			}
		}
		want := []string{"250-mail.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n", "220 next\r\n"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("cut %d: replies (-want +got):\n%s", cut, diff)
		}
	}
}

func TestReplyReaderCodes(t *testing.T) {
	cases := []struct {
		in      string
		code    int
		raw     string
		wantErr error
	}{
		{in: "250 ok\r\n", code: 250, raw: "250 ok\r\n"},
		{in: "354\r\n", code: 354, raw: "354\r\n"},
		{in: "421 bye\n", code: 421, raw: "421 bye\r\n"}, // bare LF re-terminated
		{in: "550-a\r\n550 b\r\n", code: 550, raw: "550-a\r\n550 b\r\n"},
		{in: "hello\r\n", wantErr: errReplyMalformed},
		{in: "25\r\n", wantErr: errReplyMalformed},
		{in: "250x\r\n", wantErr: errReplyMalformed},
		{in: "650 no\r\n", wantErr: errReplyMalformed},
		{in: "150 no\r\n", wantErr: errReplyMalformed},
	}
	for _, c := range cases {
		var r replyReader
		_, rep, err := r.feed([]byte(c.in))
		if err != c.wantErr {
			t.Errorf("%q: err %v, want %v", c.in, err, c.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if rep == nil {
			t.Errorf("%q: no reply", c.in)
			continue
		}
		if rep.Code != c.code || string(rep.Raw) != c.raw {
			t.Errorf("%q: got %d %q, want %d %q", c.in, rep.Code, rep.Raw, c.code, c.raw)
		}
	}
}

func TestReplyReaderLimit(t *testing.T) {
	var r replyReader
	line := "250-" + strings.Repeat("x", 1000) + "\r\n"
	var err error
	total := 0
	for err == nil && total < 2*MaxReplyBytes {
		_, _, err = r.feed([]byte(line))
		total += len(line)
	}
	if err != errReplyTooLong {
		t.Fatalf("after %d bytes: err %v, want %v", total, err, errReplyTooLong)
	}
	if total > MaxReplyBytes+len(line) {
		t.Fatalf("limit noticed only after %d bytes", total)
	}
	// One endless line without LF is caught too.
	var r2 replyReader
	_, _, err = r2.feed(bytes.Repeat([]byte("2"), MaxReplyBytes+1))
	if err != errReplyTooLong {
		t.Fatalf("endless line: err %v", err)
	}
}

func TestFilterEHLO(t *testing.T) {
	cases := []struct {
		name, in, want string
		drop           []string
	}{
		{
			name: "postfix reply",
			in: "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n" +
				"250-STARTTLS\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n" +
				"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
			want: "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n" +
				"250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n" +
				"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n",
		},
		{
			name: "case-insensitive, tabs, binarymime",
			in:   "250-x\r\n250-starttls\r\n250-BinaryMime\r\n250-chunking\tfoo\r\n250 AUTH PLAIN\r\n",
			want: "250-x\r\n250 AUTH PLAIN\r\n",
		},
		{
			name: "everything dropped but the name",
			in:   "250-x\r\n250-STARTTLS\r\n250 CHUNKING\r\n",
			want: "250 x\r\n",
		},
		{
			name: "keyword only as a prefix stays",
			in:   "250-x\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n",
			want: "250-x\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n",
		},
		{
			name: "first line never dropped",
			in:   "250-STARTTLS\r\n250 SIZE\r\n",
			want: "250-STARTTLS\r\n250 SIZE\r\n",
		},
		{
			name: "extra keywords",
			in:   "250-x\r\n250-SMTPUTF8\r\n250-ETRN\r\n250 DSN\r\n",
			drop: []string{"etrn", "DSN"},
			want: "250-x\r\n250 SMTPUTF8\r\n",
		},
		{
			name: "single line",
			in:   "250 x\r\n",
			want: "250 x\r\n",
		},
		{
			name: "bare code line in the middle",
			in:   "250-x\r\n250\r\n250 STARTTLS\r\n",
			want: "250-x\r\n250\r\n",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := string(filterEHLO(nil, []byte(c.in), c.drop))
			if got != c.want {
				t.Fatalf("got\n%q\nwant\n%q", got, c.want)
			}
			// The result is one well-formed reply.
			var r replyReader
			n, rep, err := r.feed([]byte(got))
			if err != nil || rep == nil || n != len(got) {
				t.Fatalf("filtered reply does not parse as one reply: n=%d rep=%v err=%v", n, rep, err)
			}
		})
	}
}
