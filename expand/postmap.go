package expand

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Postmap is a Backend that runs `postmap -q KEY TABLE` (`postalias -q`
// for alias tables) for each lookup: the fallback when proxymap(8) is not
// reachable or not approved for the tables. It needs no change to
// Postfix's configuration, only read access to the tables (SQL and LDAP
// .cf files are often readable by root and postfix alone), and costs a
// process per lookup. postmap(1) opens the table as Postfix does (its
// FOLD_FIX folding, its locks), so every table type Postfix has works;
// whether a table is a fixed-string one is known from its type.
type Postmap struct {
	configDir string
	alias     map[string]bool
	sem       chan struct{}
}

// DefaultPostmapProcs bounds the postmap(1) processes one Postmap runs at
// once, so a burst of recipients cannot fork without bound.
const DefaultPostmapProcs = 4

// commandDirectory is where Debian and Postfix's own install put
// postmap and postalias.
const commandDirectory = "/usr/sbin"

// NewPostmap returns a Postmap for the instance whose config_directory is
// configDir; aliasTables are asked with postalias(1).
func NewPostmap(configDir string, aliasTables []string, maxProcs int) *Postmap {
	if maxProcs < 1 {
		maxProcs = DefaultPostmapProcs
	}
	m := &Postmap{configDir: configDir, alias: map[string]bool{}, sem: make(chan struct{}, maxProcs)}
	for _, t := range aliasTables {
		m.alias[t] = true
	}
	return m
}

// command returns the path of a Postfix command.
func command(name string) string {
	p := filepath.Join(commandDirectory, name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return name
}

// Lookup implements Backend. postmap -q exits 0 with the value, and 1
// both when the key is not found and on a fatal error; the latter says
// "fatal:" on standard error.
func (m *Postmap) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	name := "postmap"
	if m.alias[table] {
		name = "postalias"
	}
	fail := func(cause Cause, err error) (string, bool, error) {
		return "", false, &LookupError{Backend: name, Table: table, Key: key, Cause: cause, Err: err}
	}
	if err := validAttrString(key); err != nil {
		return fail(CauseLookup, err)
	}
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return fail(causeOf(ctx.Err()), ctx.Err())
	}
	defer func() { <-m.sem }()
	cmd := exec.CommandContext(ctx, command(name), "-c", m.configDir, "-q", key, table)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return fail(causeOf(ctx.Err()), ctx.Err())
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return strings.TrimSuffix(stdout.String(), "\n"), true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && !strings.Contains(stderr.String(), "fatal:"):
		return "", false, nil
	case errors.As(err, &exit):
		return fail(CauseLookup, fmt.Errorf("%s -q: %v: %s", name, err, strings.TrimSpace(stderr.String())))
	}
	return fail(CauseUnreachable, fmt.Errorf("run %s: %w", name, err))
}

// Fixed implements Backend from the table's type.
func (m *Postmap) Fixed(_ context.Context, table string) (bool, error) {
	fixed, ok := typeFixed(table)
	if !ok {
		return false, &LookupError{Backend: "postmap", Table: table, Cause: CauseLookup,
			Err: errors.New("unknown table type: whether it is a fixed-string table needs proxymap(8), which tells")}
	}
	return fixed, nil
}

// Close implements Backend.
func (m *Postmap) Close() error { return nil }
