// Package fuzz holds the native Go fuzz targets of the pure packages, each
// with a seed corpus under testdata/fuzz/<Target>/ and an oracle beyond "it
// did not panic": an invariant of SPEC section 2, a round trip, or a
// differential against the standard library (net/mail, net/textproto) on
// the inputs both accept, with every intended difference written beside it.
//
//   - FuzzVerdict: loopcheck against a model of Postfix local(8)'s check.
//   - FuzzHeader: header against its own streaming reading and a model of
//     what Postfix reads as header.
//   - FuzzHeaderTextproto: header against net/textproto.
//   - FuzzPath, FuzzList, FuzzKey: address round trips, and FuzzList
//     against net/mail.
//
// The session and framer targets, FuzzSession and FuzzFramer, live in
// package smtpproxy/core itself (smtpproxy/core/fuzz_test.go): their
// oracle is a reference model of the session and a strict RFC 5321
// upstream written in that package's tests, and they check internals (the
// header buffer's size, the accepted recipients) that the core's API does
// not export and should not. The rapid state machine of whole sessions,
// TestSessionStateMachine, shares that model.
//
// Run one target at a time, as CI does (.ci/run finds every `func Fuzz` in
// a _test.go file and runs it in its package's directory):
//
//	go test ./fuzz -run='^$' -fuzz='^FuzzVerdict$' -fuzztime=60s -fuzzminimizetime=5s
//	go test ./smtpproxy/core -run='^$' -fuzz='^FuzzSession$' -fuzztime=60s -fuzzminimizetime=5s
//
// (Minimising a long interesting input costs the fuzzer time that grows
// with the square of its length; the bound keeps a short run fuzzing.)
//
// A crasher the fuzzer finds is kept in testdata/fuzz/<Target>/ so that
// plain `go test` replays it forever after. Seeds generated from the
// conformance cases and from realistic messages are written by
// `go test ./smtpproxy/core -run TestGenerateSeeds -update-seeds`.
package fuzz
