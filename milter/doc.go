// Package milter is the milter front-end: Postfix (smtpd_milters) reports
// each message to it, and it refuses at end of message a message whose
// Delivered-To: header names one of its recipients, with the very verdict
// the proxy uses (package loopcheck) and the proxy's reply: "554 5.4.6
// mail forwarding loop for <recipient>". With DropRecipient it removes
// only the looping recipients instead, each only when everything Postfix
// would deliver it to loops (Postfix removes a recipient with all it
// expanded to), and refuses the message otherwise. SPEC section 9 is its
// contract; docs/milter.md is the operator's guide.
//
// It speaks the milter protocol through github.com/d--j/go-milter
// (version 6: macro requests, no-reply flags, the header leading-space
// option and the ESMTP arguments of RCPT). What it asks the MTA for,
// each only when offered, is in wantProtocol: a message costs the MTA one
// round trip (the end-of-message reply), every other event is sent
// without a reply.
//
// # What it judges
//
// The recipients are the RCPT events, each read as the RCPT TO: argument
// it stands for (rcptArg): Postfix sends the client's address token and
// ESMTP parameters unchanged, after its own recipient checks and milters
// listed before this one. The header section is rebuilt from the header
// events (section): Postfix sends every field cleanup(8) stored, after the
// client's final dot, folded with LF, white space before the colon
// removed and, with the leading-space option, the value exactly as stored.
// loopcheck therefore sees what the proxy would have buffered, as cleanup
// normalises it. A Policy.Expander adds what Postfix rewrites the
// recipients to, which no milter event carries.
//
// # Guarantees
//
//   - Bounded memory per session: the Delivered-To: fields of the current
//     message (and any malformed field), at most MaxHeaderBytes; one
//     packet of at most MaxPacketBytes while it is read. Buffers over a
//     few KiB are dropped when the message or packet that needed them
//     ends, so an idle session stays small. The fields of a header over
//     the limit are judged too, past it against the recipients as
//     spelled, in batches (lateBatchBytes) and with one bit per
//     recipient; a loop through an expansion past the limit is left to
//     local(8). The milter never tempfails mail for its own limit.
//   - A malformed or truncated packet, a failed negotiation, a timeout or
//     a panic in a handler closes that session only; the error is logged
//     and counted, the server goes on. Postfix applies
//     milter_default_action to what the session would still have judged.
//   - Exactly one end-of-message reply per message: accept, 554 5.4.6, or
//     451 4.3.0 when the check itself failed, as the proxy (a message that
//     passes whatever the verdict, DryRun or exempt, passes then too).
//   - Graceful shutdown (Serve): no session is cut inside a message before
//     the drain deadline.
//
// The peers that may connect are an allow-list (loopback by default); a
// Unix-domain socket's file mode governs who may connect to it.
package milter
