package smtpproxy

import (
	"strings"
	"testing"
)

func TestRcvbufWithin(t *testing.T) {
	for _, tc := range []struct {
		rmemMax string
		want    int
		why     string // in the error; "" for none
	}{
		{"4194304\n", streamSocketBuffer, ""},
		{"1048576", streamSocketBuffer, ""},
		{"212992\n", 0, "212992, below"},
		{"1048575", 0, "below"},
		{"", 0, "not a number"},
		{"lots", 0, "not a number"},
	} {
		got, err := rcvbufWithin(tc.rmemMax)
		if got != tc.want {
			t.Errorf("rcvbufWithin(%q) = %d, want %d", tc.rmemMax, got, tc.want)
		}
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("rcvbufWithin(%q): %v", tc.rmemMax, err)
		case tc.why != "" && (err == nil || !strings.Contains(err.Error(), tc.why)):
			t.Errorf("rcvbufWithin(%q): error %v, want one saying %q", tc.rmemMax, err, tc.why)
		}
	}
}
