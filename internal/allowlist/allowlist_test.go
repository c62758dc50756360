package allowlist

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestLoopbackDefault(t *testing.T) {
	l := Loopback()
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", true},
		{"127.255.255.254", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true}, // IPv4 on an IPv6 socket
		{"128.0.0.1", false},
		{"192.0.2.1", false},
		{"::2", false},
		{"fe80::1", false},
		{"0.0.0.0", false},
	} {
		if got := l.Contains(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Loopback().Contains(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	if got, want := l.String(), "127.0.0.0/8,::1/128"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParse(t *testing.T) {
	l, err := Parse("127.0.0.1/32", "192.0.2.0/24, 2001:db8::/32", "198.51.100.7", "::ffff:203.0.113.0/120")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.String(), "127.0.0.1/32,192.0.2.0/24,2001:db8::/32,198.51.100.7/32,203.0.113.0/24"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", false},
		{"192.0.2.200", true},
		{"::ffff:192.0.2.200", true},
		{"2001:db8:1::5", true},
		{"198.51.100.7", true},
		{"198.51.100.8", false},
		{"203.0.113.9", true},
		{"::1", false},
	} {
		if got := l.Contains(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Contains(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, v := range []string{"192.0.2.0/33", "192.0.2.1/24", "example.com", "192.0.2", "fe80::1%eth0", "fe80::%eth0/64", "/24"} {
		if _, err := Parse(v); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", v)
		} else if !strings.Contains(err.Error(), "\"") {
			t.Errorf("Parse(%q): error %q does not quote the value", v, err)
		}
	}
}

func TestZeroAllowsNobody(t *testing.T) {
	var l *List
	if l.Contains(netip.MustParseAddr("127.0.0.1")) || !l.Empty() {
		t.Error("a nil list allows a peer")
	}
	if (&List{}).Allows(&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}) {
		t.Error("an empty list allows a peer")
	}
}

func TestAllows(t *testing.T) {
	l, _ := Parse("127.0.0.1/32")
	for _, tc := range []struct {
		peer net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 40000}, true},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 40000}, false},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 40000}, true},
		{&net.UnixAddr{Name: "@", Net: "unix"}, true},
		{&net.UnixAddr{Name: "", Net: "unix"}, true},
		{nil, false},
		{fakeAddr("127.0.0.1:25"), true},
		{fakeAddr("198.51.100.1:25"), false},
		{fakeAddr("pipe"), true},
	} {
		if got := l.Allows(tc.peer); got != tc.want {
			t.Errorf("Allows(%v) = %v, want %v", tc.peer, got, tc.want)
		}
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "fake" }
func (a fakeAddr) String() string  { return string(a) }

func TestRequireLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr    net.Addr
		wantErr string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 10025}, ""},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.53"), Port: 10025}, ""},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 10025}, ""},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, ""},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 10025}, "every interface"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 10025}, "every interface"},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 10025}, "not a loopback address"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 10025}, "not a loopback address"},
	} {
		err := RequireLoopback(tc.addr, "-allow-client", "anyone could relay")
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("RequireLoopback(%v) = %v, want nil", tc.addr, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) ||
			!strings.Contains(err.Error(), "-allow-client CIDR") || !strings.Contains(err.Error(), "anyone could relay")):
			t.Errorf("RequireLoopback(%v) = %v, want an error naming %q, the flag and the risk", tc.addr, err, tc.wantErr)
		}
	}
}
