// Package core is the sans-I/O protocol core of the proxy: one Session is
// the state machine of one proxied SMTP session, with the DATA framer. It
// reads no clock and touches no socket or file (it imports no net, os or
// time; package internal/sansio's test checks that), so a test, a fuzzer
// or a model-based test drives a whole session as a list of inputs, and
// the same code runs in production under package smtpproxy's runtime.
//
// # Driving a Session
//
// A caller gives the session one input at a time, then takes its outputs,
// then asks its queries, in this order:
//
// Inputs, each a Handle method:
//
//   - HandleUpstreamConnected, or HandleUpstreamConnectFailed: the
//     connection to the upstream opened, or could not be opened;
//     HandleLocalResourcesExhausted: it could not be opened for want of
//     the proxy's own resources (file descriptors).
//   - HandleClientData: bytes read from the client; it returns how many
//     it took. The rest waits until WantsClientInput is true again.
//   - HandleUpstreamData: bytes read from the upstream, all taken.
//   - HandleClientClosed, HandleUpstreamClosed: a connection ended or
//     failed (for the upstream, how: an UpstreamEnd).
//   - HandleRecipients: the recipients to judge a message by, once
//     WantsRecipients (Config.AwaitRecipients).
//   - HandleHeaderMemory: header memory granted or refused, once
//     HeaderMemoryWanted (Config.MeterHeader).
//   - HandleTimeout: a clock PollTimers asked for ran out.
//   - HandleShutdown, HandleDrainExpired: shut down gracefully; the drain
//     time is over.
//
// Outputs, to take after every input:
//
//   - TakeUpstreamOutput, then TakeUpstreamLent: bytes to write to the
//     upstream, in that order (the second only with Config.LendInput: runs
//     of canonical message data passed on as part of the input itself,
//     which the caller leaves unchanged until it has taken the outputs).
//   - TakeClientOutput: bytes to write to the client.
//   - TakeEvents: what happened, for logs and metrics.
//   - PollTimers: which clocks to run; restart one when its generation
//     changes.
//
// All of them are valid until the next input.
//
// Queries, which change nothing:
//
//   - UpstreamGone: close the upstream after writing to it; UpstreamQuit:
//     it was told QUIT and closes first.
//   - Done: close both connections after writing; EndReason says why.
//   - WantsRecipients: the session waits for HandleRecipients.
//   - HeaderMemoryWanted: the capacity the header buffer asks to grow to
//     (HandleHeaderMemory answers); HeaderMemoryHeld: the capacity it
//     holds, which the caller's budget counts.
//   - WantsClientInput: whether the session takes client bytes now.
//     While it is false the caller must not read the client: that is the
//     backpressure that bounds memory.
//   - ClientReading: what the client's next bytes are (commands, message
//     data held or thrown away, or a streaming body); reading them in
//     larger pieces while a body streams adds nothing to the memory bound.
//
// # States
//
// A session is in one of the states below; the condition of its upstream
// connection (open, reading message data, told QUIT, retired after a
// failure, closed) is kept beside it. This table lists every change of
// state and the inputs during which it happens (Handle omitted); the
// package's tests fail on a change it does not list and on a listed one
// no test makes. One input may make several changes: the end-of-data
// reply moves datareply to command, and, when shutdown is pending,
// command to closed.
//
//	from        to          inputs
//	connecting  greeting    UpstreamConnected
//	connecting  closed      UpstreamConnectFailed LocalResourcesExhausted ClientClosed Shutdown DrainExpired
//	greeting    command     UpstreamData
//	greeting    closed      UpstreamData UpstreamClosed Timeout ClientClosed Shutdown DrainExpired
//	command     reply       ClientData
//	command     capture     ClientData
//	command     closed      ClientData UpstreamData UpstreamClosed Timeout ClientClosed Shutdown DrainExpired
//	reply       command     UpstreamData
//	reply       capture     UpstreamData
//	reply       closed      UpstreamData UpstreamClosed Timeout ClientClosed DrainExpired
//	capture     judge       ClientData
//	capture     data354     ClientData
//	capture     stream      ClientData
//	capture     datareply   ClientData
//	capture     drain       ClientData UpstreamData UpstreamClosed HeaderMemory
//	capture     rset        ClientData
//	capture     command     ClientData
//	capture     closed      Timeout ClientClosed DrainExpired
//	judge       data354     Recipients
//	judge       stream      Recipients
//	judge       datareply   Recipients
//	judge       drain       Recipients UpstreamData UpstreamClosed
//	judge       rset        Recipients
//	judge       command     Recipients UpstreamData UpstreamClosed
//	judge       closed      ClientClosed DrainExpired
//	data354     stream      UpstreamData
//	data354     datareply   UpstreamData
//	data354     drain       UpstreamData UpstreamClosed Timeout
//	data354     rset        UpstreamData
//	data354     command     UpstreamData UpstreamClosed Timeout
//	data354     closed      UpstreamData ClientClosed DrainExpired
//	stream      datareply   ClientData
//	stream      drain       ClientData UpstreamData UpstreamClosed
//	stream      closed      Timeout ClientClosed DrainExpired
//	datareply   command     UpstreamData UpstreamClosed Timeout
//	datareply   closed      UpstreamData ClientClosed DrainExpired
//	drain       command     ClientData
//	drain       rset        ClientData
//	drain       closed      ClientData Timeout ClientClosed DrainExpired
//	rset        command     UpstreamData UpstreamClosed Timeout
//	rset        closed      ClientClosed DrainExpired
//
// The states:
//
//   - connecting, greeting: waiting for the upstream connection, then
//     for its greeting, which is relayed.
//   - command: waiting for a client command line. It is answered locally
//     (STARTTLS, BDAT, a line refused) or forwarded; DATA with an accepted
//     recipient starts a message (capture) with the proxy's own 354.
//   - reply: a forwarded command waits for its reply, which is relayed.
//     A 354 to it starts a message too, the upstream already reading data.
//   - capture: the header section is read and judged. A pass sends DATA
//     upstream (data354), or the captured bytes when the upstream already
//     reads data (stream, or datareply when the data has ended too); a
//     refusal reads the rest of the data (drain), or, the data over, gives
//     its reply and RSET (rset), or command when no RSET can follow.
//   - judge: with Config.AwaitRecipients, the header section is read and
//     the session waits for the recipients to judge it by
//     (HandleRecipients), reading nothing from the client; then as in
//     capture.
//   - data354: DATA sent for a judged message; its 354 sends the captured
//     bytes (stream, or datareply when the data has ended), a refusal is
//     given as the end-of-data reply as in capture.
//   - stream: the message streams upstream until its end (datareply).
//   - datareply: the end of data is sent; the upstream's reply is relayed.
//   - drain: the rest of a refused message is read and thrown away; then
//     its reply, and RSET (rset) unless the upstream is gone.
//   - rset: RSET sent after a local end-of-data reply; its reply is
//     swallowed (a refusal retires the upstream).
//   - closed: the session is over (Done).
//
// Any upstream failure retires the upstream: before its greeting or while
// a command waits for its reply the session closes (421), during a
// message the message ends with 451 once its data is read (drain), and
// between commands the next command gets 421.
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
