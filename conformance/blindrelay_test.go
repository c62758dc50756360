package conformance

import (
	"io"
	"net"
	"sync"
)

// blindRelay is a deliberately wrong implementation: it copies bytes both
// ways and knows nothing of SMTP. It exists to show that the cases can
// fail (it lets every loop through) and that the runner passes what a
// transparent relay does get right.
func blindRelay() Implementation {
	return InProcess{
		Label: "blind relay (test double)",
		Serve: func(ln net.Listener, _ *Case, upstream string) (func() string, error) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			var conns []net.Conn
			track := func(c net.Conn) {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					client, err := ln.Accept()
					if err != nil {
						return
					}
					track(client)
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer client.Close()
						up, err := net.Dial("tcp", upstream)
						if err != nil {
							return
						}
						track(up)
						defer up.Close()
						done := make(chan struct{}, 2)
						pipe := func(dst, src net.Conn) {
							io.Copy(dst, src)
							done <- struct{}{}
						}
						go pipe(up, client)
						go pipe(client, up)
						<-done // either side ended: end both
					}()
				}
			}()
			stop := func() string {
				ln.Close()
				mu.Lock()
				for _, c := range conns {
					c.Close()
				}
				mu.Unlock()
				wg.Wait()
				return ""
			}
			return stop, nil
		},
	}
}
