package expand

import (
	"context"
	"errors"
	"strings"
)

// charsCommaSpace are the separators of a Postfix list parameter
// (global/mail_params.h CHARS_COMMA_SP).
const charsCommaSpace = ", \t\r\n"

// splitList splits a Postfix list as mystrtokq(&bp, CHARS_COMMA_SP,
// CHARS_BRACE) does (util/mystrtok.c): at commas and white space outside
// braces, so "inline:{a=b, c=d}" stays one element.
func splitList(s string) []string {
	var out []string
	for {
		s = strings.TrimLeft(s, charsCommaSpace)
		if s == "" {
			return out
		}
		level, end := 0, len(s)
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c == '{' {
				level++
			} else if level > 0 && c == '}' {
				level--
			} else if level == 0 && strings.IndexByte(charsCommaSpace, c) >= 0 {
				end = i
				break
			}
		}
		out = append(out, s[:end])
		s = s[end:]
	}
}

// unbrace removes the braces around "{ text }" and the white space inside
// them, as Postfix's extpar does; text without braces is returned as is.
func unbrace(s string) string {
	if len(s) >= 2 && s[0] == '{' && s[len(s)-1] == '}' {
		return strings.TrimSpace(s[1 : len(s)-1])
	}
	return s
}

// builtin serves the table types whose content is the table's name, so
// no Postfix process needs to be asked and no proxy_read_maps approval is
// needed: static:value (util/dict_static.c), inline:{key=value, ...}
// (util/dict_inline.c) and fail:name (util/dict_fail.c). Other tables go
// to next.
type builtin struct {
	next Backend
}

// isBuiltin reports whether table is served by builtin.
func isBuiltin(table string) bool {
	typ, _, _ := strings.Cut(table, ":")
	return typ == "static" || typ == "inline" || typ == "fail"
}

var errFailTable = errors.New("fail: table: every lookup fails")

func (b builtin) Lookup(ctx context.Context, table, key string) (string, bool, error) {
	typ, name, _ := strings.Cut(table, ":")
	switch typ {
	case "static":
		return unbrace(name), true, nil
	case "inline":
		v, ok := inlineEntries(name)[foldKey(key)]
		return v, ok, nil
	case "fail":
		return "", false, &LookupError{Backend: "builtin", Table: table, Key: key, Cause: CauseLookup, Err: errFailTable}
	}
	return b.next.Lookup(ctx, table, key)
}

func (b builtin) Fixed(ctx context.Context, table string) (bool, error) {
	switch typ, _, _ := strings.Cut(table, ":"); typ {
	case "static", "inline":
		return true, nil
	case "fail":
		return false, nil
	}
	return b.next.Fixed(ctx, table)
}

func (b builtin) Close() error { return b.next.Close() }

// inlineEntries parses the name of an inline: table, "{ key=value, { key =
// value with spaces } }", into its entries, keys folded as a fixed-string
// table with DICT_FLAG_FOLD_FIX stores them. An element without '=' is
// ignored (Postfix refuses to open such a table; cleanup would then fail
// every lookup, which the proxy cannot mirror better than by not matching).
func inlineEntries(name string) map[string]string {
	m := map[string]string{}
	for _, el := range splitList(unbrace(name)) {
		el = unbrace(el)
		k, v, ok := strings.Cut(el, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "" {
			continue
		}
		if _, dup := m[foldKey(k)]; !dup {
			m[foldKey(k)] = v
		}
	}
	return m
}
