package conformance

import (
	"embed"
	"fmt"
	"strconv"
	"strings"
)

// FormatVersion is the version of the case format (README.md) this runner
// reads. It changes when a change to the format would make a runner of the
// previous version misread or reject a case: a new file, step, script
// line, wildcard or configuration key. Adding or correcting cases does not
// change it.
const FormatVersion = 1

// FormatFile names the file, in every directory of cases, that holds the
// line "conformance-format: N": the version of the format the cases there
// are written in. The loader refuses cases of any other version.
const FormatFile = "FORMAT"

// formatKey opens the format line.
const formatKey = "conformance-format:"

func formatLine(v int) string { return formatKey + " " + strconv.Itoa(v) }

// CheckFormat reads a FORMAT file: one line "conformance-format: N" (blank
// lines and # comment lines aside) whose N must be FormatVersion.
func CheckFormat(data []byte) error {
	version := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rest, ok := strings.CutPrefix(line, formatKey)
		if !ok || version != "" {
			return fmt.Errorf("want exactly one line %q, found %q", formatLine(FormatVersion), line)
		}
		version = strings.TrimSpace(rest)
	}
	switch v, err := strconv.Atoi(version); {
	case version == "":
		return fmt.Errorf("no %q line", formatLine(FormatVersion))
	case err != nil || v < 1:
		return fmt.Errorf("format version %q is not a positive integer", version)
	case v > FormatVersion:
		return fmt.Errorf("the cases are in format %d, this runner reads format %d: use a newer runner", v, FormatVersion)
	case v < FormatVersion:
		return fmt.Errorf("the cases are in format %d, this runner reads format %d: use the cases of the runner's version", v, FormatVersion)
	}
	return nil
}

// suite holds the cases, their FORMAT file and README.md, compiled in.
//
//go:embed README.md testdata/FORMAT testdata/*.txt
var suite embed.FS

// CaseFiles returns the suite as files: every case as testdata/NAME.txt,
// testdata/FORMAT, and README.md (the format's description). A program
// that embeds the suite this way runs the very cases of the module version
// it builds with.
func CaseFiles() embed.FS { return suite }

// SuitePattern matches every case in CaseFiles.
const SuitePattern = "testdata/*.txt"

// Suite loads every case of CaseFiles, sorted by name.
func Suite() ([]*Case, error) { return LoadFS(suite, SuitePattern) }
