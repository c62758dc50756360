package perf

import (
	"context"
	"testing"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/smtpload"
)

// interleave sends b.N messages along each of paths, in turns of turn
// messages a path, and reverses the paths' order every other round (A B,
// B A, ...): a drift in the machine's speed then weighs on every path
// alike, which is what makes the ratios of one run comparable. send
// sends n messages along path i and says how long they took and the CPU
// they cost. interleave reports each path's rate (PATH-msgs/s) and CPU per
// message (PATH-cpu-us/msg), and returns the rates by path, for ratios.
func interleave(b *testing.B, paths []string, turn int, send func(i, n int) (wall, cpu time.Duration)) (rates map[string]float64, cpuPerMsg map[string]float64) {
	elapsed := make([]time.Duration, len(paths))
	cpu := make([]time.Duration, len(paths))
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(turn, b.N-done)
		for k := range paths {
			i := k
			if round%2 == 1 {
				i = len(paths) - 1 - k
			}
			w, c := send(i, n)
			elapsed[i] += w
			cpu[i] += c
		}
		done += n
	}
	b.StopTimer()
	rates, cpuPerMsg = map[string]float64{}, map[string]float64{}
	for i, path := range paths {
		rates[path] = float64(b.N) / elapsed[i].Seconds()
		cpuPerMsg[path] = float64(cpu[i].Nanoseconds()) / 1e3 / float64(b.N)
		b.ReportMetric(rates[path], path+"-msgs/s")
		b.ReportMetric(cpuPerMsg[path], path+"-cpu-us/msg")
	}
	return rates, cpuPerMsg
}

// sendLoad runs l for n messages along path, every one of which must be
// accepted, and times it: wall time and this process's CPU.
func sendLoad(b *testing.B, path string, l *smtpload.Load, n int) (wall, cpu time.Duration) {
	start, cpu0 := time.Now(), cpuTime()
	res, err := l.Run(context.Background(), n)
	wall, cpu = time.Since(start), cpuTime()-cpu0
	if err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	if res.Accepted != n {
		b.Fatalf("%s: %d of %d messages accepted (last reply %q)", path, res.Accepted, n, res.LastReply)
	}
	return wall, cpu
}
