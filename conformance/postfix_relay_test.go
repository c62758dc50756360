package conformance

import (
	"io"
	"net"
	"sync"
	"testing"
)

// pfServeBlindRelay copies bytes both ways between each connection accepted on
// ln and a new connection to upstream, changing nothing, until the test
// ends. It is the "proxy" that detects no loop at all, so a test run through
// it shows which checks of the end-to-end test can fail.
func pfServeBlindRelay(t *testing.T, ln net.Listener, upstream string) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					t.Errorf("blind relay: connect to %s: %v", upstream, err)
					return
				}
				defer u.Close()
				var pipes sync.WaitGroup
				pipe := func(dst, src net.Conn) {
					io.Copy(dst, src)
					dst.(*net.TCPConn).CloseWrite()
				}
				pipes.Go(func() { pipe(u, c) })
				pipes.Go(func() { pipe(c, u) })
				pipes.Wait()
			})
		}
	})
}
