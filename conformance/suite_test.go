package conformance

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSuiteEmbedsEveryCase checks that the compiled-in suite is the one on
// disk: the same cases, the same bytes.
func TestSuiteEmbedsEveryCase(t *testing.T) {
	embedded, err := Suite()
	if err != nil {
		t.Fatal(err)
	}
	onDisk := loadAll(t)
	names := func(cs []*Case) []string {
		var n []string
		for _, c := range cs {
			n = append(n, c.Name)
		}
		return n
	}
	if diff := cmp.Diff(names(onDisk), names(embedded)); diff != "" {
		t.Fatalf("embedded cases differ from testdata/*.txt (-disk +embedded):\n%s", diff)
	}
	for _, c := range onDisk {
		want, err := os.ReadFile(c.Path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := CaseFiles().ReadFile("testdata/" + c.Name + ".txt")
		if err != nil || string(got) != string(want) {
			t.Errorf("%s: embedded copy differs (%v)", c.Name, err)
		}
	}
}

// TestFormatVersionStated checks that the version the loader reads is the
// one README.md and testdata/FORMAT state.
func TestFormatVersionStated(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := formatLine(FormatVersion)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(readme) {
		t.Errorf("README.md has no line %q", want)
	}
	format, err := os.ReadFile(filepath.Join("testdata", FormatFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckFormat(format); err != nil {
		t.Errorf("testdata/%s: %v", FormatFile, err)
	}
}

func TestCheckFormat(t *testing.T) {
	for _, tc := range []struct {
		data, err string // err: a substring of the error, "" for none
	}{
		{"conformance-format: 1\n", ""},
		{"# comment\n\nconformance-format: 1", ""},
		{"conformance-format:1\n", ""},
		{"conformance-format: 2\n", "format 2, this runner reads format 1: use a newer runner"},
		{"conformance-format: 0\n", "not a positive integer"},
		{"conformance-format: x\n", "not a positive integer"},
		{"", "no \"conformance-format: 1\" line"},
		{"version 1\n", "want exactly one line"},
		{"conformance-format: 1\nconformance-format: 1\n", "want exactly one line"},
	} {
		err := CheckFormat([]byte(tc.data))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("CheckFormat(%q) = %v, want nil", tc.data, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("CheckFormat(%q) = %v, want an error holding %q", tc.data, err, tc.err)
		}
	}
}

// TestLoadChecksFormat shows that the loader reads a directory's FORMAT
// file: cases of another format, or of no stated format, are refused.
func TestLoadChecksFormat(t *testing.T) {
	relay, err := os.ReadFile("testdata/relay-basic.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		format string // "" for no FORMAT file
		err    string
	}{
		{"conformance-format: 1\n", ""},
		{"conformance-format: 2\n", "use a newer runner"},
		{"", "format version"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "relay-basic.txt"), relay, 0o644); err != nil {
			t.Fatal(err)
		}
		if tc.format != "" {
			if err := os.WriteFile(filepath.Join(dir, FormatFile), []byte(tc.format), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cases, err := LoadCases(filepath.Join(dir, "*.txt"))
		switch {
		case tc.err == "" && (err != nil || len(cases) != 1):
			t.Errorf("FORMAT %q: %d cases, %v; want the case", tc.format, len(cases), err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("FORMAT %q: error %v, want one holding %q", tc.format, err, tc.err)
		}
	}
}
