// Package smtpproxy is the transparent SMTP proxy that Postfix puts in
// front of its after-filter smtpd (smtpd_proxy_filter). It relays every
// command and reply unchanged and refuses a message at end of DATA with
// "554 5.4.6 mail forwarding loop for <recipient>" when an accepted
// envelope recipient matches an address in one of the message's
// Delivered-To: fields (SPEC.md).
//
// It is built in three layers. Package core is the protocol: a sans-I/O
// state machine with the DATA framer, which reads no clock and touches no
// socket. This package is the thin runtime around it: listener, upstream
// connections, reader goroutines, timers, session limit, graceful
// shutdown, logs and transcripts.
//
// # Guarantees (SPEC section 2)
//
//   - The client gets a 2xx end-of-data reply only when the upstream gave
//     one, and then byte for byte; any failure in between gives a 4xx or 5xx.
//   - Not one content byte of a message judged a loop reaches the upstream;
//     the transaction is cleared with RSET and the session goes on.
//   - Exactly one reply per command, in order, also under PIPELINING.
//   - Everything written upstream ends in CRLF, every content line that
//     begins with "." is stuffed, and the only end of data the upstream sees
//     is the proxy's own: no input makes the upstream see a command or a
//     message boundary the proxy did not see.
//   - Memory per session is bounded: the header section buffer
//     (-max-header-bytes), one command line, one upstream reply (64 KiB),
//     two 4 KiB read buffers and, while message data flows, one client
//     read buffer from a pool: 64 KiB while the header section is read,
//     256 KiB once the body streams (the header buffer is gone by then). A connection is read only when its
//     bytes can be used, so neither a huge message nor a flood of pipelined
//     commands piles up.
//
// # Behaviour choices
//
//   - Commands go upstream one at a time: the proxy forwards a command,
//     waits for its reply, relays it, then takes the next buffered client
//     command. PIPELINING stays advertised; pipelined input waits in the
//     bounded read buffer. Postfix's smtpd, the intended upstream, never
//     needs pipelining from its filter.
//   - A command line ends at CRLF or at a bare LF (as Postfix reads it), and
//     goes upstream with CRLF. Refused locally and never forwarded: a line
//     over 2048 octets ("500 5.5.2 line too long"; the rest of the line is
//     discarded), a NUL ("500 5.5.2 NUL in command"), and a bare CR, a CR
//     not directly before the LF ("500 5.5.2 bare CR in command"): RFC 5321
//     forbids it, and an upstream that took CR as a line end would see a
//     command the proxy did not.
//   - STARTTLS gets "454 4.7.0 TLS not available", BDAT "502 5.5.1 BDAT not
//     supported"; STARTTLS, CHUNKING and BINARYMIME (and -drop-ehlo-keyword
//     ones) are removed from the EHLO reply, which stays well formed.
//   - After a 334 reply the next client line is a SASL continuation, relayed
//     raw (up to 12288 octets). A continuation the proxy will not carry
//     (too long, NUL, bare CR) is sent as "*", the SASL cancel, so the
//     upstream never reads a later command as a continuation.
//   - DATA with an accepted recipient is answered "354" by the proxy, which
//     reads the header section, judges it and only then sends DATA upstream.
//     Any 354 the upstream gives to a forwarded command (DATA without
//     accepted recipients, DATA with arguments) also starts message mode
//     with header capture and verdict; a refusal then has to close the
//     upstream connection without the final dot, since DATA cannot be
//     taken back, and the next command gets 421.
//   - Every end-of-data reply the proxy gives without the upstream having
//     taken the message (loop, header too large, bare LF refused, DATA
//     refused by the upstream, loop check failure) is followed by RSET
//     upstream, whose reply is swallowed; a non-2xx reply to it retires the
//     upstream, and the next command gets 421 4.4.2.
//   - Upstream failures: before the greeting "421 4.4.1 upstream ADDR ...";
//     while a command is relayed "421 4.4.2 upstream ADDR ..." and close;
//     during a message the client's data is drained, "451 4.4.2 upstream
//     ADDR ..." is the end-of-data reply and the next command gets 421.
//     The reason is a fixed phrase, never a Go error string.
//   - Bytes from the upstream while it owes no reply (an idle-timeout 421,
//     say) retire the upstream; the client learns it on its next command
//     (421 4.4.2 upstream ADDR sent unexpected data), so every reply it
//     gets still answers a command of its own.
//   - A 421 reply from the upstream is relayed and both sides are closed.
//   - After QUIT (the client's, or the proxy's own on its way out) the
//     client has its reply and its end of the connection at once, but the
//     proxy closes the upstream connection only after the upstream has
//     (or after 2 s, closeLinger): the side that closes first keeps TCP's
//     TIME_WAIT, and the proxy, opening a connection to one address for
//     every message, should not. Any other end closes the upstream at once.
//   - A loop check that panics tempfails the message (451 4.3.0): neither a
//     loop let through nor a message lost.
//   - Message data read from a TCP client is acknowledged at once
//     (TCP_QUICKACK, Linux). Postfix's smtpd writes to its filter with
//     Nagle's algorithm on, which holds a segment shorter than the MSS
//     (such as a message's last one) until the rest is acknowledged; Linux
//     delays that ACK by up to 40 ms once the proxy has replied on the
//     connection. One setsockopt(2) per
//     data read; see dataAcker.
//   - Once a message body streams, a TCP client's socket gets a fixed
//     receive buffer (SO_RCVBUF, streamSocketBuffer; Linux, where
//     net.core.rmem_max allows it), once per connection: with the
//     kernel's sizing, which starts small on every connection, large
//     messages kept filling it.
//   - Clocks: the command timeout runs from the moment the proxy waits for a
//     command until the whole line is in (a trickle of bytes does not
//     extend it); the data idle timeout restarts with every piece of message
//     data; the reply timeout covers every upstream reply and write.
//   - Shutdown (Serve's context done): the listener closes; a session
//     between transactions gets "421 4.3.2 shutting down" at once; one in a
//     transaction finishes it, gets its end-of-data reply, then the 421; at
//     the drain deadline every session left gets the 421 and is closed, its
//     message never acknowledged.
package smtpproxy
