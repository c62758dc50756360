package expand

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Postfix's limits on virtual alias expansion, the defaults of the
// parameters of the same name (global/mail_params.h). Config reads the
// site's values; these apply when a Config is built by hand.
const (
	// DefaultVirtualAliasRecursionLimit bounds the nesting of virtual
	// alias lookups (cleanup_map1n.c): beyond it cleanup defers the mail
	// ("unreasonable virtual_alias_maps map nesting").
	DefaultVirtualAliasRecursionLimit = 1000
	// DefaultVirtualAliasExpansionLimit bounds the addresses one recipient
	// expands to (cleanup_map1n.c): beyond it cleanup defers the mail.
	DefaultVirtualAliasExpansionLimit = 1000
	// DefaultVirtualAliasAddressLengthLimit bounds the length of one
	// expanded address (cleanup_map1n.c): a longer one defers the mail.
	DefaultVirtualAliasAddressLengthLimit = 1000
	// DefaultHopcountLimit is hopcount_limit: cleanup refuses a message
	// with more Received: headers, and local(8) adds one each time it
	// forwards (local/forward.c), so it bounds chains of forwarding.
	DefaultHopcountLimit = 50
)

// Config is what the expansion needs of a Postfix configuration: the
// parameters of main.cf that steer cleanup(8)'s recipient rewriting,
// trivial-rewrite(8)'s address classes and transports, and local(8)'s
// aliases, and the delivery services of master.cf. LoadConfig reads it
// with postconf(1); tests build it by hand (see DefaultConfig).
type Config struct {
	MailVersion string // mail_version: picks the proxymap request form

	MyHostname string // myhostname: the domain of a bare address after resolving
	MyOrigin   string // myorigin: appended to a bare local part (append_at_myorigin)
	MyDomain   string // mydomain: appended by append_dot_mydomain

	// The address classes of trivial-rewrite(8) (resolve.c): local
	// (mydestination, or an address literal of inet_interfaces /
	// proxy_interfaces), virtual alias, virtual mailbox, relay, default.
	MyDestination         List
	InetInterfaces        []netip.Addr
	ProxyInterfaces       []netip.Addr
	VirtualAliasDomains   List
	VirtualMailboxDomains List
	RelayDomains          List

	RecipientDelimiter  string // recipient_delimiter: the set of extension delimiters
	HopcountLimit       int    // hopcount_limit: bounds how often local(8) forwarding can resubmit
	OwnerRequestSpecial bool   // owner_request_special: owner-x and x-request are not split
	DoubleBounceSender  string // double_bounce_sender: never split either
	EmptyAddressRecip   string // empty_address_recipient

	// propagate_unmatched_extensions: canonical, virtual, alias, include.
	PropagateCanonical, PropagateVirtual, PropagateAlias, PropagateInclude bool

	// cleanup(8)'s maps, each a list of type:name tables, and whether
	// envelope_recipient is in the matching *_classes.
	RecipientCanonicalMaps     []string
	RecipientCanonicalEnvelope bool
	CanonicalMaps              []string
	CanonicalEnvelope          bool
	VirtualAliasMaps           []string
	// Address masquerading (cleanup/cleanup_masquerade.c), applied to
	// envelope recipients only when envelope_recipient is in
	// masquerade_classes (MasqueradeEnvelope; not by default):
	// masquerade_domains in order ("!name" excludes), and
	// masquerade_exceptions, a string list of local parts left alone.
	MasqueradeDomains    []string
	MasqueradeExceptions List
	MasqueradeEnvelope   bool
	AliasMaps            []string // local(8)'s aliases(5) tables
	TransportMaps        []string
	// TransportParent: transport_maps is in
	// parent_domain_matches_subdomains, so "example.com" matches its
	// subdomains (else ".example.com" does).
	TransportParent bool

	// Transports ("name" or "name:nexthop") of the address classes.
	LocalTransport, VirtualTransport, RelayTransport, DefaultTransport string
	// SenderDependentDefaultTransport: sender_dependent_default_transport_maps
	// is set; the default class's transport then depends on the sender,
	// which an expansion of a recipient does not know.
	SenderDependentDefaultTransport bool

	// trivial-rewrite(8)'s rewriting of a bare address (rewrite.c).
	AppendAtMyorigin, AppendDotMydomain, SwapBangpath, AllowPercentHack bool

	VirtualAliasRecursionLimit     int
	VirtualAliasExpansionLimit     int
	VirtualAliasAddressLengthLimit int

	// Services are master.cf's unix services by name: what a transport
	// name runs.
	Services map[string]Service

	// ProxyReadMaps are the tables proxymap(8) serves: the entries of
	// proxy_read_maps that begin with "proxy:", without it.
	ProxyReadMaps []string
	// QueueDirectory holds public/proxymap.
	QueueDirectory string
}

