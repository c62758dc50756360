// Command smtpload-relay is the blind relay of package smtpload as a
// program, for scripts/smtp-source-ratio:
//
//	smtpload-relay LISTEN UPSTREAM
//
// copies bytes both ways (io.Copy) between every connection accepted on
// LISTEN and a new connection to UPSTREAM (both host:port), until SIGINT
// or SIGTERM. It knows nothing of SMTP: it is the cost floor of any proxy
// on the machine, to compare the proxy with.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: smtpload-relay LISTEN UPSTREAM")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "smtpload-relay:", err)
		os.Exit(1)
	}
	r := smtpload.NewRelay(ln, os.Args[2])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	r.Close()
}
