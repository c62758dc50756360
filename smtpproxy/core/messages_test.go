package core

// realMessage is a realistic message for the seed corpora: the shapes
// mail really has (Received chains, DKIM, MIME multiparts, encoded words,
// list headers, bounces, mbox From_ lines, long base64 and HTML lines,
// dot lines), the loops and near-loops Postfix setups really produce.
type realMessage struct {
	name  string
	from  string
	rcpts []string // the first one is the verdict seed's recipient
	text  string   // LF line ends, not dot-stuffed
}

// realisticMessages returns the messages, written for these seeds.
func realisticMessages() []realMessage {
	return []realMessage{
		{
			name:  "forwarded-loop",
			from:  "newsletter@shop.example",
			rcpts: []string{"anna@home.example"},
			// A .forward loop: the message already went through
			// anna's mailbox once and comes back to it.
			text: `Received: from mx2.home.example (mx2.home.example [198.51.100.7])
	by mx1.home.example (Postfix) with ESMTPS id 4XyZ1r2Q3sz1xkT
	for <anna@home.example>; Wed, 12 Mar 2025 09:14:55 +0100 (CET)
Delivered-To: anna@work.example
Received: from mail.shop.example (mail.shop.example [203.0.113.25])
	by mx.work.example (Postfix) with ESMTP id 9F2A3C04D1
	for <anna@work.example>; Wed, 12 Mar 2025 09:14:51 +0100 (CET)
Delivered-To: Anna@Home.Example
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example;
	s=mail2025; t=1741767290; h=from:to:subject:date:message-id;
	bh=kq3NTFa8w7cCgs1Ew1s4lTxKr2X9Zp0J6dOeM1m2g5Y=;
	b=Yk3h8yO2fKp1V9sRzM0sTqQ7wE4uI6oP2aS5dF8gH1jK3lZ7xC9vB0nM4qW6eR2t
From: "Shop Example" <newsletter@shop.example>
To: anna@work.example
Subject: =?UTF-8?Q?Fr=C3=BChlingsangebote_f=C3=BCr_Sie?=
Date: Wed, 12 Mar 2025 09:14:50 +0100
Message-ID: <20250312081450.3F1@mail.shop.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1_8f3a"

--b1_8f3a
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit

Guten Tag,

unsere Frühlingsangebote sind da.
.
Eine Zeile, die mit einem Punkt beginnt, und eine, die nur aus ihm besteht.
..und zwei Punkte.

--b1_8f3a
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

<html><body><p>Guten Tag,</p><p>unsere Fr=C3=BChlingsangebote sind da.</p></bo=
dy></html>
--b1_8f3a--
`,
		},
		{
			name:  "mailing-list",
			from:  "dev-bounces+bob=lists.example@lists.example",
			rcpts: []string{"bob@lists.example", "carol@lists.example"},
			text: `Return-Path: <dev-bounces+bob=lists.example@lists.example>
Received: from lists.example (localhost [127.0.0.1])
	by lists.example (Postfix) with ESMTP id 6C1D2E0F33
	for <bob@lists.example>; Thu, 13 Mar 2025 17:02:11 +0000 (UTC)
Delivered-To : "Bob Builder" <BOB@lists.example> (list copy)
From: Dave <dave@dev.example>
To: dev@lists.example
Subject: Re: [dev] build breaks on
 the nightly runner
	(again)
In-Reply-To: <c0ffee@dev.example>
List-Id: Developers <dev.lists.example>
List-Unsubscribe: <mailto:dev-leave@lists.example>,
	<https://lists.example/dev/unsubscribe>
List-Post: <mailto:dev@lists.example>
Precedence: list
Content-Type: text/plain; charset=us-ascii

> The nightly run failed at step 3.

It is the cache again; clearing it fixes the run.
-- 
Dave
`,
		},
		{
			name:  "bounce-report",
			from:  "",
			rcpts: []string{"erin@origin.example"},
			// A delivery status notification: the returned message
			// in it has a Delivered-To that must not count, being
			// body, not header.
			text: `Received: by mx.origin.example (Postfix)
	id 0A1B2C3D4E; Fri, 14 Mar 2025 06:00:01 +0000 (UTC)
Date: Fri, 14 Mar 2025 06:00:01 +0000 (UTC)
From: MAILER-DAEMON@relay.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: erin@origin.example
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="0A1B2C3D4E.1741932001/relay.example"

This is a MIME-encapsulated message.

--0A1B2C3D4E.1741932001/relay.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

<frank@far.example>: mail forwarding loop for frank@far.example

--0A1B2C3D4E.1741932001/relay.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example
Final-Recipient: rfc822; frank@far.example
Action: failed
Status: 5.4.6
Diagnostic-Code: X-Postfix; mail forwarding loop for frank@far.example

--0A1B2C3D4E.1741932001/relay.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Delivered-To: erin@origin.example
Received: from origin.example by relay.example; Fri, 14 Mar 2025 05:59:58 +0000
From: erin@origin.example
To: frank@far.example
Subject: hello

--0A1B2C3D4E.1741932001/relay.example--
`,
		},
		{
			name:  "mbox-attachment",
			from:  "gina@photos.example",
			rcpts: []string{"hank@archive.example"},
			// An mbox From_ line first (Postfix makes it X-Mailbox-Line
			// upstream of us, other MTAs may not), a base64 attachment,
			// and one very long unbroken HTML line.
			text: `From gina@photos.example Sat Mar 15 10:30:00 2025
Received: from [192.0.2.44] (unknown [192.0.2.44])
	by smtp.photos.example (Postfix) with ESMTPSA id 77E0D1A2B3
	for <hank@archive.example>; Sat, 15 Mar 2025 10:30:00 +0000 (UTC)
From: Gina <gina@photos.example>
To: Hank <hank@archive.example>
Subject: pictures
Content-Type: multipart/mixed; boundary="=-=-="
MIME-Version: 1.0

--=-=-=
Content-Type: text/html

<table>` + repeatString("<tr><td>row</td><td>value</td></tr>", 120) + `</table>
--=-=-=
Content-Type: image/png; name="dot.png"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="dot.png"

iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA
60e6kgAAAABJRU5ErkJggg==
--=-=-=--
`,
		},
		{
			name:  "alias-expansion",
			from:  "root@host.example",
			rcpts: []string{"postmaster", "ops@host.example"},
			// Local mail from cron after alias expansion: Delivered-To
			// holds a bare local part, as local(8) writes it for an
			// alias without domain.
			text: `Delivered-To: postmaster
Delivered-To: ops+cron@host.example
Received: by host.example (Postfix, from userid 0)
	id 1122334455; Sun, 16 Mar 2025 03:00:01 +0000 (UTC)
From: root@host.example (Cron Daemon)
To: postmaster
Subject: Cron <root@host> /usr/local/sbin/backup
X-Cron-Env: <SHELL=/bin/sh>
X-Cron-Env: <HOME=/root>
Date: Sun, 16 Mar 2025 03:00:01 +0000 (UTC)

backup: 14 files, 0 errors
.
done
`,
		},
		{
			name:  "calendar-crlf-bare-cr",
			from:  "ivy@cal.example",
			rcpts: []string{"jon@team.example"},
			// A calendar invite: folded iCalendar lines, a header whose
			// value carries a stray CR, and an IDN domain.
			text: "Received: from cal.example by mx.team.example; Mon, 17 Mar 2025 08:00:00 +0000\n" +
				"Delivered-To: jon@xn--tam-bma.example\n" +
				"From: Ivy <ivy@cal.example>\n" +
				"To: jon@team.example\n" +
				"Subject: Invitation: planning\r(updated)\n" +
				"Content-Type: text/calendar; method=REQUEST; charset=UTF-8\n" +
				"\n" +
				"BEGIN:VCALENDAR\n" +
				"VERSION:2.0\n" +
				"BEGIN:VEVENT\n" +
				"SUMMARY:Planning\n" +
				"DESCRIPTION:Agenda: budget\\, roadmap\\, and the release date for the\n" +
				"  next version.\n" +
				"ATTENDEE;CN=Jon:mailto:jon@téam.example\n" +
				"END:VEVENT\n" +
				"END:VCALENDAR\n",
		},
	}
}

func repeatString(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}
