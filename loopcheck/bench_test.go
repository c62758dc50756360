package loopcheck

import (
	"fmt"
	"strings"
	"testing"
)

// typicalHeader builds a realistic header section of about size bytes with
// three Delivered-To fields (none matching), padded with Received: fields.
func typicalHeader(size int) []byte {
	var b strings.Builder
	b.WriteString("Received: from mail.example.org (mail.example.org [192.0.2.25])\r\n\tby mx.local.test (Postfix) with ESMTPS id 4Zx9Q; Wed, 25 Nov 2026 10:00:00 +0000 (UTC)\r\n")
	b.WriteString("Delivered-To: list-owner@lists.example.org\r\n")
	b.WriteString("Delivered-To: \"Forwarder\" <fwd+inbox@example.net> (via alias)\r\n")
	b.WriteString("Delivered-To: archive@example.com\r\n")
	b.WriteString("From: \"Sender Name\" <sender@example.org>\r\nTo: user@local.test\r\nSubject: a typical message\r\n")
	b.WriteString("Message-ID: <20261125100000.4Zx9Q@mail.example.org>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n")
	for i := 0; b.Len() < size-200; i++ {
		fmt.Fprintf(&b, "Received: from relay%d.example.org (relay%d.example.org [198.51.100.%d])\r\n\tby relay.example.org with ESMTP id %08X\r\n", i, i, i%250, i)
	}
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n\r\n")
	return []byte(b.String())
}

var benchRcpts = []string{"<user@local.test>", "<other@local.test> NOTIFY=NEVER"}

func BenchmarkCheck(b *testing.B) {
	for _, size := range []int{1 << 10, 4 << 10, 64 << 10, 1 << 20} {
		msg := typicalHeader(size)
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if v := Check(benchRcpts, msg); v.Loop {
					b.Fatal("unexpected loop")
				}
			}
		})
	}
}

// BenchmarkCheckDeliveredTo is the worst realistic case for the verdict: a
// header section made only of Delivered-To fields, every one parsed and keyed.
func BenchmarkCheckDeliveredTo(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		field := "Delivered-To: \"Name\" <someone+ext@sub.example.org> (comment)\r\n"
		msg := []byte(strings.Repeat(field, size/len(field)) + "\r\n")
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				Check(benchRcpts, msg)
			}
		})
	}
}

func TestTypicalHeaderShape(t *testing.T) {
	// The benchmark input is what it says: a header section of the wanted
	// size with three Delivered-To fields and nothing after it.
	msg := typicalHeader(4 << 10)
	if n := strings.Count(string(msg), "\r\nDelivered-To:"); n != 3 {
		t.Errorf("%d Delivered-To fields, want 3", n)
	}
	if len(msg) < 3<<10 || len(msg) > 4<<10 {
		t.Errorf("size %d, want about 4 KiB", len(msg))
	}
	if v := Check([]string{"<archive@example.com>"}, msg); !v.Loop {
		t.Errorf("the third field is not read: %+v", v)
	}
}
