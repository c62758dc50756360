package expand

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Postfix's attribute protocol in its "0" framing, the one attr_print and
// attr_scan default to (util/attr.h: attr_print is attr_print0;
// util/attr_print0.c, util/attr_scan0.c): an attribute list is a sequence
// of name\0value\0 pairs ended by an empty name, i.e. one more \0. Numbers
// are written in decimal ("%u"); strings may hold any byte but NUL.

// attr is one attribute of a list.
type attr struct {
	name, value string
}

// Bounds of what the decoder accepts. attr_scan0 has none of its own (a
// VSTRING grows as needed); a client of a local socket bounds them anyway
// so a broken or hostile peer cannot make it allocate without end.
const (
	// maxAttrValue bounds one name or value. A table value holding
	// virtual_alias_expansion_limit addresses of
	// virtual_alias_address_length_limit bytes each (1000 x 1000) fits.
	maxAttrValue = 1 << 20
	// maxAttrs bounds the attributes of one list: a proxymap reply has
	// three, its handshake one.
	maxAttrs = 16
)

// errAttrShort says the bytes end before the attribute list does.
var errAttrShort = errors.New("attribute list incomplete")

// appendAttrs appends an attribute list (attr_print0 with
// ATTR_FLAG_NONE): each name\0value\0, then \0.
func appendAttrs(dst []byte, attrs ...attr) []byte {
	for _, a := range attrs {
		dst = append(dst, a.name...)
		dst = append(dst, 0)
		dst = append(dst, a.value...)
		dst = append(dst, 0)
	}
	return append(dst, 0)
}

// decodeAttrs reads one attribute list from the start of b. It returns the
// attributes and how many bytes they took, errAttrShort when b ends first
// (more bytes may complete it), or another error when no continuation can
// make b a valid list. It never reads past the list's final \0.
func decodeAttrs(b []byte) ([]attr, int, error) {
	var attrs []attr
	pos := 0
	for {
		i := bytes.IndexByte(b[pos:min(len(b), pos+maxAttrValue+1)], 0)
		if i < 0 {
			if len(b)-pos > maxAttrValue {
				return nil, 0, fmt.Errorf("attribute name longer than %d bytes", maxAttrValue)
			}
			return nil, 0, errAttrShort
		}
		name := string(b[pos : pos+i])
		pos += i + 1
		if name == "" {
			return attrs, pos, nil
		}
		if len(attrs) == maxAttrs {
			return nil, 0, fmt.Errorf("more than %d attributes in one list", maxAttrs)
		}
		j := bytes.IndexByte(b[pos:min(len(b), pos+maxAttrValue+1)], 0)
		if j < 0 {
			if len(b)-pos > maxAttrValue {
				return nil, 0, fmt.Errorf("attribute %q: value longer than %d bytes", name, maxAttrValue)
			}
			return nil, 0, errAttrShort
		}
		attrs = append(attrs, attr{name, string(b[pos : pos+j])})
		pos += j + 1
	}
}

// scanAttrs checks a list against the names expected, in order, as
// attr_scan with ATTR_FLAG_STRICT does: an unexpected or missing
// attribute is an error.
func scanAttrs(attrs []attr, names ...string) ([]string, error) {
	if len(attrs) != len(names) {
		got := make([]string, len(attrs))
		for i, a := range attrs {
			got[i] = a.name
		}
		return nil, fmt.Errorf("got attributes %q, want %q", got, names)
	}
	values := make([]string, len(names))
	for i, a := range attrs {
		if a.name != names[i] {
			return nil, fmt.Errorf("unexpected attribute %q (expecting %q)", a.name, names[i])
		}
		values[i] = a.value
	}
	return values, nil
}

// attrUint reads a number as attr_scan0 does ("%u" and nothing after it).
func attrUint(name, v string) (uint32, error) {
	if v == "" || v[0] < '0' || v[0] > '9' {
		return 0, fmt.Errorf("attribute %s: bad number %q", name, v)
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("attribute %s: bad number %q", name, v)
	}
	return uint32(n), nil
}
