package conformance

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
)

var (
	implFlag  = flag.String("impl", "", "run the cases against this command instead of the in-process proxy: a template with {listen}, {upstream} and optionally {flags}, e.g. 'path/to/binary {flags} {listen} {upstream}'")
	mapFlag   = flag.String("impl-map", "", "file saying how the -impl command takes each configuration key (see README.md); default: this project's flags")
	casesFlag = flag.String("cases", "testdata/*.txt", "glob of the case files to run")
	tableFlag = flag.String("table", "", "also write the result table to this file")
	limitFlag = flag.Duration("case-limit", DefaultCaseLimit, "guard against a hung case: give up on a case after this long")
)

// implementation returns the implementation under test: the -impl command,
// or the in-process proxy.
func implementation(t *testing.T) Implementation {
	if *implFlag == "" {
		return inProcessProxy()
	}
	flags := DefaultFlagMap()
	if *mapFlag != "" {
		data, err := os.ReadFile(*mapFlag)
		if err != nil {
			t.Fatalf("reading -impl-map: %v", err)
		}
		if flags, err = ParseFlagMap(data); err != nil {
			t.Fatalf("-impl-map %s: %v", *mapFlag, err)
		}
	}
	cmd, err := ParseCommand(*implFlag, flags)
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestConformance runs every case as a subtest (so -run selects cases)
// and prints the result table at the end.
func TestConformance(t *testing.T) {
	cases, err := LoadCases(*casesFlag)
	if err != nil {
		t.Fatal(err)
	}
	impl := implementation(t)
	results := runAll(t, impl, cases)
	table := FormatTable(impl.Name(), results)
	fmt.Print(table)
	if *tableFlag != "" {
		if err := os.WriteFile(*tableFlag, []byte(table), 0o644); err != nil {
			t.Errorf("writing -table: %v", err)
		}
	}
}

// runAll runs the cases as parallel subtests of a group and returns the
// results of those that ran, sorted by name.
func runAll(t *testing.T, impl Implementation, cases []*Case) []Result {
	var mu sync.Mutex
	var results []Result
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				r := RunCase(context.Background(), c, impl, *limitFlag)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				switch r.Status {
				case Skip:
					t.Skip(r.Reason)
				case Fail:
					t.Errorf("%s (%s)\n%s", c.Name, ruleText(c), r.Detail)
				}
			})
		}
	})
	SortResults(results)
	return results
}
