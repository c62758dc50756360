package expand_test

import (
	"context"
	"fmt"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/expand"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// A front-end starts the expansion when the upstream accepts a RCPT, waits
// for it at end-of-DATA within a bound, and hands it to loopcheck. Here the
// tables are in memory; in production Options.ConfigDir names the Postfix
// configuration (-postfix-config) and New chooses proxymap or postmap.
func Example() {
	cfg := expand.DefaultConfig("mx.example.com", "example.com", "mx.example.com", "example.com")
	cfg.VirtualAliasMaps = []string{"hash:/etc/postfix/virtual"}
	cfg.AliasMaps = []string{"hash:/etc/aliases"}
	tables := &expand.Memory{}
	tables.Set("hash:/etc/postfix/virtual", expand.MemTable{Entries: map[string]string{"sales@example.com": "jane@example.com"}})
	tables.Set("hash:/etc/aliases", expand.MemTable{Entries: map[string]string{}})
	e, err := expand.New(context.Background(), expand.Options{Config: cfg, Backend: tables})
	if err != nil {
		panic(err)
	}
	defer e.Close()

	rcptArg := "<sales@example.com>"
	path, _ := address.ParsePath(rcptArg)
	pending := e.Start(path.Addr) // at RCPT time

	msg := []byte("Delivered-To: jane@example.com\r\nSubject: hi\r\n\r\nbody\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), expand.DefaultWait)
	res := pending.Wait(ctx) // at end-of-DATA
	cancel()
	for _, mode := range []expand.Mode{expand.ModeAny, expand.ModePostfix} {
		addrs, replace := res.Expansion(mode)
		r := loopcheck.NewRecipient(rcptArg).WithExpansion(addrs, replace)
		v := loopcheck.CheckRecipients([]loopcheck.Recipient{r}, msg)
		fmt.Printf("-loops=%v: loop=%v recipient=%s via=%s\n", mode, v.Loop, v.Recipient, v.Via)
	}
	// Output:
	// -loops=any: loop=true recipient=sales@example.com via=jane@example.com
	// -loops=postfix: loop=true recipient=sales@example.com via=jane@example.com
}
