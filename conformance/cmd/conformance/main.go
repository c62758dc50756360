// Command conformance runs the smtpprox-loopprevent conformance suite
// against an implementation given as a command template, in any language,
// without a Go test binary:
//
//	go run github.com/smtpprox-loopprevent/smtpprox-loopprevent/conformance/cmd/conformance@latest \
//		-impl '/path/to/proxy {flags} {listen} {upstream}'
//
// The cases are compiled in (conformance.CaseFiles), so the run uses the
// cases of the module version it was built from; -cases runs a directory
// of case files instead (a vendored copy), and -extract writes the
// compiled-in suite out to one. It prints every failure in full and the
// result table, and exits 0 when no case failed, 1 when one did, 2 on bad
// arguments. conformance/README.md describes the format, the template and
// the configuration mapping (-impl-map).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/conformance"
)

// Exit codes.
const (
	exitPass  = 0 // no case failed (some may have been skipped)
	exitFail  = 1 // a case failed, or the run could not complete
	exitUsage = 2 // bad arguments
)

const usage = `usage: conformance -impl 'PROGRAM {flags} {listen} {upstream}' [flags]
       conformance -extract DIR

Runs the conformance suite of smtpprox-loopprevent against PROGRAM, one
process per case: {listen} becomes the 127.0.0.1:PORT it must listen on,
{upstream} the scripted upstream's 127.0.0.1:PORT, an argument {flags} the
case's configuration. See conformance/README.md.

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	impl := fs.String("impl", "", "the implementation: a command template with {listen}, {upstream} and optionally {flags} (split at white space, no shell quoting)")
	implMap := fs.String("impl-map", "", "a `FILE` saying how the implementation takes each configuration key (README.md, \"Configuration mapping\"); default: smtpprox-loopprevent's flags")
	cases := fs.String("cases", "", "run the case files matching this `GLOB` (a directory of cases with its FORMAT file) instead of the compiled-in suite")
	runRE := fs.String("run", "", "run only the cases whose name matches this `REGEXP`")
	table := fs.String("table", "", "also write the result table to `FILE`")
	limit := fs.Duration("case-limit", conformance.DefaultCaseLimit, "give up on a case after this long (a guard against a hang, not a timing assertion)")
	parallel := fs.Int("parallel", runtime.GOMAXPROCS(0), "cases run at once")
	extract := fs.String("extract", "", "write the compiled-in suite (README.md, testdata/FORMAT, testdata/*.txt) under `DIR` and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, usage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return exitPass
		}
		fmt.Fprintf(stderr, "conformance: %v\nRun with -h for usage.\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "conformance: unexpected arguments %q (quote the -impl template)\n", fs.Args())
		return exitUsage
	}
	if *extract != "" {
		if err := extractSuite(*extract); err != nil {
			fmt.Fprintf(stderr, "conformance: %v\n", err)
			return exitFail
		}
		fmt.Fprintf(stdout, "wrote the suite (format %d) under %s\n", conformance.FormatVersion, *extract)
		return exitPass
	}
	if *impl == "" {
		fmt.Fprintf(stderr, "conformance: -impl is required: the command that runs the implementation\nRun with -h for usage.\n")
		return exitUsage
	}
	if *parallel < 1 {
		fmt.Fprintf(stderr, "conformance: -parallel must be at least 1, got %d\n", *parallel)
		return exitUsage
	}
	var match *regexp.Regexp
	if *runRE != "" {
		var err error
		if match, err = regexp.Compile(*runRE); err != nil {
			fmt.Fprintf(stderr, "conformance: -run: %v\n", err)
			return exitUsage
		}
	}
	flags := conformance.DefaultFlagMap()
	if *implMap != "" {
		data, err := os.ReadFile(*implMap)
		if err != nil {
			fmt.Fprintf(stderr, "conformance: -impl-map: %v\n", err)
			return exitUsage
		}
		if flags, err = conformance.ParseFlagMap(data); err != nil {
			fmt.Fprintf(stderr, "conformance: -impl-map %s: %v\n", *implMap, err)
			return exitUsage
		}
	}
	cmd, err := conformance.ParseCommand(*impl, flags)
	if err != nil {
		fmt.Fprintf(stderr, "conformance: -impl: %v\n", err)
		return exitUsage
	}

	var all []*conformance.Case
	if *cases != "" {
		all, err = conformance.LoadCases(*cases)
	} else {
		all, err = conformance.Suite()
	}
	if err != nil {
		fmt.Fprintf(stderr, "conformance: %v\n", err)
		return exitFail
	}
	var selected []*conformance.Case
	for _, c := range all {
		if match == nil || match.MatchString(c.Name) {
			selected = append(selected, c)
		}
	}
	if len(selected) == 0 {
		fmt.Fprintf(stderr, "conformance: no case matches -run %q\n", *runRE)
		return exitUsage
	}

	results := runCases(ctx, cmd, selected, *limit, *parallel)
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "conformance: interrupted\n")
		return exitFail
	}
	conformance.SortResults(results)
	failed := 0
	for _, r := range results {
		if r.Status == conformance.Fail {
			failed++
			fmt.Fprintf(stdout, "--- FAIL: %s (%s)\n%s\n", r.Case.Name, strings.Join(r.Case.Rules, "; "), r.Detail)
		}
	}
	text := conformance.FormatTable(cmd.Name(), results)
	fmt.Fprint(stdout, text)
	if *table != "" {
		if err := os.WriteFile(*table, []byte(text), 0o644); err != nil {
			fmt.Fprintf(stderr, "conformance: -table: %v\n", err)
			return exitFail
		}
	}
	if failed > 0 {
		return exitFail
	}
	return exitPass
}

// runCases runs the cases, at most parallel at once, and returns their
// results in no particular order.
func runCases(ctx context.Context, impl conformance.Implementation, cases []*conformance.Case, limit time.Duration, parallel int) []conformance.Result {
	results := make([]conformance.Result, len(cases))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = conformance.RunCase(ctx, c, impl, limit)
		}()
	}
	wg.Wait()
	return results
}

// extractSuite writes the compiled-in suite's files under dir, keeping
// their paths (README.md, testdata/FORMAT, testdata/NAME.txt).
func extractSuite(dir string) error {
	suite := conformance.CaseFiles()
	return fs.WalkDir(suite, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := suite.ReadFile(name)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
}
