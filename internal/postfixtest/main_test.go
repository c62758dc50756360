package postfixtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// forcedSkipEnv makes TestForcedSkip skip through the harness, as a test
// without Postfix does; only TestMainReportsSkips sets it, in a child.
const forcedSkipEnv = "POSTFIXTEST_FORCED_SKIP"

// TestForcedSkip is the child of TestMainReportsSkips.
func TestForcedSkip(t *testing.T) {
	why := os.Getenv(forcedSkipEnv)
	if why == "" {
		t.Skip("runs only as the child of TestMainReportsSkips")
	}
	skipUnavailable(t, why)
}

// TestMainReportsSkips runs this package's tests under the go command, as
// `go test ./...` does, with one test skipped for want of Postfix, and
// checks that Main's line reaches the go command's output exactly once:
// without -v (where the go command discards a passing package's output)
// and with it.
func TestMainReportsSkips(t *testing.T) {
	if os.Getenv(forcedSkipEnv) != "" {
		t.Skip("in the child")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	const why = "forced by TestMainReportsSkips"
	note := regexp.MustCompile(`(?m)^\./internal/postfixtest: skipped 1 real-Postfix test: ` + why + ` \(set SMTPPROX_REQUIRE_POSTFIX=1 to make this a failure\)$`)
	for _, verbose := range []bool{false, true} {
		args := []string{"test", "-count=1", "-run", "^TestForcedSkip$"}
		if verbose {
			args = append(args, "-v")
		}
		cmd := exec.Command(goCmd, append(args, ".")...)
		cmd.Env = append(withoutEnv(os.Environ(), RequireEnv), forcedSkipEnv+"="+why)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if n := len(note.FindAllIndex(out, -1)); n != 1 {
			t.Errorf("go %s: the skip line appears %d times, want once; output:\n%s", strings.Join(args, " "), n, out)
		}
		if !regexp.MustCompile(`(?m)^ok\s+\S+/internal/postfixtest\s`).Match(out) {
			t.Errorf("go %s: no ok line; output:\n%s", strings.Join(args, " "), out)
		}
	}
}

func withoutEnv(env []string, name string) []string {
	var kept []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			kept = append(kept, kv)
		}
	}
	return kept
}

func TestSkipNote(t *testing.T) {
	if got, want := skipNote("./conformance", 3, "Postfix is not installed"),
		"./conformance: skipped 3 real-Postfix tests: Postfix is not installed (set SMTPPROX_REQUIRE_POSTFIX=1 to make this a failure)\n"; got != want {
		t.Errorf("skipNote = %q, want %q", got, want)
	}
	if got := skipNote("./x", 1, "why"); !strings.Contains(got, "skipped 1 real-Postfix test:") {
		t.Errorf("skipNote for one test = %q", got)
	}
	if got := packageDir(); got != "./internal/postfixtest" {
		t.Errorf("packageDir = %q, want ./internal/postfixtest", got)
	}
}

// harnessImport is this package's import path.
const harnessImport = "github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"

// TestPackagesUsingHarnessHaveTestMain checks that every package of the
// module whose tests import the harness has a TestMain that calls Main,
// so that none skips its real-Postfix tests silently.
func TestPackagesUsingHarnessHaveTestMain(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
	users := map[string]bool{} // directory -> has a TestMain calling Main
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		self := dir == filepath.Join(root, "internal", "postfixtest")
		imports := self
		local := "postfixtest"
		for _, im := range f.Imports {
			if p, _ := strconv.Unquote(im.Path.Value); p == harnessImport {
				imports = true
				if im.Name != nil {
					local = im.Name.Name
				}
			}
		}
		if !imports {
			return nil
		}
		if _, seen := users[dir]; !seen {
			users[dir] = false
		}
		if callsMain(f, local, self) {
			users[dir] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(users) < 2 {
		t.Fatalf("found %d packages using the harness, want at least this one and ./conformance: %v", len(users), users)
	}
	for dir, ok := range users {
		if !ok {
			rel, _ := filepath.Rel(root, dir)
			t.Errorf("./%s uses postfixtest but has no TestMain calling postfixtest.Main: add\n\tfunc TestMain(m *testing.M) { os.Exit(postfixtest.Main(m)) }", filepath.ToSlash(rel))
		}
	}
}

// callsMain reports whether f declares a TestMain that calls the harness's
// Main (as local.Main, or Main inside the harness itself).
func callsMain(f *ast.File, local string, self bool) bool {
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "TestMain" || fn.Recv != nil || fn.Body == nil {
			continue
		}
		found := false
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fun := call.Fun.(type) {
			case *ast.SelectorExpr:
				if x, ok := fun.X.(*ast.Ident); ok && x.Name == local && fun.Sel.Name == "Main" {
					found = true
				}
			case *ast.Ident:
				if self && fun.Name == "Main" {
					found = true
				}
			}
			return !found
		})
		if found {
			return true
		}
	}
	return false
}
