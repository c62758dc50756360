// Package sansio holds no code: its test keeps the protocol packages
// (header, address, loopcheck and the proxy's core) free of I/O and of the
// clock, so that a test, a fuzzer or a model-based test drives them as
// plain functions and a state machine, and the same code runs in
// production.
//
// The test walks what `go list -deps` reports for those packages and
// holds every import to an explicit allowlist: the module's own arrows
// (header and address import nothing of ours, loopcheck only those two,
// the core only loopcheck and header), third-party packages named one by
// one, and standard packages that do no I/O of their own.
package sansio
