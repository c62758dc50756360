package smtpproxy

import (
	"bytes"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

// heapPeak samples the live heap (runtime/metrics) until stopped and
// reports the highest value seen.
type heapPeak struct {
	stop chan struct{}
	done sync.WaitGroup
	peak atomic.Uint64
}

func startHeapPeak() *heapPeak {
	runtime.GC()
	h := &heapPeak{stop: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > h.peak.Load() {
				h.peak.Store(v)
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heapPeak) finish() uint64 {
	close(h.stop)
	h.done.Wait()
	return h.peak.Load()
}

// streamMessage sends one message of about size bytes (998-octet lines)
// through the proxy at addr and returns the end-of-data reply.
func streamMessage(t testing.TB, addr string, size int64) string {
	c := dialClient(t, addr)
	c.ExpectReply(greeting)
	c.StartMessage("<s@example.org>", "<r@example.net>")
	line := strings.Repeat("x", 998) + "\r\n"
	block := []byte("Subject: big\r\n\r\n" + strings.Repeat(line, 64))
	var sent int64
	for sent < size {
		if _, err := c.Conn.Write(block); err != nil {
			t.Fatalf("client write after %d bytes: %v", sent, err)
		}
		sent += int64(len(block))
		block = bytes.TrimPrefix(block, []byte("Subject: big\r\n\r\n"))
	}
	c.Send(".\r\n")
	reply := c.Reply()
	c.Expect("QUIT", "221 2.0.0 Bye\r\n")
	return reply
}

// maxStreamingHeap is the bound of SPEC section 2.5 for one streaming
// session: message size must not change memory.
const maxStreamingHeap = 16 << 20

// TestStreamingMemoryBounded streams 64 MiB through the real runtime and
// checks the heap stays under the bound; BenchmarkStream1GiB does the
// same with 1 GiB.
func TestStreamingMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 64 MiB")
	}
	u := smtptest.StartUpstream(t)
	u.Discard = true
	p := startProxy(t, Config{Upstream: u.Addr(), Logger: discardLogger()})
	peak := startHeapPeak()
	reply := streamMessage(t, p.addr, 64<<20)
	maxHeap := peak.finish()
	if reply != queued {
		t.Fatalf("end of data: %q", reply)
	}
	if u.Size() < 64<<20 {
		t.Fatalf("sink got %d bytes", u.Size())
	}
	t.Logf("peak heap %.1f MiB streaming 64 MiB", float64(maxHeap)/(1<<20))
	if maxHeap > maxStreamingHeap {
		t.Fatalf("peak heap %d bytes streaming 64 MiB, bound %d", maxHeap, maxStreamingHeap)
	}
}

// BenchmarkStream1GiB streams a 1 GiB message client -> proxy -> sink over
// loopback through the real runtime and reports the peak heap of the
// whole process (proxy, client and sink together). Run it with
//
//	go test ./smtpproxy -run '^$' -bench Stream1GiB -benchtime 1x
func BenchmarkStream1GiB(b *testing.B) {
	const size = 1 << 30
	u := smtptest.StartUpstream(b)
	u.Discard = true
	p := startProxy(b, Config{Upstream: u.Addr(), Logger: discardLogger()})
	b.SetBytes(size)
	peak := startHeapPeak()
	for b.Loop() {
		if reply := streamMessage(b, p.addr, size); reply != queued {
			b.Fatalf("end of data: %q", reply)
		}
	}
	maxHeap := peak.finish()
	if u.Size() < size {
		b.Fatalf("sink got %d bytes of a %d-byte message", u.Size(), size)
	}
	b.ReportMetric(float64(maxHeap)/(1<<20), "peak-heap-MiB")
	if maxHeap > maxStreamingHeap {
		b.Fatalf("peak heap %d bytes, bound %d", maxHeap, maxStreamingHeap)
	}
}

// BenchmarkSmallMessages compares small messages sent through the proxy
// with the same load sent straight to the same sink: performance is
// measured beside the direct path, as a ratio.
func BenchmarkSmallMessages(b *testing.B) {
	u := smtptest.StartUpstream(b)
	u.Discard = true
	p := startProxy(b, Config{Upstream: u.Addr(), Logger: discardLogger()})
	msg := "From: a@example.org\r\nTo: r@example.net\r\nSubject: hello\r\nDelivered-To: other@example.net\r\n\r\n" +
		strings.Repeat("body line of a short message\r\n", 60) + ".\r\n"
	run := func(b *testing.B, addr string) {
		c := dialClient(b, addr)
		c.Reply()
		for b.Loop() {
			c.Cmd("MAIL FROM:<s@example.org>")
			c.Cmd("RCPT TO:<r@example.net>")
			if r := c.Cmd("DATA"); !strings.HasPrefix(r, "354") {
				b.Fatalf("DATA: %q", r)
			}
			c.Send(msg)
			if r := c.Reply(); r != queued {
				b.Fatalf("end of data: %q", r)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	}
	var direct, proxied float64
	b.Run("direct", func(b *testing.B) {
		run(b, u.Addr())
		direct = float64(b.N) / b.Elapsed().Seconds()
	})
	b.Run("proxy", func(b *testing.B) {
		run(b, p.addr)
		proxied = float64(b.N) / b.Elapsed().Seconds()
		if direct > 0 {
			b.ReportMetric(proxied/direct, "ratio-to-direct")
		}
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
