package conformance

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/textform"
	"golang.org/x/tools/txtar"
)

// Case is one conformance case: one session through the implementation.
type Case struct {
	Name        string   // the file name without ".txt"
	Path        string   // the file it was read from
	Rules       []string // what it checks: "SPEC 2.2", "RFC 5321 4.5.2", ...
	Description string   // the comment without its rule: lines

	Config   []Option // configuration, in file order
	Upstream upstreamScript
	Client   []step

	// WantClient maps a client connection name ("" for the first one) to
	// the bytes it must receive over the whole session.
	WantClient map[string]textform.Pattern
	// WantUpstream[i] is what upstream connection i+1 (in the order the
	// scripted upstream accepted them) must receive. Connections past the
	// end of the slice must receive nothing.
	WantUpstream []textform.Pattern
	// WantUpstreamConns, when not negative, is how many connections the
	// scripted upstream must have accepted over the whole case (file
	// want-upstream-connections); -1 when the case does not say.
	WantUpstreamConns int
}

// Option is one key=value line of a case's config file.
type Option struct {
	Key, Value string
}

// Configuration keys: only the options SPEC defines. The values are
// checked when a case is read, so an implementation adapter can trust them.
const (
	OptDryRun           = "dry-run"            // true | false
	OptBareLF           = "bare-lf"            // normalize | reject
	OptMaxHeaderBytes   = "max-header-bytes"   // integer > 0
	OptMaxSessions      = "max-sessions"       // integer > 0
	OptConnectTimeout   = "connect-timeout"    // Go duration
	OptReplyTimeout     = "reply-timeout"      // Go duration
	OptCommandTimeout   = "command-timeout"    // Go duration
	OptDataTimeout      = "data-timeout"       // Go duration
	OptDropEHLOKeywords = "drop-ehlo-keywords" // comma-separated keywords
	OptAllowClient      = "allow-client"       // comma-separated IP prefixes (CIDR)
	OptExemptClient     = "exempt-client"      // comma-separated IP prefixes (CIDR)
)

// OptionKeys lists every configuration key a case may use.
func OptionKeys() []string {
	return []string{
		OptDryRun, OptBareLF, OptMaxHeaderBytes, OptMaxSessions,
		OptConnectTimeout, OptReplyTimeout, OptCommandTimeout, OptDataTimeout,
		OptDropEHLOKeywords, OptAllowClient, OptExemptClient,
	}
}

func checkOption(o Option) error {
	switch o.Key {
	case OptDryRun:
		if o.Value != "true" && o.Value != "false" {
			return fmt.Errorf("%s must be true or false, not %q", o.Key, o.Value)
		}
	case OptBareLF:
		if o.Value != "normalize" && o.Value != "reject" {
			return fmt.Errorf("%s must be normalize or reject, not %q", o.Key, o.Value)
		}
	case OptMaxHeaderBytes, OptMaxSessions:
		if n, err := strconv.Atoi(o.Value); err != nil || n <= 0 {
			return fmt.Errorf("%s must be a positive integer, not %q", o.Key, o.Value)
		}
	case OptConnectTimeout, OptReplyTimeout, OptCommandTimeout, OptDataTimeout:
		if d, err := time.ParseDuration(o.Value); err != nil || d <= 0 {
			return fmt.Errorf("%s must be a positive Go duration such as 500ms, not %q", o.Key, o.Value)
		}
	case OptDropEHLOKeywords:
		for _, k := range strings.Split(o.Value, ",") {
			if !isKeyword(k) {
				return fmt.Errorf("%s must be a comma-separated list of EHLO keywords, not %q", o.Key, o.Value)
			}
		}
	case OptAllowClient, OptExemptClient:
		for _, p := range strings.Split(o.Value, ",") {
			if _, err := netip.ParsePrefix(strings.TrimSpace(p)); err != nil {
				return fmt.Errorf("%s must be a comma-separated list of IP prefixes such as 127.0.0.1/32, not %q", o.Key, o.Value)
			}
		}
	default:
		return fmt.Errorf("unknown configuration key %q (known: %s)", o.Key, strings.Join(OptionKeys(), ", "))
	}
	return nil
}

func isKeyword(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Get returns the value of a configuration key and whether the case sets it.
func (c *Case) Get(key string) (string, bool) {
	for _, o := range c.Config {
		if o.Key == key {
			return o.Value, true
		}
	}
	return "", false
}

// File names inside a case.
const (
	fileConfig       = "config"
	fileUpstream     = "upstream"
	fileClient       = "client"
	fileWantClient   = "want-client"
	fileWantUpstream = "want-upstream"
	// fileWantUpstreamConns holds the number of upstream connections.
	fileWantUpstreamConns = "want-upstream-connections"
)

// LoadCases reads every case file matching the glob pattern, sorted by
// name. Every directory the cases come from must say in its FORMAT file
// that it is written in the format this runner reads (FormatVersion).
func LoadCases(glob string) ([]*Case, error) {
	paths, err := filepath.Glob(glob)
	if err != nil {
		return nil, fmt.Errorf("bad case pattern %q: %w", glob, err)
	}
	return loadCases(paths, glob, os.ReadFile, filepath.Dir, filepath.Join)
}

// LoadFS is LoadCases over a file system, such as CaseFiles(): the pattern
// is an fs.Glob pattern ("testdata/*.txt").
func LoadFS(fsys fs.FS, pattern string) ([]*Case, error) {
	paths, err := fs.Glob(fsys, pattern)
	if err != nil {
		return nil, fmt.Errorf("bad case pattern %q: %w", pattern, err)
	}
	read := func(name string) ([]byte, error) { return fs.ReadFile(fsys, name) }
	return loadCases(paths, pattern, read, path.Dir, path.Join)
}

func loadCases(paths []string, pattern string, read func(string) ([]byte, error), dir func(string) string, join func(...string) string) ([]*Case, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("no case files match %q", pattern)
	}
	slices.Sort(paths)
	checked := map[string]bool{}
	cases := make([]*Case, 0, len(paths))
	for _, p := range paths {
		if d := dir(p); !checked[d] {
			format := join(d, FormatFile)
			data, err := read(format)
			if err != nil {
				return nil, fmt.Errorf("reading the cases' format version: %w (a directory of cases holds a file %s saying %q)", err, FormatFile, formatLine(FormatVersion))
			}
			if err := CheckFormat(data); err != nil {
				return nil, fmt.Errorf("%s: %w", format, err)
			}
			checked[d] = true
		}
		data, err := read(p)
		if err != nil {
			return nil, fmt.Errorf("reading case: %w", err)
		}
		c, err := ParseCase(p, data)
		if err != nil {
			return nil, err
		}
		cases = append(cases, c)
	}
	return cases, nil
}

