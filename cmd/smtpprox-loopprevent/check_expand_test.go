package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// check with -postfix-config judges a recipient by what the Postfix
// instance rewrites it to: valias@ is a virtual alias of loopuser@, so a
// forged Delivered-To: loopuser@ is a loop for valias@, named with the
// address that matched.
func TestCheckWithExpansion(t *testing.T) {
	p := postfixtest.Start(t, postfixtest.Options{
		MainCF: map[string]string{"virtual_alias_maps": "hash:{etc}/virtual"},
		Files: map[string]string{"virtual": "valias@" + postfixtest.Domain + " " + postfixtest.LoopUser + "@" + postfixtest.Domain + "\n" +
			"remote@" + postfixtest.Domain + " someone@remote.example\n"},
		Postmap: []string{"hash:virtual"},
	})
	msg := filepath.Join(t.TempDir(), "loop.eml")
	if err := os.WriteFile(msg, []byte("Delivered-To: loopuser@local.test\r\nSubject: x\r\n\r\nbody\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fwd := filepath.Join(t.TempDir(), "fwd.eml")
	if err := os.WriteFile(fwd, []byte("Delivered-To: someone@remote.example\r\nSubject: x\r\n\r\nbody\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
	}{
		{"without expansion the alias passes", []string{"-rcpt", "valias@local.test", msg}, 0, "pass\n"},
		{"with expansion it loops", []string{"-postfix-config", p.ConfigDir(), "-rcpt", "valias@local.test", msg}, 1,
			"loop: 554 5.4.6 mail forwarding loop for valias@local.test (via loopuser@local.test)\n"},
		{"flags after the file", []string{msg, "-rcpt", "valias@local.test", "-postfix-config", p.ConfigDir()}, 1,
			"loop: 554 5.4.6 mail forwarding loop for valias@local.test (via loopuser@local.test)\n"},
		{"precise mode: delivered by local(8)", []string{"-postfix-config", p.ConfigDir(), "-loops", "postfix", "-rcpt", "valias@local.test", msg}, 1,
			"loop: 554 5.4.6 mail forwarding loop for valias@local.test (via loopuser@local.test)\n"},
		{"any mode: a remote target matches", []string{"-postfix-config", p.ConfigDir(), "-rcpt", "remote@local.test", fwd}, 1,
			"loop: 554 5.4.6 mail forwarding loop for remote@local.test (via someone@remote.example)\n"},
		{"precise mode: smtp(8) never bounces a loop", []string{"-postfix-config", p.ConfigDir(), "-loops=postfix", "-rcpt", "remote@local.test", fwd}, 0, "pass\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCheckString(t, "", tc.args...)
			if code != tc.code || stdout != tc.stdout {
				t.Errorf("check %q = %d %q (stderr %q), want %d %q", tc.args, code, stdout, stderr, tc.code, tc.stdout)
			}
		})
	}
	code, _, stderr := runCheckString(t, "", "-loops=postfix", "-rcpt", "valias@local.test", msg)
	if code != checkError || !strings.Contains(stderr, "-loops=postfix needs -postfix-config") {
		t.Errorf("-loops=postfix alone: %d %q", code, stderr)
	}
	code, _, stderr = runCheckString(t, "", "-postfix-config", filepath.Join(t.TempDir(), "nothing"), "-rcpt", "valias@local.test", msg)
	if code != checkError || !strings.Contains(stderr, "-postfix-config") {
		t.Errorf("a missing config directory: %d %q", code, stderr)
	}
}
