package expand

import (
	"context"
	"errors"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
)

// Bounds of one expansion beyond Postfix's own limits. Postfix applies its
// limits per message and per delivery; an expansion at SMTP time follows
// one recipient through every stage at once, so it bounds the sum too.
// Reaching one makes the result incomplete (CauseLimit): the recipient is
// then judged as spelled.
const (
	// MaxLookups bounds the table lookups of one expansion. A recipient
	// needs about ten; Postfix's own limits allow a pathological table
	// to need millions (1000 addresses each looked up under several
	// keys in several tables), which must not stall a session.
	MaxLookups = 10000
	// maxLookupCalls bounds the lookups of one expansion answered from
	// its memo as well: the time of an expansion whose tables send it
	// through the same keys again and again.
	maxLookupCalls = 10 * MaxLookups
	// MaxTargets bounds the addresses of one expansion:
	// virtual_alias_expansion_limit for each stage, and room for the
	// aliases(5) levels beyond it.
	MaxTargets = 10000
	// localNestingLimit is local(8)'s recursion limit (local/recipient.c,
	// local/alias.c, local/include.c: "state.level > 100"): deeper, it
	// bounces the recipient with "recipient nesting limit exceeded" or
	// "alias database loop", before any Delivered-To: check.
	localNestingLimit = 100
	// map11Recursion is cleanup's bound on canonical map chains
	// (cleanup/cleanup_map11.c MAX_RECURSION): past it, cleanup keeps
	// the address it has.
	map11Recursion = 10
)

// run is the state of one expansion: the configuration, the backend, what
// it has found, and per-run memos so that no table is asked the same
// question twice.
type run struct {
	ctx  context.Context
	cfg  *Config
	be   Backend
	read func(ctx context.Context, path string) ([]byte, error)

	lookups int // lookups sent to the backend
	calls   int // lookups asked for, the memo's answers included
	memo    map[[2]string]memoValue
	fixed   map[string]bool

	targets []Target
	index   map[string]int // exact key (see addTarget) -> targets index

	submitted map[string]int // queue recipient -> lowest hop count seen
	local     map[string]int // local(8) recipient -> lowest level seen
}

type memoValue struct {
	value string
	found bool
}

func newRun(ctx context.Context, cfg *Config, be Backend, read func(context.Context, string) ([]byte, error)) *run {
	return &run{
		ctx: ctx, cfg: cfg, be: be, read: read,
		memo:      map[[2]string]memoValue{},
		fixed:     map[string]bool{},
		index:     map[string]int{},
		submitted: map[string]int{},
		local:     map[string]int{},
	}
}

// lookup asks the backend once per (table, key) in a run.
func (r *run) lookup(table, key string) (string, bool, error) {
	if r.calls >= maxLookupCalls {
		return "", false, &LimitError{Limit: "lookups per expansion", Value: maxLookupCalls, Addr: key}
	}
	r.calls++
	mk := [2]string{table, key}
	if v, ok := r.memo[mk]; ok {
		return v.value, v.found, nil
	}
	if r.lookups >= MaxLookups {
		return "", false, &LimitError{Limit: "MaxLookups", Value: MaxLookups, Addr: key}
	}
	r.lookups++
	v, found, err := r.be.Lookup(r.ctx, table, key)
	if err != nil {
		return "", false, err
	}
	r.memo[mk] = memoValue{v, found}
	return v, found, nil
}

// isFixed asks the backend once per table whether it is a fixed-string
// table.
func (r *run) isFixed(table string) (bool, error) {
	if f, ok := r.fixed[table]; ok {
		return f, nil
	}
	f, err := r.be.Fixed(r.ctx, table)
	if err != nil {
		return false, err
	}
	r.fixed[table] = f
	return f, nil
}

// errEmptyValue is a table value "": maps_find reports it as a
// configuration error ("should return NO RESULT in case of NOT FOUND").
var errEmptyValue = errors.New("table returned an empty string result")

// mapsFind is global/maps.c maps_find: the first table of the list that has
// key answers; a lookup error ends the search. With partial, only
// fixed-string tables are asked (the PARTIAL flag of mail_addr_find.c).
func (r *run) mapsFind(tables []string, key string, partial bool) (string, bool, error) {
	if key == "" {
		return "", false, nil
	}
	for _, t := range tables {
		if partial {
			f, err := r.isFixed(t)
			if err != nil {
				return "", false, err
			}
			if !f {
				continue
			}
		}
		v, found, err := r.lookup(t, key)
		if err != nil {
			return "", false, err
		}
		if found {
			if v == "" {
				return "", false, &LookupError{Backend: "expand", Table: t, Key: key, Cause: CauseLookup, Err: errEmptyValue}
			}
			return v, true, nil
		}
	}
	return "", false, nil
}

// addTarget records an address Postfix delivers to: checks says whether
// the delivery compares it with Delivered-To:. Targets are told apart as
// local(8) tells them apart (its external form, case-folded), not by the
// looser Addr.Key: two spellings Key merges (composed and decomposed
// Unicode, an A-label and its U-label) are compared each on its own in
// -loops=postfix.
func (r *run) addTarget(addr, transport string, checks bool) error {
	a := internalAddr(addr)
	k := address.FoldPostfix(a.String())
	if i, ok := r.index[k]; ok {
		r.targets[i].ChecksLoops = r.targets[i].ChecksLoops || checks
		return nil
	}
	if len(r.targets) >= MaxTargets {
		return &LimitError{Limit: "MaxTargets", Value: MaxTargets, Addr: addr}
	}
	r.index[k] = len(r.targets)
	r.targets = append(r.targets, Target{Addr: a, Transport: transport, ChecksLoops: checks})
	return nil
}

// internalAddr turns an address in Postfix's internal form (local part
// unquoted, split at the last '@') into an address.Addr.
func internalAddr(s string) address.Addr {
	local, domain := splitAt(s)
	return address.FromText(local, domain)
}

// splitAt splits an internal-form address at its last '@'; domain is ""
// without one.
func splitAt(s string) (local, domain string) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '@' {
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

// hasAt reports whether an internal-form address has a domain part.
func hasAt(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '@' {
			return true
		}
	}
	return false
}

// quote822 is global/quote_822_local.c quote_822_local(): an
// internal-form address in external form, its local part quoted when it is
// not a dot-string. bare: the whole string is a local part
// (QUOTE_FLAG_BARE_LOCALPART).
func quote822(s string, bare bool) string {
	if bare || !hasAt(s) {
		return address.FromText(s, "").String()
	}
	local, domain := splitAt(s)
	return address.FromText(local, "").String() + "@" + domain
}
