// Package perf measures what the proxy costs the mail flow. It holds only
// benchmarks and the tests that keep them honest; it has no API.
//
// Every benchmark drives the real runtime (smtpproxy.Server) over
// loopback with the generator, sink and blind relays of internal/smtpload,
// and runs the four paths one after the other in the same run:
//
//	direct     generator -> sink                      (the mail flow without a proxy)
//	relay      generator -> splice relay -> sink      (io.Copy both ways)
//	copyrelay  generator -> copying relay -> sink     (read and write through a buffer)
//	proxy      generator -> smtpproxy -> sink
//
// The splice relay is the first baseline: on Linux io.Copy between two TCP
// sockets is splice(2), so its bytes never enter the process; it is the
// floor of a proxy that need not see them. The copying relay reads every
// byte into a buffer of the proxy's data read size (smtpproxy.DataReadSize)
// and writes it out again: the floor of any proxy that must look at the
// bytes, as this one must to frame the message data (SPEC 2.4).
//
// The generator writes with TCP_NODELAY by default, the whole content in
// one write. The scenarios named sender=nagle write as Postfix's smtpd
// writes to a filter instead (smtpload.Load.Nagle: Nagle's algorithm on,
// writes of 4 MSS): the sender then waits for ACKs, so how soon each path's
// receiving side acknowledges shows in its rate, and these ratios scatter
// more from run to run. The throughput bounds the proxy is held to (at
// least 0.9 of the splice relay's messages/s with 10 KiB messages at 32
// sessions and with 1 MiB messages at 4) are stated for the default
// sender.
//
// The figures that matter are ratios between paths of one run, never
// absolute durations (performance is measured, not timed; the machine is
// shared). Run and summarise them with
//
//	go test ./perf -run '^$' -bench 'Paths|Interleaved' -count 6 > perf.txt
//	benchstat=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
//	go run $benchstat -col '/path@(direct relay copyrelay proxy)' -filter '.name:Paths' perf.txt
//	go run $benchstat -filter '.name:Interleaved' perf.txt
//
// (BenchmarkIdleSessions runs alone, with -benchtime 1x.)
//
// BenchmarkPaths reports, per message: msgs/s, MB/s, allocs/op, B/op and
// cpu-us/msg of the whole process (generator, path and sink),
// added-allocs/msg, added-cpu-us/msg and added-p50-us / added-p99-us (what
// the path adds over the direct path of the same run), p50-us / p99-us of
// the transaction latency, and for the proxy its ratios to the two relays
// (ratio-to-relay, ratio-to-copyrelay). BenchmarkInterleaved runs the
// paths in alternating turns and reports the ratios of one run; on a shared machine
// they are the steadier figures. BenchmarkIdleSessions reports the heap
// and stack of one idle proxy session with 1000 open.
//
// Tests keep the harness honest and hold the bounds that are not
// durations: every path delivers every message (TestPathsDeliver), the
// proxy path judges (TestProxyPathJudges), an idle session stays within
// 64 KiB (TestIdleSessionMemory), allocations per message do not grow
// with the message (TestAllocsPerMessageIndependentOfSize), and the core's
// fast path for canonical data frames exactly as SPEC section 4 reads
// (framing_test.go).
//
// The milter front-end (package milter) has benchmarks of its own.
// BenchmarkPostfixMilter (milter_postfix_test.go) measures through a real
// Postfix with smtp-source: the same smtpd alone, with a null milter (the
// floor of any milter seeing the same events), with the milter, and the
// proxy chain, in turns; it reports msgs/s, the ratios to the smtpd alone
// and this process's CPU per message. Run it as root with Postfix
// installed, for example
//
//	go test ./perf -run '^$' -bench PostfixMilter -benchtime 2000x -count 6
//
// BenchmarkMilterSessions reports the memory of one milter session with
// 1000 open, idle and inside a message (run it with -benchtime 1x);
// TestMilterSessionMemory bounds it (maxMilterSessionBytes) and
// TestPostfixMilterBench checks that every path of the Postfix benchmark
// takes its messages and that the milter judges each.
//
// Recipient expansion (SPEC section 8, package expand) has a paired
// benchmark of its own. BenchmarkExpansion (expansion_test.go) sends 10
// KiB messages over 32 sessions, a connection per message, to two proxies
// in front of one sink, alike but for -postfix-config: one judges the
// recipient as spelled, the other also by its expansion (-loops=any),
// with a warm cache. The two take turns, and it reports each one's msgs/s
// and CPU per message, the ratio expand/off (the goal is at least 0.95),
// added-cpu-us/msg, and expansions/msg, the expansions computed rather
// than served from the cache (about 0). The expander answers from a
// Memory backend: with a warm cache no lookup reaches a backend, so this
// is the proxy's own cost of expansion (the hook, the expander's
// bookkeeping, the judging of more addresses), not Postfix's. Run it with
//
//	go test ./perf -run '^$' -bench Expansion -benchtime 20000x -count 6 > expansion.txt
//	go run $benchstat -filter '.name:Expansion' expansion.txt
//
// TestExpansionPathJudges shows that the expand path refuses a message
// whose Delivered-To: names an address the recipient expands to, and the
// other path passes it, and that the cache serves every message after the
// first. What a recipient costs when the cache is cold, through
// Postfix's proxymap(8) and through postmap(1), is measured in package
// expand: BenchmarkExpandLive starts a private Postfix (as root, with
// Postfix installed) and compares the two backends' cold expansion of one
// recipient with a cache hit, in one run; BenchmarkExpandMemory measures
// the expansion logic alone. For example
//
//	go test ./expand -run '^$' -bench 'ExpandLive|ExpandMemory' -benchtime 200x -count 6
package perf
