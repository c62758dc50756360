package expand

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// TestLoadConfig reads a configuration directory with the real postconf(1)
// (no Postfix needs to run).
func TestLoadConfig(t *testing.T) {
	if _, err := exec.LookPath(command("postconf")); err != nil {
		if os.Getenv(postfixtest.RequireEnv) == "1" {
			t.Fatalf("postconf not found: %v", err)
		}
		t.Skipf("postconf not installed: %v", err)
	}
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("mydest", "# local domains\nfile.test\n!not.test, other.test\n")
	write("main.cf", `compatibility_level = 3.6
meta_directory = /etc/postfix
queue_directory = /var/spool/pftest
myhostname = mx.local.test
mydomain = local.test
myorigin = $mydomain
mydestination = $myhostname, local.test, `+dir+`/mydest, hash:/etc/postfix/mydest
inet_interfaces = loopback-only
recipient_delimiter = +-
propagate_unmatched_extensions = canonical, alias
recipient_canonical_classes = header_recipient
virtual_alias_maps = proxy:hash:/etc/postfix/virtual, regexp:/etc/postfix/v.re, inline:{ a=b, { c = d e } }
alias_maps = hash:/etc/aliases
transport_maps = hash:/etc/postfix/transport
parent_domain_matches_subdomains = relay_domains, transport_maps
relay_domains = relay.test
local_transport = dovecot
virtual_alias_expansion_limit = 42
proxy_read_maps = $local_recipient_maps proxy:hash:/etc/postfix/virtual proxy:proxy:hash:/etc/aliases
`)
	write("master.cf", `smtp inet n - y - - smtpd
local unix - n n - - local
dovecot unix - n n - - pipe
  flags=DRhu user=vmail argv=/usr/lib/dovecot/deliver -d ${recipient}
plain unix - n n - - pipe
  flags=Rq { user = nobody } argv=/bin/cat
`)
	c, err := LoadConfig(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, got, want any) {
		t.Helper()
		if !equalAny(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	check("MyOrigin", c.MyOrigin, "local.test")
	check("RecipientDelimiter", c.RecipientDelimiter, "+-")
	check("PropagateCanonical", c.PropagateCanonical, true)
	check("PropagateVirtual", c.PropagateVirtual, false)
	check("PropagateAlias", c.PropagateAlias, true)
	check("RecipientCanonicalEnvelope", c.RecipientCanonicalEnvelope, false)
	check("CanonicalEnvelope", c.CanonicalEnvelope, true)
	check("VirtualAliasMaps", c.VirtualAliasMaps, []string{"hash:/etc/postfix/virtual", "regexp:/etc/postfix/v.re", "inline:{ a=b, { c = d e } }"})
	check("TransportParent", c.TransportParent, true)
	check("RelayDomains.Parent", c.RelayDomains.Parent, true)
	check("LocalTransport", c.LocalTransport, "dovecot")
	check("VirtualAliasExpansionLimit", c.VirtualAliasExpansionLimit, 42)
	check("VirtualAliasRecursionLimit", c.VirtualAliasRecursionLimit, DefaultVirtualAliasRecursionLimit)
	check("HopcountLimit", c.HopcountLimit, DefaultHopcountLimit)
	// $local_recipient_maps defaults to proxy:unix:passwd.byname $alias_maps.
	check("ProxyReadMaps", c.ProxyReadMaps, []string{"unix:passwd.byname", "hash:/etc/postfix/virtual", "hash:/etc/aliases"})
	check("ProxymapSocket", c.ProxymapSocket(), "/var/spool/pftest/public/proxymap")
	check("ProxymapNewForm", c.ProxymapNewForm(), false)
	check("dovecot checks loops", c.Services["dovecot"].ChecksLoops(), true)
	check("plain checks loops", c.Services["plain"].ChecksLoops(), false)
	check("local checks loops", c.Services["local"].ChecksLoops(), true)
	var names []string
	for _, e := range c.MyDestination.Entries {
		switch {
		case e.Table != "":
			names = append(names, "table "+e.Table)
		case e.Negate:
			names = append(names, "!"+e.Name)
		default:
			names = append(names, e.Name)
		}
	}
	check("MyDestination", names, []string{"mx.local.test", "local.test", "file.test", "!not.test", "other.test", "table hash:/etc/postfix/mydest"})
	if len(c.InetInterfaces) != 2 {
		t.Errorf("inet_interfaces = loopback-only: %v", c.InetInterfaces)
	}
	if u := c.unapproved(); !slices.Contains(u, "regexp:/etc/postfix/v.re") || slices.Contains(u, "hash:/etc/postfix/virtual") ||
		slices.ContainsFunc(u, func(s string) bool { return strings.HasPrefix(s, "inline:") }) {
		t.Errorf("unapproved tables %q", u)
	}
	if _, err := LoadConfig(context.Background(), filepath.Join(dir, "none")); err == nil {
		t.Errorf("LoadConfig of a missing directory succeeded")
	}
}

func equalAny(a, b any) bool {
	as, ok1 := a.([]string)
	bs, ok2 := b.([]string)
	if ok1 && ok2 {
		return slices.Equal(as, bs)
	}
	return a == b
}

// TestParseHelpers: Postfix's list splitting, versions, table types.
func TestParseHelpers(t *testing.T) {
	if got, want := splitList(" a, b\tc,{x, y} inline:{ k=v, {k2 = v 2} },,"), []string{"a", "b", "c", "{x, y}", "inline:{ k=v, {k2 = v 2} }"}; !slices.Equal(got, want) {
		t.Errorf("splitList = %q, want %q", got, want)
	}
	for v, want := range map[string][2]int{"3.7.11": {3, 7}, "3.11-20250713": {3, 11}, "3.12.1": {3, 12}, "4": {4, 0}, "": {0, 0}} {
		if ma, mi := parseVersion(v); ma != want[0] || mi != want[1] {
			t.Errorf("parseVersion(%q) = %d.%d", v, ma, mi)
		}
	}
	for table, want := range map[string][2]bool{
		"hash:/x": {true, true}, "lmdb:/x": {true, true}, "mysql:/x.cf": {true, true}, "ldap:/x.cf": {true, true},
		"regexp:/x": {false, true}, "pcre:/x": {false, true}, "socketmap:inet:h:1:n": {false, true},
		"unionmap:{regexp:/a, hash:/b}": {true, true}, "unionmap:{regexp:/a, pcre:/b}": {false, true},
		"weird:/x": {false, false}, "noColon": {false, false}, "pipemap:{": {false, false},
	} {
		if f, ok := typeFixed(table); f != want[0] || ok != want[1] {
			t.Errorf("typeFixed(%q) = %v %v, want %v", table, f, ok, want)
		}
	}
	if got := inlineEntries("{ A=b, {k2 = v 2}, junk, =x }"); len(got) != 2 || got["a"] != "b" || got["k2"] != "v 2" {
		t.Errorf("inlineEntries = %v", got)
	}
}

// TestSplitExtension follows util/split_addr.c split_addr.
func TestSplitExtension(t *testing.T) {
	c := testConfig()
	c.RecipientDelimiter = "+-"
	for local, want := range map[string]string{
		"user+ext": "user ext", "user-ext": "user ext", "user+": "user ", "+ext": "", "user": "",
		"owner-list": "", "list-request": "", "MAILER-DAEMON": "", "double-bounce": "",
		// The exceptions are whole local parts: postmaster+x splits.
		"postmaster+x": "postmaster x",
		"a+b-c":        "a b-c",
	} {
		user, ext, ok := c.splitExtension(local)
		got := ""
		if ok {
			got = user + " " + ext
		}
		if got != want {
			t.Errorf("split %q = %q, want %q", local, got, want)
		}
	}
}
