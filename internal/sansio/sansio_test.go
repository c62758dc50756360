package sansio

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/smtpprox-loopprevent/smtpprox-loopprevent"

// pure lists the packages that must do no I/O, each with the packages of
// this module it may import (DESIGN's arrows).
var pure = map[string][]string{
	module + "/header":         nil,
	module + "/address":        nil,
	module + "/loopcheck":      {module + "/header", module + "/address"},
	module + "/smtpproxy/core": {module + "/header", module + "/loopcheck"},
}

// allowedStd are the standard packages a pure package, or a third-party
// package it imports, may import. Each does no I/O and reads no clock of
// its own; fmt and io only write to and read from what they are given.
var allowedStd = []string{
	"bytes", "container/list", "encoding/binary", "errors", "fmt", "io",
	"iter", "math", "net/netip", "slices", "sort", "strconv", "strings",
	"sync", "unicode", "unicode/utf8",
}

// allowedThirdParty are the packages from other modules a pure package may
// reach; their own imports are held to the same lists.
var allowedThirdParty = []string{
	"golang.org/x/net/idna",   // IDNA (UTS #46) for address domains
	"golang.org/x/text/cases", // Unicode case folding of addresses
	"golang.org/x/text/unicode/norm",
	"golang.org/x/text/unicode/bidi",
	"golang.org/x/text/secure/bidirule",
	"golang.org/x/text/transform",
	"golang.org/x/text/language",
	"golang.org/x/text/internal",
	"golang.org/x/text/internal/language",
	"golang.org/x/text/internal/language/compact",
	"golang.org/x/text/internal/tag",
}

// opaque are third-party packages allowed whose imports are not walked:
// golang.org/x/sys/cpu reads the CPU's features once, at start-up (the
// core's amd64 scan asks it for AVX2); it imports os to do so on some
// systems, never for a session's input.
var opaque = []string{"golang.org/x/sys/cpu"}

// listed is what `go list -json` says of one package.
type listed struct {
	ImportPath string
	Standard   bool
	Imports    []string
	Error      *struct{ Err string }
}

// goList runs `go list -deps -json` on the pure packages with extra flags
// and returns every package it names, by import path.
func goList(t *testing.T, flags ...string) map[string]listed {
	t.Helper()
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	args := append([]string{"list", "-deps", "-json"}, flags...)
	for p := range pure {
		args = append(args, p)
	}
	out, err := exec.Command(gocmd, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	pkgs := map[string]listed{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("reading go list's output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

// violations walks the imports of the pure packages, and of every
// third-party package they reach, in pkgs (what go list said), and returns
// every import not allowed above, and how many packages it walked.
func violations(pkgs map[string]listed) (bad []string, walked int, err error) {
	seen := map[string]bool{}
	var walk func(path string) error
	walk = func(path string) error {
		if seen[path] {
			return nil
		}
		seen[path] = true
		p, ok := pkgs[path]
		if !ok {
			return fmt.Errorf("go list did not list %s", path)
		}
		walked++
		own, isPure := pure[path]
		for _, imp := range p.Imports {
			switch {
			case pkgs[imp].Standard:
				if !slices.Contains(allowedStd, imp) {
					bad = append(bad, path+" imports "+imp+": not a standard package allowed in a package without I/O")
				}
			case strings.HasPrefix(imp, module+"/"):
				if !isPure || !slices.Contains(own, imp) {
					bad = append(bad, path+" imports "+imp+": not one of the module's packages it may import")
				}
			case slices.Contains(opaque, imp):
			case slices.Contains(allowedThirdParty, imp):
				if err := walk(imp); err != nil {
					return err
				}
			default:
				bad = append(bad, path+" imports "+imp+": not an allowed third-party package")
			}
		}
		return nil
	}
	for _, p := range slices.Sorted(maps.Keys(pure)) {
		if err := walk(p); err != nil {
			return nil, walked, err
		}
	}
	return bad, walked, nil
}

// TestPurePackagesDoNoIO holds the pure packages to the allowlists: net,
// os, time, syscall and the rest of the standard library that does I/O or
// reads the clock are not on them. It looks at the build as it is here,
// and with the purego tag (the core's portable scan instead of the amd64
// assembly).
func TestPurePackagesDoNoIO(t *testing.T) {
	for _, flags := range [][]string{nil, {"-tags", "purego"}} {
		bad, walked, err := violations(goList(t, flags...))
		if err != nil {
			t.Fatalf("flags %v: %v", flags, err)
		}
		for _, b := range bad {
			t.Errorf("flags %v: %s", flags, b)
		}
		// The pure packages and the third-party ones behind address:
		// a walk that stopped early would pass whatever they import.
		if walked < len(pure)+5 {
			t.Fatalf("flags %v: only %d packages walked; the walk is looking in the wrong place", flags, walked)
		}
	}
}

// TestGuardRefusesIO runs the walk on made-up listings in which a pure
// package reaches I/O each way the walk must catch.
func TestGuardRefusesIO(t *testing.T) {
	std := func(path string) listed { return listed{ImportPath: path, Standard: true} }
	base := func() map[string]listed {
		m := map[string]listed{}
		for p, own := range pure {
			m[p] = listed{ImportPath: p, Imports: append([]string{"bytes"}, own...)}
		}
		m["bytes"] = std("bytes")
		m["time"] = std("time")
		m["os"] = std("os")
		return m
	}
	for _, c := range []struct {
		name string
		edit func(m map[string]listed)
		want string
	}{
		{"core imports time", func(m map[string]listed) {
			p := m[module+"/smtpproxy/core"]
			p.Imports = append(p.Imports, "time")
			m[p.ImportPath] = p
		}, "core imports time"},
		{"header imports the proxy", func(m map[string]listed) {
			p := m[module+"/header"]
			p.Imports = append(p.Imports, module+"/smtpproxy")
			m[p.ImportPath] = p
			m[module+"/smtpproxy"] = listed{ImportPath: module + "/smtpproxy"}
		}, "header imports " + module + "/smtpproxy"},
		{"an allowed third-party package imports os", func(m map[string]listed) {
			p := m[module+"/address"]
			p.Imports = append(p.Imports, "golang.org/x/net/idna")
			m[p.ImportPath] = p
			m["golang.org/x/net/idna"] = listed{ImportPath: "golang.org/x/net/idna", Imports: []string{"os"}}
		}, "idna imports os"},
		{"an unknown third-party package", func(m map[string]listed) {
			p := m[module+"/loopcheck"]
			p.Imports = append(p.Imports, "example.com/clock")
			m[p.ImportPath] = p
			m["example.com/clock"] = listed{ImportPath: "example.com/clock"}
		}, "loopcheck imports example.com/clock"},
	} {
		m := base()
		if bad, _, err := violations(m); err != nil || len(bad) != 0 {
			t.Fatalf("the made-up listing is not clean to begin with: %v %q", err, bad)
		}
		c.edit(m)
		bad, _, err := violations(m)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(bad) != 1 || !strings.Contains(bad[0], c.want) {
			t.Errorf("%s: the walk reports %q, want one report of %q", c.name, bad, c.want)
		}
	}
}
