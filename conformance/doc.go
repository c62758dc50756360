// Package conformance is the language-neutral conformance suite of
// smtpprox-loopprevent and its runner. Each case (testdata/*.txt, a txtar
// archive) is one SMTP session through the proxy: what a client sends, how
// a scripted upstream answers, and the exact bytes the client and the
// upstream must receive. The cases are derived from SPEC.md, not from any
// implementation, and the runner drives any implementation: this
// project's proxy in-process by default, or a program given as a command
// template (go test ./conformance -impl 'prog {flags} {listen} {upstream}').
// README.md in this directory is the full description of the format;
// what follows is its core.
//
// The cases are compiled into the package (CaseFiles, an embed.FS; Suite
// loads them), so a program built from one version of the module runs
// that version's cases: cmd/conformance is such a runner for
// implementations in any language. Every directory of cases states its
// format version in a FORMAT file ("conformance-format: 1"), and the
// loaders refuse a version other than FormatVersion.
//
// Guarantees of the runner: it waits only for events (bytes, replies,
// closes), never sleeps for correctness and asserts no duration; a
// per-case limit only guards against a hang. A case passes only when every
// client connection received exactly its want-client bytes, every upstream
// connection exactly its want-upstream bytes, and every step of the client
// script completed.
//
// # Text form
//
// Every byte string in a case (data sent, replies scripted, expectations)
// is written in one text form, so that files stay readable and CR, LF,
// NUL and long lines are exact:
//
//   - A line of the file stands for its bytes followed by CRLF.
//   - A line that ends in a single backslash gets no CRLF: "abc\" is the
//     three bytes "abc", and "abc\n\" is "abc" and a bare LF.
//   - Escapes: \r CR, \n LF, \t tab, \0 NUL, \xHH any byte (two hex
//     digits), \\ backslash, \{ left brace, \" double quote. Any other
//     backslash sequence is an error.
//   - {repeat N "s"} stands for s (escapes allowed, \" for a quote) N
//     times: {repeat 100000 "x"} is a 100000-byte run.
//   - Raw control bytes other than tab, and bytes that are not UTF-8, are
//     errors: write them as escapes. UTF-8 text is taken as its bytes.
//
// In want-client and want-upstream files three more directives are
// allowed; they are the only inexact parts of an expectation:
//
//   - {any-text} matches any run of bytes without CR or LF, including
//     none. It is for the free text of a reply the proxy makes up where
//     SPEC fixes only the code and enhanced code ("421 4.4.2 {any-text}").
//   - {optional} at the start of a line makes that whole line (and its
//     CRLF) optional: "{optional}QUIT" where SPEC allows a proxy to say QUIT
//     upstream or not.
//   - {prefix}, once, with nothing but literal text after it: the bytes
//     received from that point must be a prefix (possibly empty, possibly
//     all) of the rest of the file. It is for data cut short, where how much
//     was streamed depends on buffering but no more than that may arrive.
//
// Escape writes any byte string in this form, and the runner reports
// received bytes in it, so a transcript can be pasted into a case.
package conformance
