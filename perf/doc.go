// Package perf measures what the proxy costs the mail flow. It holds only
// benchmarks and the tests that keep them honest; it has no API.
//
// Every benchmark drives the real runtime (smtpproxy.Server) over
// loopback with the generator, sink and blind relay of internal/smtpload,
// and runs the three paths one after the other in the same run:
//
//	direct  generator -> sink                  (the mail flow without a proxy)
//	relay   generator -> blind relay -> sink   (io.Copy both ways: the floor)
//	proxy   generator -> smtpproxy  -> sink
//
// so the figures that matter are ratios between paths of one run, never
// absolute durations (DESIGN.md: performance is measured, not timed; the
// machine is shared). Run and summarise them with
//
//	go test ./perf -run '^$' -bench . -count 6 > perf.txt
//	go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da -col /path perf.txt
//
// BenchmarkPaths reports, per message: msgs/s, MB/s, allocs/op and B/op of
// the whole process (generator, path and sink), added-allocs/msg and
// added-p50-us / added-p99-us (what the path adds over the direct path of
// the same run), p50-us / p99-us of the transaction latency, and for the
// proxy its ratio to the blind relay (ratio-to-relay).
// BenchmarkIdleSessions reports the heap and stack of one idle proxy
// session with 1000 open; TestIdleSessionMemory checks the bound of issue 6.
package perf
