// Package fuzz holds the native Go fuzz targets of the whole project, each
// with a seed corpus under testdata/fuzz/<Target>/ and an oracle beyond "it
// did not panic": an invariant of SPEC section 2, a round trip, or a
// differential against the standard library (net/mail, net/textproto) on
// the inputs both accept, with every intended difference written beside it.
//
// Run one target at a time, as CI does:
//
//	go test ./fuzz -run='^$' -fuzz='^FuzzVerdict$' -fuzztime=60s -fuzzminimizetime=5s
//
// (Minimising a long interesting input costs the fuzzer time that grows
// with the square of its length; the bound keeps a short run fuzzing.)
//
// A crasher the fuzzer finds is kept in testdata/fuzz/<Target>/ so that
// plain `go test` replays it forever after.
package fuzz
