package expand

import (
	"context"
	"errors"
	"sync"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// Memory is an in-memory Backend for tests and for the fuzz and property
// targets: tables given as Go values, looked up the way Postfix looks up its
// own (fixed-string keys folded, pattern tables handed the key as is).
// The zero value has no tables; Set adds them. It is safe for concurrent use.
type Memory struct {
	mu      sync.Mutex
	tables  map[string]MemTable
	lookups int
}

// MemTable is one table of a Memory backend.
type MemTable struct {
	// Entries are the table's keys and values. In a fixed-string table
	// the keys are folded when the table is set, as postmap(1) folds them
	// when it builds a hash table.
	Entries map[string]string
	// Pattern makes the table a pattern table (like regexp: or pcre:):
	// Postfix looks up only full addresses in it. Match, when set,
	// answers for it instead of Entries.
	Pattern bool
	Match   func(key string) (string, bool)
	// Err, when set, fails every lookup with this cause.
	Err Cause
}

// errMemory is the error of a MemTable with Err set.
var errMemory = errors.New("memory table set to fail")

// Set adds or replaces a table.
func (m *Memory) Set(table string, t MemTable) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tables == nil {
		m.tables = map[string]MemTable{}
	}
	if !t.Pattern && t.Entries != nil {
		folded := make(map[string]string, len(t.Entries))
		for k, v := range t.Entries {
			folded[foldKey(k)] = v
		}
		t.Entries = folded
	}
	m.tables[table] = t
}

// Lookups returns how many lookups the backend has answered.
func (m *Memory) Lookups() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lookups
}

func (m *Memory) table(table string) (MemTable, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tables[table]
	if !ok {
		return t, &LookupError{Backend: "memory", Table: table, Cause: CauseLookup, Err: errors.New("no such table")}
	}
	return t, nil
}

// Lookup implements Backend.
func (m *Memory) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	t, err := m.table(table)
	if err != nil {
		return "", false, err
	}
	m.mu.Lock()
	m.lookups++
	m.mu.Unlock()
	if t.Err != CauseNone {
		return "", false, &LookupError{Backend: "memory", Table: table, Key: key, Cause: t.Err, Err: errMemory}
	}
	if t.Pattern {
		if t.Match != nil {
			v, ok := t.Match(key)
			return v, ok, nil
		}
		v, ok := t.Entries[key]
		return v, ok, nil
	}
	v, ok := t.Entries[foldKey(key)]
	return v, ok, nil
}

// Fixed implements Backend.
func (m *Memory) Fixed(ctx context.Context, table string) (bool, error) {
	t, err := m.table(table)
	if err != nil {
		return false, err
	}
	return !t.Pattern, nil
}

// Close implements Backend.
func (m *Memory) Close() error { return nil }

// foldKey folds a key as Postfix's casefold() does for a table opened with
// DICT_FLAG_FOLD_FIX (util/casefold.c, with smtputf8_enable): that is
// address.FoldPostfix, which local(8)'s comparison uses too.
func foldKey(s string) string { return address.FoldPostfix(s) }
