package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// section returns the text of out from the line starting with from up to
// the next line starting with "=== " (or the end).
func section(t *testing.T, out, from string) string {
	t.Helper()
	i := strings.Index(out, "\n"+from)
	if i < 0 {
		t.Fatalf("no section %q in the output:\n%s", from, out)
	}
	rest := out[i+1+len(from):]
	if j := strings.Index(rest, "\n=== "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// split cuts a message's section into the client's transcript and what
// the upstream received.
func split(t *testing.T, sec string) (client, upstream string) {
	t.Helper()
	client, upstream, ok := strings.Cut(sec, "What the upstream received:")
	if !ok {
		t.Fatalf("no upstream transcript in:\n%s", sec)
	}
	return client, upstream
}

func TestDemo(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"demo"}, strings.NewReader(""), &stdout, &stderr); code != demoOK {
		t.Fatalf("demo exit %d, want %d; stderr:\n%s\nstdout:\n%s", code, demoOK, stderr.String(), stdout.String())
	}
	out := stdout.String()

	client, upstream := split(t, section(t, out, "=== 1. "))
	if !strings.Contains(client, "\n  S: 250 2.0.0 Ok: queued as ") {
		t.Errorf("the clean message's transcript shows no 250 for its end of data:\n%s", client)
	}
	for _, want := range []string{"\n  DATA\n", "\n  Subject: hello\n", "\n  .\n"} {
		if !strings.Contains(upstream, want) {
			t.Errorf("the upstream's record of the clean message lacks %q:\n%s", want, upstream)
		}
	}

	client, upstream = split(t, section(t, out, "=== 2. "))
	if !strings.Contains(client, "\n  S: 554 5.4.6 mail forwarding loop for user@example.com\n") {
		t.Errorf("the loop's transcript shows no 554 5.4.6:\n%s", client)
	}
	if !strings.Contains(client, "\n  C: Delivered-To: user@example.com\n") {
		t.Errorf("the loop's transcript does not show the forged header sent:\n%s", client)
	}
	for _, never := range []string{"DATA", "Delivered-To", "Subject", "Spam whose header"} {
		if strings.Contains(upstream, never) {
			t.Errorf("the loop's content reached the upstream (%q):\n%s", never, upstream)
		}
	}
	if !strings.Contains(upstream, "\n  RSET\n") {
		t.Errorf("the upstream's record of the loop has no RSET:\n%s", upstream)
	}

	log := section(t, out, "=== The proxy's log")
	if !strings.Contains(log, "verdict=pass") || !strings.Contains(log, "verdict=loop") {
		t.Errorf("the proxy's log lacks a pass and a loop transaction:\n%s", log)
	}
}

func TestDemoArguments(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"demo", "extra"}, demoUsage, `takes no arguments, got ["extra"]`},
		{[]string{"demo", "-x"}, demoUsage, "flag provided but not defined: -x"},
		{[]string{"demo", "-h"}, demoOK, "usage: smtpprox-loopprevent demo"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, strings.NewReader(""), &stdout, &stderr); code != tc.code {
			t.Errorf("%q: exit %d, want %d; stderr %q", tc.args, code, tc.code, stderr.String())
		}
		if !strings.Contains(stderr.String(), tc.inStderr) {
			t.Errorf("%q: stderr %q, want it to hold %q", tc.args, stderr.String(), tc.inStderr)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: wrote to stdout: %q", tc.args, stdout.String())
		}
	}
}
