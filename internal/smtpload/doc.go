// Package smtpload is the test support for measuring what the proxy costs
// the mail flow: a load generator that talks to a filter the way Postfix's
// front smtpd does, a fast SMTP sink that stands in for the after-filter
// smtpd, and a blind relay that only copies bytes both ways (the cost floor
// of any proxy on the machine).
//
// The three run in one process over loopback, so a benchmark drives the
// same load straight to the sink, through the blind relay and through the
// proxy in one run, and reports ratios rather than absolute durations.
//
// # Guarantees
//
//   - The generator speaks like Postfix's front smtpd towards a
//     smtpd_proxy_filter (reference/postfix.md): greeting, EHLO, XFORWARD
//     when the EHLO reply offers it, MAIL, RCPT, DATA, the content, ".",
//     QUIT; one command at a time, never pipelined. By default it opens one
//     connection per message and sends QUIT without waiting for its reply,
//     as Postfix does; Load.PerConn sends several messages per connection.
//   - The sink accepts every well-formed message, answers "250 ... queued
//     as" and keeps only counts, so it costs the run as little as possible.
//     It reads message data the lenient way (a line "." ends it) and takes
//     pipelined commands.
//   - NewRelay's relay copies each direction with io.Copy (splice(2) on
//     Linux between TCP sockets); NewCopyRelay's reads each direction into
//     a pooled buffer of the given size and writes it out, never with
//     splice or sendfile. Both half-close the other side when one ends.
//   - Nothing here asserts a duration. Per message, the generator and the
//     sink allocate nothing that depends on the message size.
//
// Nothing in the proxy imports this package; it is for benchmarks, tests
// and the perf scripts.
package smtpload
