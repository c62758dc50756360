package perf

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtptest"
)

// The memory of the proxy process under the worst header load: N sessions
// each sending a maximal (1 MiB) header section at once, measured on the
// built command run as the shipped systemd unit runs it (GOMEMLIMIT, the
// default session and header limits). Reported: the process's peak
// resident set (VmHWM) and the most heap in use (the Go collector's
// go_memstats_heap_inuse_bytes, scraped), with and without the header
// memory budget, and their ratio; plus how many messages passed and how
// many got 451 4.3.1.

// unitMemLimit is the shipped unit's GOMEMLIMIT.
const unitMemLimit = "900MiB"

// headerLoadGuard bounds one scenario: a hang guard, not a measurement.
const headerLoadGuard = 3 * time.Minute

// headerLoad is one scenario.
type headerLoad struct {
	sessions int
	budget   string // -max-header-memory; "" the default
}

type headerLoadResult struct {
	peakRSS, peakHeapInuse float64 // bytes
	passed, refused        int
}

// BenchmarkHeaderMemoryRSS runs each scenario once per b.N (run it with
// -benchtime 1x).
func BenchmarkHeaderMemoryRSS(b *testing.B) {
	bin := buildProxy(b)
	const sessions = 1000 // the default -max-sessions
	for range b.N {
		with := runHeaderLoad(b, bin, headerLoad{sessions: sessions})
		// The baseline: the same load without a budget (as before it),
		// one far larger than the load can use.
		without := runHeaderLoad(b, bin, headerLoad{sessions: sessions, budget: "1099511627776"})
		b.ReportMetric(with.peakRSS/(1<<20), "peak-rss-MiB")
		b.ReportMetric(with.peakHeapInuse/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(with.passed), "passed")
		b.ReportMetric(float64(with.refused), "refused-451")
		b.ReportMetric(without.peakRSS/(1<<20), "nobudget-peak-rss-MiB")
		b.ReportMetric(without.peakHeapInuse/(1<<20), "nobudget-peak-heap-MiB")
		b.ReportMetric(with.peakRSS/without.peakRSS, "rss-ratio-to-nobudget")
	}
}

// buildProxy builds the command into a temporary directory.
func buildProxy(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "smtpprox-loopprevent")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/smtpprox-loopprevent").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runHeaderLoad starts the proxy, opens ld.sessions sessions, sends each a
// maximal header section at once, samples the process while they are read,
// then ends every message and counts the replies.
func runHeaderLoad(tb testing.TB, bin string, ld headerLoad) headerLoadResult {
	tb.Helper()
	u := smtptest.StartUpstream(tb)
	u.Discard = true
	listen, metricsAddr := freeLoopback(tb), freeLoopback(tb)
	args := []string{"-log-level=error", "-metrics-listen=" + metricsAddr}
	if ld.budget != "" {
		args = append(args, "-max-header-memory="+ld.budget)
	}
	cmd := exec.Command(bin, append(args, listen, u.Addr())...)
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+unitMemLimit)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	waitListening(tb, listen)

	line := []byte("X-Filler: " + strings.Repeat("f", 1<<20-100) + "\r\n")
	conns := make([]net.Conn, ld.sessions)
	readers := make([]*bufio.Reader, ld.sessions)
	for i := range conns {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			tb.Fatalf("session %d: %v", i, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(headerLoadGuard))
		r := bufio.NewReader(c)
		for _, step := range []struct{ send, want string }{{"", "220"}, {"MAIL FROM:<s@x>\r\n", "250"}, {"RCPT TO:<a@x>\r\n", "250"}, {"DATA\r\n", "354"}} {
			if step.send != "" {
				io.WriteString(c, step.send)
			}
			if err := expectReply(r, step.want); err != nil {
				tb.Fatalf("session %d, %q: %v", i, step.send, err)
			}
		}
		conns[i], readers[i] = c, r
	}
	var sent sync.WaitGroup
	for _, c := range conns {
		sent.Add(1)
		go func() {
			defer sent.Done()
			c.Write(line)
		}()
	}
	done := make(chan struct{})
	go func() { sent.Wait(); close(done) }()
	var res headerLoadResult
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-time.After(100 * time.Millisecond):
		}
		res.peakHeapInuse = max(res.peakHeapInuse, scrapeGauge(tb, metricsAddr, "go_memstats_heap_inuse_bytes"))
	}
	for i, c := range conns {
		io.WriteString(c, "\r\nbody\r\n.\r\n")
		line, err := readers[i].ReadString('\n')
		switch {
		case err != nil:
			tb.Fatalf("session %d: end of data: %v", i, err)
		case strings.HasPrefix(line, "250 "):
			res.passed++
		case strings.HasPrefix(line, "451 4.3.1 "):
			res.refused++
		default:
			tb.Fatalf("session %d: end of data: %q", i, line)
		}
	}
	res.peakRSS = procStatus(tb, cmd.Process.Pid, "VmHWM")
	return res
}

func freeLoopback(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitListening(tb testing.TB, addr string) {
	deadline := time.Now().Add(headerLoadGuard)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the proxy did not listen on %s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scrapeGauge reads one unlabelled sample from the proxy's /metrics.
func scrapeGauge(tb testing.TB, addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		tb.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	tb.Fatalf("%s not in the scrape", name)
	return 0
}

// procStatus reads a "kB" field of /proc/PID/status, in bytes.
func procStatus(tb testing.TB, pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				tb.Fatalf("%s: %v", field, err)
			}
			return kb * 1024
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
