package conformance

import (
	"net"
	"regexp"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// TestPostfixPostscreenSite checks the master.cf of a postscreen site as
// the README gives it: postscreen on the public port, the filter on the
// "smtpd pass" service postscreen hands clients to, with syslog_name
// postfix/front. A clean message is queued through postscreen and the
// proxy, a forged loop gets 554 5.4.6 at SMTP time, and Postfix logs both
// under postfix/front/smtpd.
func TestPostfixPostscreenSite(t *testing.T) {
	filter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	screen, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	p := postfixtest.New(t, postfixtest.Options{
		FilterAddr:   filter.Addr().String(),
		ProxyTimeout: pfProxyTimeout,
		MasterCF: screen + " inet n - n - 1 postscreen\n" +
			"smtpd pass - - n - - smtpd\n" +
			"  -o syslog_name=postfix/front\n" +
			"  -o smtpd_proxy_filter=" + filter.Addr().String() + "\n",
	})
	pfServeWithUpstream(t, filter, p.AfterFilterAddr())
	p.Start()

	clean, err := postfixtest.Send(screen, "sender@local.test", []string{"user@local.test"},
		[]byte("Subject: through postscreen\n\nhello\n"))
	if err != nil {
		t.Fatalf("send: %v\n%+v", err, clean)
	}
	if clean.EndOfData.Code != 250 || clean.QueueID() == "" {
		t.Fatalf("clean message through postscreen: end of data %v, want 250 queued as", clean.EndOfData)
	}
	loop, err := postfixtest.Send(screen, "sender@local.test", []string{"loopuser@local.test"},
		[]byte("Delivered-To: loopuser@local.test\nSubject: forged loop through postscreen\n\nspam\n"))
	if err != nil {
		t.Fatalf("send: %v\n%+v", err, loop)
	}
	if got, want := loop.EndOfData.Text(), "554 5.4.6 mail forwarding loop for loopuser@local.test"; got != want {
		t.Fatalf("loop through postscreen: end of data %q, want %q", got, want)
	}
	p.WaitLog(regexp.MustCompile(`postfix/postscreen\[\d+\]: CONNECT from \[127\.0\.0\.1\]`))
	p.WaitLog(regexp.MustCompile(`postfix/front/smtpd\[\d+\]: proxy-accept: END-OF-MESSAGE: 250 .*queued as ` + clean.QueueID()))
	p.WaitLog(regexp.MustCompile(`postfix/front/smtpd\[\d+\]: proxy-reject: END-OF-MESSAGE: 554 5\.4\.6 mail forwarding loop for loopuser@local\.test`))
	if n := p.Bounces(); n != 0 {
		t.Errorf("%d bounces, want none", n)
	}
}
