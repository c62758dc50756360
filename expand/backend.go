package expand

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// A Backend answers Postfix table lookups: the one seam between the
// expansion logic and the world. Tables are named as Postfix names them,
// "type:name" (hash:/etc/postfix/virtual, regexp:/etc/postfix/v.re), without
// a "proxy:" prefix.
//
// A Backend folds the case of a key for a fixed-string table, as Postfix
// opens its maps with DICT_FLAG_FOLD_FIX (cleanup/cleanup_init.c,
// local/local.c), and passes a pattern table the key as given. It must be
// safe for concurrent use.
type Backend interface {
	// Lookup returns the value of key in table, or found=false when the
	// table has no such key. An error is a *LookupError.
	Lookup(ctx context.Context, table, key string) (value string, found bool, err error)
	// Fixed reports whether table is a fixed-string table
	// (DICT_FLAG_FIXED): Postfix looks up partial addresses (user@domain
	// without the extension, the local part, @domain) only in such
	// tables, never in regexp or pcre tables (mail_addr_find.c, PARTIAL).
	Fixed(ctx context.Context, table string) (bool, error)
	// Close releases what the backend holds (connections).
	Close() error
}

// Cause says why an expansion is incomplete. Its String is a fixed label
// value for metrics and logs.
type Cause int

// The causes. An expansion with any of them is judged by the literal
// recipient alone (fail-open): none tempfails mail.
const (
	CauseNone        Cause = iota // complete
	CauseTimeout                  // a lookup or the wait for the expansion ran out of time
	CauseDenied                   // proxymap refused a table (DENY: not approved in proxy_read_maps)
	CauseUnreachable              // the proxymap socket or the postmap command could not be reached
	CauseLookup                   // a table lookup failed (RETRY, CONFIG, a postmap error, an unreadable :include: file)
	CauseProtocol                 // proxymap answered something this client does not understand (BAD, a malformed reply)
	CauseLimit                    // a Postfix limit was reached (Postfix itself would defer or bounce the mail for it)
	CauseClosed                   // the expander was closed or reloaded while the expansion ran
	CauseBusy                     // MaxInflight expansions were running already
)

// Causes lists every cause but CauseNone, for metrics that pre-create their
// label values.
var Causes = []Cause{CauseTimeout, CauseDenied, CauseUnreachable, CauseLookup, CauseProtocol, CauseLimit, CauseClosed, CauseBusy}

func (c Cause) String() string {
	switch c {
	case CauseNone:
		return "none"
	case CauseTimeout:
		return "timeout"
	case CauseDenied:
		return "denied"
	case CauseUnreachable:
		return "unreachable"
	case CauseLookup:
		return "lookup-error"
	case CauseProtocol:
		return "protocol"
	case CauseLimit:
		return "limit"
	case CauseClosed:
		return "closed"
	case CauseBusy:
		return "busy"
	}
	return fmt.Sprintf("cause(%d)", int(c))
}

// LookupError is a failed table lookup.
type LookupError struct {
	Backend string // "proxymap", "postmap", "memory", "builtin", "file"
	Table   string // type:name; for a file, its path
	Key     string
	Cause   Cause
	Err     error
}

func (e *LookupError) Error() string {
	what := e.Table
	if e.Key != "" {
		what = fmt.Sprintf("%s key %q", e.Table, e.Key)
	}
	return fmt.Sprintf("%s lookup of %s: %s: %v", e.Backend, what, e.Cause, e.Err)
}

func (e *LookupError) Unwrap() error { return e.Err }

// causeOf returns the cause an error stands for: a LookupError's own, or
// one derived from a context error.
func causeOf(err error) Cause {
	var le *LookupError
	switch {
	case err == nil:
		return CauseNone
	case errors.As(err, &le):
		return le.Cause
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return CauseTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, errClosed):
		return CauseClosed
	case errors.Is(err, errBusy):
		return CauseBusy
	}
	return CauseLookup
}

// errBusy is the error of an expansion not started: MaxInflight ran.
var errBusy = errors.New("too many expansions running")

// errClosed is the error of a lookup or expansion cut short by Close.
var errClosed = errors.New("expander closed")

// LimitError is an expansion that reached one of Postfix's limits.
type LimitError struct {
	Limit string // the Postfix parameter or constant, e.g. virtual_alias_expansion_limit
	Value int
	Addr  string // the address being expanded
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("expansion of %s reached %s (%d)", e.Addr, e.Limit, e.Value)
}

// The table types Postfix opens as fixed-string tables (DICT_FLAG_FIXED
// set by their dict_*_open) and as pattern tables (DICT_FLAG_PATTERN). The
// SQL, LDAP and memcache clients are fixed-string tables whatever their
// query (global/db_common.c db_common_dict_partial returns 0).
var (
	fixedTypes = map[string]bool{
		"hash": true, "btree": true, "lmdb": true, "cdb": true, "dbm": true, "sdbm": true,
		"texthash": true, "inline": true, "static": true, "unix": true, "environ": true,
		"nis": true, "nisplus": true, "netinfo": true, "internal": true,
		"mysql": true, "pgsql": true, "sqlite": true, "ldap": true, "memcache": true,
	}
	patternTypes = map[string]bool{
		"regexp": true, "pcre": true, "cidr": true, "tcp": true, "socketmap": true,
		"randmap": true, "fail": true,
	}
)

// typeFixed reports from a table's type alone whether Postfix opens it as a
// fixed-string table. unionmap and pipemap are fixed when one of their
// members is (util/dict_union.c, util/dict_pipe.c take the union of the
// members' flags). ok is false for a type this package does not know.
func typeFixed(table string) (fixed, ok bool) {
	typ, name, found := strings.Cut(table, ":")
	if !found {
		return false, false
	}
	switch {
	case fixedTypes[typ]:
		return true, true
	case patternTypes[typ]:
		return false, true
	case typ == "unionmap" || typ == "pipemap":
		inner, ok := strings.CutPrefix(name, "{")
		if !ok {
			return false, false
		}
		inner, ok = strings.CutSuffix(inner, "}")
		if !ok {
			return false, false
		}
		members := splitList(inner)
		if len(members) == 0 {
			return false, false
		}
		for _, m := range members {
			f, ok := typeFixed(m)
			if !ok {
				return false, false
			}
			if f {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}