// Service is one master.cf service.
type Service struct {
	Name, Type string
	Command    string   // the daemon: local, pipe, virtual, lmtp, smtp, error, ...
	Args       []string // its arguments, as postconf -M prints them
}

// ChecksLoops reports whether the service bounces a recipient found in a
// Delivered-To: header: local(8) always (local/recipient.c
// deliver_recipient), pipe(8) with flag D (pipe/pipe.c,
// delivered_hdr_find). virtual(8), lmtp(8), smtp(8) never do.
func (s Service) ChecksLoops() bool {
	switch s.Command {
	case "local":
		return true
	case "pipe":
		return strings.ContainsRune(s.pipeFlags(), 'D')
	}
	return false
}

// pipeFlags returns the value of a pipe(8) service's flags= argument.
func (s Service) pipeFlags() string {
	for _, a := range s.Args {
		a = unbrace(a)
		k, v, ok := strings.Cut(a, "=")
		if ok && strings.TrimSpace(k) == "flags" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// List is a Postfix match list (util/match_list.c): mydestination and the
// virtual domain lists are string lists (exact names), relay_domains is a
// domain list (Parent: a name matches its subdomains).
type List struct {
	Entries []ListEntry
	Domain  bool // a domain list (match_hostname), not a string list (match_string)
	Parent  bool // with Domain: the parameter is in parent_domain_matches_subdomains
}

// ListEntry is one pattern of a List.
type ListEntry struct {
	Negate bool
	Name   string // a case-folded name, or "" for a table
	Table  string // type:name, looked up with the name as key
	Err    error  // an unreadable /file/name: every match fails with it
}

// DefaultConfig returns the configuration of a Postfix 3.7 with its
// defaults and these three settings, for tests and for building a Config
// by hand.
func DefaultConfig(myhostname, mydomain string, mydestination ...string) *Config {
	c := &Config{
		MailVersion:                    "3.7.11",
		MyHostname:                     myhostname,
		MyOrigin:                       myhostname,
		MyDomain:                       mydomain,
		RecipientDelimiter:             "",
		OwnerRequestSpecial:            true,
		DoubleBounceSender:             "double-bounce",
		EmptyAddressRecip:              "MAILER-DAEMON",
		PropagateCanonical:             true,
		PropagateVirtual:               true,
		RecipientCanonicalEnvelope:     true,
		CanonicalEnvelope:              true,
		LocalTransport:                 "local:" + myhostname,
		VirtualTransport:               "virtual",
		RelayTransport:                 "relay",
		DefaultTransport:               "smtp",
		AppendAtMyorigin:               true,
		SwapBangpath:                   true,
		AllowPercentHack:               true,
		VirtualAliasRecursionLimit:     DefaultVirtualAliasRecursionLimit,
		VirtualAliasExpansionLimit:     DefaultVirtualAliasExpansionLimit,
		VirtualAliasAddressLengthLimit: DefaultVirtualAliasAddressLengthLimit,
		HopcountLimit:                  DefaultHopcountLimit,
		InetInterfaces:                 []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		Services:                       map[string]Service{},
		RelayDomains:                   List{Domain: true, Parent: true},
	}
	c.MyDestination = parseList(strings.Join(mydestination, ", "), false, false)
	for _, s := range []Service{
		{Name: "local", Type: "unix", Command: "local"},
		{Name: "virtual", Type: "unix", Command: "virtual"},
		{Name: "lmtp", Type: "unix", Command: "lmtp"},
		{Name: "smtp", Type: "unix", Command: "smtp"},
		{Name: "relay", Type: "unix", Command: "smtp"},
		{Name: "error", Type: "unix", Command: "error"},
		{Name: "retry", Type: "unix", Command: "error"},
		{Name: "discard", Type: "unix", Command: "discard"},
	} {
		c.Services[s.Name] = s
	}
	return c
}

// params are the main.cf parameters LoadConfig reads.
var params = []string{
	"mail_version", "myhostname", "myorigin", "mydomain", "mydestination",
	"inet_interfaces", "proxy_interfaces",
	"virtual_alias_domains", "virtual_mailbox_domains", "relay_domains",
	"parent_domain_matches_subdomains",
	"recipient_delimiter", "owner_request_special", "double_bounce_sender", "empty_address_recipient",
	"propagate_unmatched_extensions",
	"recipient_canonical_maps", "recipient_canonical_classes", "canonical_maps", "canonical_classes",
	"virtual_alias_maps", "alias_maps", "transport_maps",
	"masquerade_domains", "masquerade_exceptions", "masquerade_classes",
	"local_transport", "virtual_transport", "relay_transport", "default_transport",
	"sender_dependent_default_transport_maps",
	"append_at_myorigin", "append_dot_mydomain", "swap_bangpath", "allow_percent_hack",
	"virtual_alias_recursion_limit", "virtual_alias_expansion_limit", "virtual_alias_address_length_limit",
	"hopcount_limit", "proxy_read_maps", "queue_directory",
}

// postconfTimeout bounds one postconf(1) run: it reads two files and
// exits; a minute means something is badly wrong.
const postconfTimeout = time.Minute

// postconfPath is where Debian and Postfix's own install put postconf.
const postconfPath = "/usr/sbin/postconf"

// LoadConfig reads the configuration of the Postfix instance whose
// config_directory is dir, with `postconf -c dir -x` for main.cf (values
// with $name expanded) and `postconf -c dir -M` for master.cf.
func LoadConfig(ctx context.Context, dir string) (*Config, error) {
	run := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, postconfTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, postconfCommand(), append([]string{"-c", dir}, args...)...)
		cmd.WaitDelay = time.Second
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("postconf -c %s %s: %v: %s", dir, args[0], err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	main, err := run(append([]string{"-x"}, params...)...)
	if err != nil {
		return nil, err
	}
	master, err := run("-M")
	if err != nil {
		return nil, err
	}
	return parseConfig(main, master, os.ReadFile)
}

// postconfCommand is postconf's path, or "postconf" from PATH where
// Postfix lives elsewhere.
func postconfCommand() string {
	if _, err := os.Stat(postconfPath); err == nil {
		return postconfPath
	}
	return "postconf"
}

// parseConfig builds a Config from the output of `postconf -x NAME...`
// ("name = value" lines) and `postconf -M` (one master.cf entry a line).
// readFile reads the /file/name entries of match lists.
func parseConfig(mainOut, masterOut []byte, readFile func(string) ([]byte, error)) (*Config, error) {
	p := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(mainOut))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " = ")
		if !ok {
			name, ok = strings.CutSuffix(sc.Text(), " =")
		}
		if ok {
			p[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read postconf output: %w", err)
	}
	for _, name := range params {
		if _, ok := p[name]; !ok {
			return nil, fmt.Errorf("postconf did not report parameter %s", name)
		}
	}
	names := func(param string) map[string]bool {
		m := map[string]bool{}
		for _, n := range splitList(p[param]) {
			m[strings.ToLower(n)] = true
		}
		return m
	}
	yes := func(param string) bool { return strings.EqualFold(p[param], "yes") }
	limit := func(param string) (int, error) {
		n, err := strconv.Atoi(p[param])
		if err != nil || n < 1 {
			return 0, fmt.Errorf("parameter %s = %q: not a positive number", param, p[param])
		}
		return n, nil
	}
	parent := names("parent_domain_matches_subdomains")
	ext := names("propagate_unmatched_extensions")
	c := &Config{
		MailVersion:                     p["mail_version"],
		MyHostname:                      p["myhostname"],
		MyOrigin:                        p["myorigin"],
		MyDomain:                        p["mydomain"],
		MyDestination:                   parseListFiles(p["mydestination"], false, false, readFile),
		VirtualAliasDomains:             parseListFiles(p["virtual_alias_domains"], false, false, readFile),
		VirtualMailboxDomains:           parseListFiles(p["virtual_mailbox_domains"], false, false, readFile),
		RelayDomains:                    parseListFiles(p["relay_domains"], true, parent["relay_domains"], readFile),
		RecipientDelimiter:              p["recipient_delimiter"],
		OwnerRequestSpecial:             yes("owner_request_special"),
		DoubleBounceSender:              p["double_bounce_sender"],
		EmptyAddressRecip:               p["empty_address_recipient"],
		PropagateCanonical:              ext["canonical"],
		PropagateVirtual:                ext["virtual"],
		PropagateAlias:                  ext["alias"],
		PropagateInclude:                ext["include"],
		RecipientCanonicalMaps:          tableList(p["recipient_canonical_maps"]),
		RecipientCanonicalEnvelope:      names("recipient_canonical_classes")["envelope_recipient"],
		CanonicalMaps:                   tableList(p["canonical_maps"]),
		CanonicalEnvelope:               names("canonical_classes")["envelope_recipient"],
		VirtualAliasMaps:                tableList(p["virtual_alias_maps"]),
		MasqueradeDomains:               splitList(p["masquerade_domains"]),
		MasqueradeExceptions:            parseListFiles(p["masquerade_exceptions"], false, false, readFile),
		MasqueradeEnvelope:              names("masquerade_classes")["envelope_recipient"],
		AliasMaps:                       tableList(p["alias_maps"]),
		TransportMaps:                   tableList(p["transport_maps"]),
		TransportParent:                 parent["transport_maps"],
		LocalTransport:                  p["local_transport"],
		VirtualTransport:                p["virtual_transport"],
		RelayTransport:                  p["relay_transport"],
		DefaultTransport:                p["default_transport"],
		SenderDependentDefaultTransport: p["sender_dependent_default_transport_maps"] != "",
		AppendAtMyorigin:                yes("append_at_myorigin"),
		AppendDotMydomain:               yes("append_dot_mydomain"),
		SwapBangpath:                    yes("swap_bangpath"),
		AllowPercentHack:                yes("allow_percent_hack"),
		QueueDirectory:                  p["queue_directory"],
		Services:                        parseMaster(masterOut),
	}
	var err error
	if c.VirtualAliasRecursionLimit, err = limit("virtual_alias_recursion_limit"); err != nil {
		return nil, err
	}
	if c.VirtualAliasExpansionLimit, err = limit("virtual_alias_expansion_limit"); err != nil {
		return nil, err
	}
	if c.VirtualAliasAddressLengthLimit, err = limit("virtual_alias_address_length_limit"); err != nil {
		return nil, err
	}
	if c.HopcountLimit, err = limit("hopcount_limit"); err != nil {
		return nil, err
	}
	if c.InetInterfaces, err = interfaceAddrs(p["inet_interfaces"]); err != nil {
		return nil, err
	}
	if c.ProxyInterfaces, err = interfaceAddrs(p["proxy_interfaces"]); err != nil {
		return nil, err
	}
	for _, t := range splitList(p["proxy_read_maps"]) {
		t = unbrace(t)
		if strings.HasPrefix(t, "proxy:") {
			if name := stripProxy(t); strings.Contains(name, ":") && !slices.Contains(c.ProxyReadMaps, name) {
				c.ProxyReadMaps = append(c.ProxyReadMaps, name)
			}
		}
	}
	return c, nil
}

// tableList splits a maps parameter into its tables (global/maps.c
// maps_create), each without "proxy:" prefixes: the proxymap backend names
// the table it asks proxymap for, and postmap(1) opens it directly.
func tableList(v string) []string {
	var out []string
	for _, t := range splitList(v) {
		out = append(out, stripProxy(t))
	}
	return out
}

// stripProxy removes "proxy:" prefixes from a table name.
func stripProxy(t string) string {
	for strings.HasPrefix(t, "proxy:") {
		t = strings.TrimPrefix(t, "proxy:")
	}
	return t
}

// parseList parses a match list without reading files (a /file/name entry
// becomes an entry that fails).
func parseList(v string, domain, parent bool) List {
	return parseListFiles(v, domain, parent, func(string) ([]byte, error) {
		return nil, fmt.Errorf("file patterns are not read here")
	})
}

// maxListFileDepth bounds /file/name entries that name files in turn.
// Postfix has no bound (a file naming itself makes it recurse until it
// dies); a configuration this deep is an error either way.
const maxListFileDepth = 10

// parseListFiles parses a match list as match_list_parse does: entries
// separated by commas and white space, '!' negates, /file/name is replaced
// by the file's entries, type:name is a table, anything else a name,
// case-folded.
func parseListFiles(v string, domain, parent bool, readFile func(string) ([]byte, error)) List {
	l := List{Domain: domain, Parent: parent}
	var parse func(v string, negate bool, depth int)
	parse = func(v string, negate bool, depth int) {
		for _, item := range splitList(v) {
			neg := negate
			for strings.HasPrefix(item, "!") {
				item, neg = item[1:], !neg
			}
			switch {
			case item == "":
			case item[0] == '/':
				b, err := readFile(item)
				if err == nil && depth >= maxListFileDepth {
					err = fmt.Errorf("file patterns nested deeper than %d files", maxListFileDepth)
				}
				if err != nil {
					l.Entries = append(l.Entries, ListEntry{Negate: neg, Err: fmt.Errorf("open file %s: %w", item, err)})
					continue
				}
				for line := range strings.Lines(string(b)) {
					if t := strings.TrimSpace(line); t == "" || t[0] == '#' {
						continue
					}
					parse(line, neg, depth+1)
				}
			case item[0] != '[' && strings.Contains(item, ":"):
				l.Entries = append(l.Entries, ListEntry{Negate: neg, Table: stripProxy(item)})
			default:
				l.Entries = append(l.Entries, ListEntry{Negate: neg, Name: foldKey(item)})
			}
		}
	}
	parse(v, false, 0)
	return l
}

// interfaceAddrs reads inet_interfaces or proxy_interfaces: "all" is every
// address of this host's interfaces, "loopback-only" the loopback
// addresses; other entries are IP addresses (a host name is skipped: it
// would need the resolver, and only matters for mail to user@[address]).
func interfaceAddrs(v string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, item := range splitList(v) {
		switch strings.ToLower(item) {
		case "all":
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return nil, fmt.Errorf("list interface addresses for inet_interfaces = all: %w", err)
			}
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					out = append(out, p.Addr().Unmap())
				}
			}
		case "loopback-only":
			out = append(out, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"))
		default:
			if a, err := netip.ParseAddr(strings.Trim(item, "[]")); err == nil {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

// parseMaster reads `postconf -M` output: one service a line, "name type
// private unpriv chroot wakeup maxproc command args...".
func parseMaster(out []byte) map[string]Service {
	m := map[string]Service{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 8 || f[1] != "unix" {
			continue
		}
		m[f[0]] = Service{Name: f[0], Type: f[1], Command: f[7], Args: joinBraced(f[8:])}
	}
	return m
}

// joinBraced joins fields that a "{ ... }" argument spread over.
func joinBraced(f []string) []string {
	var out []string
	for i := 0; i < len(f); i++ {
		if !strings.HasPrefix(f[i], "{") {
			out = append(out, f[i])
			continue
		}
		j := i
		for j < len(f)-1 && !strings.HasSuffix(f[j], "}") {
			j++
		}
		out = append(out, strings.Join(f[i:j+1], " "))
		i = j
	}
	return out
}

// ProxymapNewForm reports whether the Postfix version speaks the proxymap
// request form of Postfix 3.11 and later (instance_flags; snapshot
// 20250713, global/dict_proxy.c): mail_version 3.11 or later.
func (c *Config) ProxymapNewForm() bool {
	major, minor := parseVersion(c.MailVersion)
	return major > 3 || major == 3 && minor >= 11
}

// parseVersion reads "3.7.11" or "3.11-20250713" as major, minor.
func parseVersion(v string) (major, minor int) {
	num := func(s string) (int, string) {
		i := 0
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
		n, _ := strconv.Atoi(s[:i])
		return n, s[i:]
	}
	major, rest := num(v)
	if r, ok := strings.CutPrefix(rest, "."); ok {
		minor, _ = num(r)
	}
	return major, minor
}

// tables returns every table the expansion may look up, once each, in
// the order of first use.
func (c *Config) tables() []string {
	var out []string
	add := func(ts ...string) {
		for _, t := range ts {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	if c.RecipientCanonicalEnvelope {
		add(c.RecipientCanonicalMaps...)
	}
	if c.CanonicalEnvelope {
		add(c.CanonicalMaps...)
	}
	add(c.VirtualAliasMaps...)
	if c.masquerades() {
		for _, e := range c.MasqueradeExceptions.Entries {
			if e.Table != "" {
				add(e.Table)
			}
		}
	}
	for _, l := range []List{c.MyDestination, c.VirtualAliasDomains, c.VirtualMailboxDomains, c.RelayDomains} {
		for _, e := range l.Entries {
			if e.Table != "" {
				add(e.Table)
			}
		}
	}
	add(c.TransportMaps...)
	add(c.AliasMaps...)
	return out
}
