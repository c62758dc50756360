// Package core is the sans-I/O protocol core of the proxy: one Session is
// the state machine of one proxied SMTP session, with the DATA framer. It
// reads no clock and touches no socket or file (it imports no net, os or
// time; package internal/sansio's test checks that), so a test, a fuzzer or a
// model-based test drives a whole session as a list of inputs, and the
// same code runs in production under package smtpproxy's runtime.
//
// # Driving a Session
//
// Inputs are method calls: UpstreamConnected / UpstreamConnectFailed,
// ClientData (returns how much it consumed), UpstreamData, ClientClosed,
// UpstreamClosed (how: an UpstreamEnd), TimerExpired, Shutdown,
// DrainExpired. After each the
// caller collects the outputs, in this order: TakeUpstreamOutput and
// TakeClientOutput (bytes to write; valid until the next input), then
// UpstreamGone (close the upstream after writing; UpstreamQuit says it
// was told QUIT and closes first), Done (close both),
// Timers (which clocks to run; restart one when its generation changes)
// and TakeEvents (for logs). WantsClientInput says whether the session
// will take client bytes now; while it is false the caller must not read
// the client: that is the backpressure that bounds memory. ClientReading
// says a message body streams: reading the client in larger pieces then
// adds nothing to the memory bound. With
// Config.LendInput, TakeUpstreamLent follows TakeUpstreamOutput: runs of
// canonical message data the session passes on as they are, as part of
// the input itself, which the caller leaves unchanged until it has taken
// the outputs.
//
// # Guarantees
//
// The invariants of SPEC section 2 hold whatever the inputs: the client
// gets a 2xx end-of-data reply only as the upstream gave it; no byte of a
// message judged a loop is written upstream; each client command gets
// exactly one reply; everything written upstream is canonical (CRLF lines,
// dot-stuffed content, the proxy's own end of data only); memory is
// bounded by MaxHeaderBytes (plus a 4 KiB lookahead and one 4 KiB capture
// step), one command line (MaxCommandLine, MaxSASLLine), one upstream
// reply (MaxReplyBytes) and the output waiting to be written (at most
// maxStreamOutput plus one framed chunk while a message streams). The
// verdict does not depend on how the client's bytes are cut into reads.
// The behaviour choices behind these are listed in package smtpproxy.
package core
