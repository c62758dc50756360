// Command smtpload-relay is a blind relay of package smtpload as a
// program, for scripts/smtp-source-ratio:
//
//	smtpload-relay [-copy] [-buffer BYTES] LISTEN UPSTREAM
//
// copies bytes both ways between every connection accepted on LISTEN and a
// new connection to UPSTREAM (both host:port), until SIGINT or SIGTERM. It
// knows nothing of SMTP. By default it copies with io.Copy (splice(2) on
// Linux): the cost floor of any proxy on the machine. With -copy it reads
// every byte into a buffer (by default as large as the proxy's reads of
// message data) and writes it out again: the floor of a proxy that must
// look at the bytes, as the loop proxy does.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/smtpproxy"
)

func main() {
	copying := flag.Bool("copy", false, "copy through a buffer instead of with io.Copy (splice)")
	bufSize := flag.Int("buffer", smtpproxy.DataReadSize, "the buffer's size in `bytes`, with -copy")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: smtpload-relay [-copy] [-buffer BYTES] LISTEN UPSTREAM")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 || *bufSize <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "smtpload-relay:", err)
		os.Exit(1)
	}
	var r *smtpload.Relay
	if *copying {
		r = smtpload.NewCopyRelay(ln, flag.Arg(1), *bufSize)
	} else {
		r = smtpload.NewRelay(ln, flag.Arg(1))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	r.Close()
}