// ParseCase reads one case file (a txtar archive).
func ParseCase(path string, data []byte) (*Case, error) {
	c, err := parseCase(path, data)
	if err != nil {
		return nil, fmt.Errorf("case %s: %w", path, err)
	}
	return c, nil
}

func parseCase(path string, data []byte) (*Case, error) {
	var err error
	ar := txtar.Parse(data)
	c := &Case{
		Name:              strings.TrimSuffix(filepath.Base(path), ".txt"),
		Path:              path,
		WantClient:        map[string]textform.Pattern{},
		WantUpstreamConns: -1,
	}
	var desc []string
	for _, line := range strings.Split(string(ar.Comment), "\n") {
		if rest, ok := strings.CutPrefix(line, "rule:"); ok {
			for _, r := range strings.Split(rest, ";") {
				if r = strings.TrimSpace(r); r != "" {
					c.Rules = append(c.Rules, r)
				}
			}
			continue
		}
		desc = append(desc, line)
	}
	c.Description = strings.TrimSpace(strings.Join(desc, "\n"))
	if len(c.Rules) == 0 {
		return nil, fmt.Errorf("the comment has no \"rule:\" line naming the SPEC rule or RFC section checked")
	}
	if c.Description == "" {
		return nil, fmt.Errorf("the comment does not describe the case")
	}

	files := map[string]string{}
	for _, f := range ar.Files {
		if _, dup := files[f.Name]; dup {
			return nil, fmt.Errorf("file %q appears twice", f.Name)
		}
		files[f.Name] = string(f.Data)
	}
	used := map[string]bool{}

	if text, ok := files[fileConfig]; ok {
		used[fileConfig] = true
		if c.Config, err = parseConfig(text); err != nil {
			return nil, fmt.Errorf("%s: %w", fileConfig, err)
		}
	}
	if text, ok := files[fileUpstream]; ok {
		used[fileUpstream] = true
		if c.Upstream, err = parseUpstream(text); err != nil {
			return nil, fmt.Errorf("%s: %w", fileUpstream, err)
		}
	}
	text, ok := files[fileClient]
	if !ok {
		return nil, fmt.Errorf("no %q file", fileClient)
	}
	used[fileClient] = true
	conns := map[string]bool{"": true}
	if c.Client, err = parseClient(text, files, used, conns); err != nil {
		return nil, fmt.Errorf("%s: %w", fileClient, err)
	}

	for name := range conns {
		fname := fileWantClient
		if name != "" {
			fname += "." + name
		}
		text, ok := files[fname]
		if !ok {
			return nil, fmt.Errorf("no %q file for client connection %q", fname, connLabel(name))
		}
		used[fname] = true
		p, err := textform.DecodePattern(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fname, err)
		}
		c.WantClient[name] = p
	}
	for i := 1; ; i++ {
		fname := fileWantUpstream
		if i > 1 {
			fname += "." + strconv.Itoa(i)
		}
		text, ok := files[fname]
		if !ok {
			break
		}
		used[fname] = true
		p, err := textform.DecodePattern(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fname, err)
		}
		c.WantUpstream = append(c.WantUpstream, p)
	}
	if text, ok := files[fileWantUpstreamConns]; ok {
		used[fileWantUpstreamConns] = true
		n, err := strconv.Atoi(strings.TrimSpace(text))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s: want a count from 0, not %q", fileWantUpstreamConns, strings.TrimSpace(text))
		}
		if n < len(c.WantUpstream) {
			return nil, fmt.Errorf("%s says %d, but the case expects bytes on %d upstream connections", fileWantUpstreamConns, n, len(c.WantUpstream))
		}
		c.WantUpstreamConns = n
	}
	if c.Upstream.down && (len(c.WantUpstream) > 0 || c.WantUpstreamConns >= 0) {
		return nil, fmt.Errorf("the upstream is down, so no %q or %q file may be given", fileWantUpstream, fileWantUpstreamConns)
	}
	for _, f := range ar.Files {
		if !used[f.Name] {
			return nil, fmt.Errorf("file %q is neither a known file nor used by a send-file step", f.Name)
		}
	}
	return c, nil
}

func connLabel(name string) string {
	if name == "" {
		return "(first)"
	}
	return name
}

func parseConfig(text string) ([]Option, error) {
	var opts []Option
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want key=value, got %q", i+1, line)
		}
		o := Option{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)}
		if err := checkOption(o); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if seen[o.Key] {
			return nil, fmt.Errorf("line %d: %s set twice", i+1, o.Key)
		}
		seen[o.Key] = true
		opts = append(opts, o)
	}
	return opts, nil
}
