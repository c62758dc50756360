// Package expand computes, for one accepted envelope recipient, the
// addresses Postfix will compare with a message's Delivered-To: headers,
// and for each whether its delivery compares them at all: the expansion
// the loop check (package loopcheck) judges a recipient by, besides the
// address as the client spelled it.
//
// Postfix's local(8) does not compare the RCPT TO address. It compares the
// queue recipient after cleanup(8) rewrote it, and each aliases(5) level
// after that (local/recipient.c deliver_recipient). This package follows
// the same steps, in Postfix's order and with Postfix's rules, each
// function citing the Postfix function it follows:
//
//   - trivial-rewrite's local context: @$myorigin for a bare local part,
//     bang paths and the percent hack, append_dot_mydomain, the trailing
//     dot (rewrite.go);
//   - recipient_canonical_maps then canonical_maps, when envelope_recipient
//     is in their *_classes, one-to-one; masquerade_domains when
//     envelope_recipient is in masquerade_classes; then virtual_alias_maps, one to
//     many, recursively, within virtual_alias_recursion_limit,
//     virtual_alias_expansion_limit and virtual_alias_address_length_limit;
//     keys tried in mail_addr_find's order (user+ext@domain, user@domain,
//     user+ext and user for a local domain, @domain), partial keys only in
//     fixed-string tables; unmatched extensions propagated as
//     propagate_unmatched_extensions says (find.go);
//   - the address class (mydestination, virtual_alias_domains,
//     virtual_mailbox_domains, relay_domains) and the transport (the
//     class's *_transport, transport_maps), and from master.cf whether that
//     transport is local(8) or pipe(8) with flag D (rewrite.go);
//   - for local(8): aliases(5) under the local part with and without its
//     extension, :include: files, targets that resolve back to local(8)
//     compared at the next level, the others forwarded and followed
//     through cleanup again, within local(8)'s nesting limit of 100
//     (local.go).
//
// What no filter can see is out of its reach: ~/.forward files live in home
// directories; luser_relay applies to users local(8) does not find in the
// passwd database (getpwnam through the name service switch, as local(8)
// sees it), which a filter cannot tell faithfully, so its address, which
// local(8) compares too (local/unknown.c deliver_unknown), is not
// followed. mailbox_transport and fallback_transport hand the recipient on
// unchanged. sender_dependent_default_transport_maps depends on the
// sender: such targets are judged as checking loops.
//
// Table lookups go through a Backend: Proxymap speaks Postfix's proxymap(8)
// protocol over its socket (both request forms: before and from Postfix
// 3.11), Postmap runs postmap(1) and postalias(1), Memory holds tables in
// memory for tests. static:, inline: and fail: tables are answered in
// process. The configuration is read once with postconf(1) (LoadConfig);
// Reload reads it again and empties the cache.
//
// Guarantees: an expansion never fails mail. A lookup error, a timeout, a
// DENY, an unreachable socket or a reached limit make the Result incomplete
// with a typed Cause, and an incomplete result judges the recipient as
// spelled (Result.Expansion), as the proxy did without expansion. An
// expansion is bounded: Postfix's own limits, MaxLookups, MaxTargets and a
// timeout. Expand, Start and Wait are safe for concurrent use; Wait never
// blocks past its context; Close ends every expansion and waits for none
// that is stuck: it leaves no goroutine behind but the reads of :include:
// files blocked in the kernel (a hung NFS mount; at most eight), which end
// when the kernel returns.
package expand
