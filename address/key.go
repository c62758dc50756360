package address

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// Key returns the normalised comparison key: equal keys mean the same
// mailbox for the loop check (SPEC section 5).
//
// The key is the address in one canonical spelling:
//
//   - The local part is unquoted (quoted pairs and quotes removed, folding
//     line breaks dropped), case-folded, and written as a dot-atom when it is
//     one, else as one quoted string with '"' and '\' escaped: "user"@x and
//     user@x have one key, and so have "a\b"@x and ab@x. Extensions stay:
//     user+ext@x and user@x differ, as in Postfix.
//   - The whole address is case-folded, as Postfix folds it: ASCII letters
//     to lower case, UTF-8 with full Unicode case folding in canonical
//     normal form (so composed and decomposed spellings agree). Bytes that
//     are not UTF-8 are kept as they are.
//   - The domain loses one trailing dot (not from "a.." nor ".", the way
//     Postfix strips it) and goes through IDNA UTS #46 non-transitional
//     lookup mapping to its A-label form, so bücher.example, BÜCHER.example
//     and xn--bcher-kva.example agree. The deviation characters that
//     non-transitional processing keeps are then folded as Postfix folds
//     them (straße.example = strasse.example). A domain IDNA refuses (an underscore,
//     a bad Punycode label) is case-folded instead, so the key stays total.
//   - An address literal is canonical: [192.0.2.1] via net/netip,
//     [IPv6:2001:DB8:0::1] as [ipv6:2001:db8::1] (an untagged IPv6 literal
//     too); any other literal is case-folded with its outer white space
//     trimmed.
//   - An Addr without a domain keys as its local part alone, which only
//     another address without a domain (<Postmaster>) can equal. The zero
//     Addr keys as "".
func (a Addr) Key() string {
	if a.Local == "" && a.Domain == "" {
		return ""
	}
	local := quoteLocal(fold(unquoteLocal(a.Local)))
	if a.Domain == "" {
		return local
	}
	return local + "@" + domainKey(a.Domain)
}

// unquoteLocal turns a local part as written into the string it stands for:
// quotes dropped, quoted pairs (and backslash escapes in atoms, as Postfix
// reads them) reduced to the escaped byte, CR and LF dropped (they can only
// be header folding, which unfolding removes). It is total: an unterminated
// quote runs to the end.
func unquoteLocal(s string) string { return unescape(s, true) }

// unescape reduces quoted pairs to the byte they escape and drops CR and LF
// that are not escaped (folding);
// with dropQuotes it drops '"' too (a local part's quotes, not an address
// literal's content).
func unescape(s string, dropQuotes bool) string {
	if !strings.ContainsAny(s, "\"\\\r\n") {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' && dropQuotes:
			continue
		case c == '\\':
			if i+1 < len(s) {
				i++
				b = append(b, s[i])
			}
			continue
		case c == '\r' || c == '\n':
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

// quoteLocal writes an unquoted local part canonically: as is when it is a
// dot-atom (RFC 5322 3.2.3, with UTF-8 allowed as in RFC 6531), else as one
// quoted string escaping '"' and '\' (Postfix's quote_822_local rule), and
// CR and LF, which unescaped would read back as folding.
func quoteLocal(s string) string {
	if isDotAtom(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' || c == '\r' || c == '\n' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// isAtext reports the bytes of RFC 5322 atext, plus every non-ASCII byte
// (RFC 6531 allows UTF-8 there; Postfix leaves 8-bit bytes unquoted too).
func isAtext(c byte) bool {
	if c >= 0x80 {
		return true
	}
	if c <= ' ' || c == 0x7f {
		return false
	}
	return !strings.ContainsRune(`()<>[]:;@\,."`, rune(c))
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if s[i+1] == '.' {
				return false
			}
			continue
		}
		if !isAtext(c) {
			return false
		}
	}
	return true
}

// fold case-folds s: ASCII to lower case; valid UTF-8 with full Unicode
// case folding, computed as NFC(fold(NFD(s))) so that canonically
// equivalent spellings fold alike and folding the result changes nothing.
// Invalid UTF-8 keeps its non-ASCII bytes as they are (Postfix folds such
// addresses as ASCII only).
func fold(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || !utf8.ValidString(s) {
		return asciiLower(s)
	}
	return norm.NFC.String(fixCherokee(cases.Fold().String(norm.NFD.String(s))))
}

// FoldPostfix case-folds s as Postfix's fold_addr(FOLD_ADDR_ALL) does with
// smtputf8_enable = yes (util/casefold.c casefoldx): ASCII letters to lower
// case, anything else with ICU's full default case folding, with no
// normalisation; bytes that are not UTF-8 are kept as they are. local(8)
// folds both sides of its exact Delivered-To: comparison so
// (global/delivered_hdr.c), which, unlike Key, tells composed and
// decomposed spellings apart. With smtputf8_enable = no Postfix folds ASCII
// only; a spelling that differs from another in the case of non-ASCII
// letters alone then differs to Postfix but not here.
func FoldPostfix(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return fixCherokee(cases.Fold().String(s))
		}
	}
	return asciiLower(s)
}

// Cherokee is the one script whose case folding goes to upper case
// (Unicode 8.0 added the lower case letters; folding stability kept the
// old upper case ones as the folded form). x/text/cases folds it to lower
// case instead and folds lower case back to upper case (golang/go#46101),
// so its result is no fixed point. These are the CaseFolding.txt ranges.
const (
	cherokeeSmallFirst   = 0xAB70 // CHEROKEE SMALL LETTER A
	cherokeeSmallLast    = 0xABBF // CHEROKEE SMALL LETTER YA
	cherokeeUpperFirst   = 0x13A0 // CHEROKEE LETTER A
	cherokeeSmallYeFirst = 0x13F8 // CHEROKEE SMALL LETTER YE
	cherokeeSmallYeLast  = 0x13FD // CHEROKEE SMALL LETTER MV
	cherokeeUpperYe      = 0x13F0 // CHEROKEE LETTER YE
)

// fixCherokee maps Cherokee small letters to the capital letters they
// fold to.
func fixCherokee(s string) string {
	if !strings.ContainsFunc(s, isCherokeeSmall) {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch {
		case cherokeeSmallFirst <= r && r <= cherokeeSmallLast:
			return r - cherokeeSmallFirst + cherokeeUpperFirst
		case cherokeeSmallYeFirst <= r && r <= cherokeeSmallYeLast:
			return r - cherokeeSmallYeFirst + cherokeeUpperYe
		}
		return r
	}, s)
}

func isCherokeeSmall(r rune) bool {
	return cherokeeSmallFirst <= r && r <= cherokeeSmallLast ||
		cherokeeSmallYeFirst <= r && r <= cherokeeSmallYeLast
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// stripRootDot removes one trailing dot, not the only dot of "." nor one of
// "a..", the way Postfix's address rewriting does.
func stripRootDot(d string) string {
	n := len(d)
	if n >= 2 && d[n-1] == '.' && d[n-2] != '.' {
		return d[:n-1]
	}
	return d
}

// domainKey returns the canonical form of a domain as written.
func domainKey(d string) string {
	if strings.HasPrefix(d, "[") {
		return literalKey(d)
	}
	// The domain as Postfix reads it: a backslash stands for the byte it
	// escapes (a\.b is a.b), folding line breaks are gone.
	d = stripRootDot(unescape(d, false))
	// IDNA maps some dots (U+3002, U+FF0E, ...) to '.', so a trailing dot
	// can appear only after the mapping; strip again so the key is a fixed
	// point.
	if r, ok := toASCII(d); ok {
		return foldDeviations(r)
	}
	f := fold(d)
	if r, ok := toASCII(f); ok {
		return foldDeviations(r)
	}
	return escapeDomain(f)
}

// foldDeviations gives an A-label domain the full case folding Postfix
// applies to the whole address. Non-transitional IDNA keeps ß and ς (the
// UTS #46 "deviations"), so straße.example maps to xn--strae-oqa.example,
// while Postfix folds it to strasse.example and local(8) bounces
// "Delivered-To: u@straße.example" for the recipient u@strasse.example
// (observed on Postfix 3.7). Folding the Unicode form and mapping it back
// keeps the key a superset of Postfix's comparison.
func foldDeviations(a string) string {
	if !strings.Contains(a, "xn--") {
		return a // ASCII labels: IDNA has already lower-cased them
	}
	u, err := idna.Lookup.ToUnicode(a)
	if err != nil {
		return a
	}
	if f := fold(u); f != u {
		if r, ok := toASCII(f); ok {
			return r
		}
	}
	return a
}

// escapeDomain puts a backslash before every byte of a domain that an atom
// cannot hold, so that the key reads back as the same domain.
//
// A domain of dots alone (from a\. unescaped) gets its first dot escaped, or
// it would read back as no domain at all.
func escapeDomain(d string) string {
	if d != "" && strings.Trim(d, ".") == "" {
		return "\\" + d
	}
	n := 0
	for i := 0; i < len(d); i++ {
		if d[i] != '.' && !isAtext(d[i]) {
			n++
		}
	}
	if n == 0 {
		return d
	}
	b := make([]byte, 0, len(d)+n)
	for i := 0; i < len(d); i++ {
		if d[i] != '.' && !isAtext(d[i]) {
			b = append(b, '\\')
		}
		b = append(b, d[i])
	}
	return string(b)
}

// toASCII maps d through IDNA lookup processing, and refuses a result that
// would not read back as a domain: empty, or starting with a dot (U+3002
// alone maps to ".").
func toASCII(d string) (string, bool) {
	r, err := idna.Lookup.ToASCII(d)
	if err != nil || r == "" || r[0] == '.' {
		return "", false
	}
	return stripRootDot(r), true
}

// literalKey returns the canonical form of an address literal as written
// ("[" content "]", the closing bracket possibly missing).
func literalKey(d string) string {
	content := d[1:]
	if strings.HasSuffix(content, "]") && !danglingBackslash([]byte(content[:len(content)-1])) {
		content = content[:len(content)-1]
	}
	content = strings.Trim(unescape(content, false), " \t")
	if ip, err := netip.ParseAddr(content); err == nil && ip.Zone() == "" {
		if ip.Is4() {
			return "[" + ip.String() + "]"
		}
		return "[ipv6:" + ip.String() + "]"
	}
	if len(content) > 5 && strings.EqualFold(content[:5], "ipv6:") {
		v6 := strings.Trim(content[5:], " \t")
		if ip, err := netip.ParseAddr(v6); err == nil && ip.Is6() && ip.Zone() == "" {
			return "[ipv6:" + ip.String() + "]"
		}
	}
	f := fold(content)
	var b strings.Builder
	b.Grow(len(f) + 2)
	b.WriteByte('[')
	for i := 0; i < len(f); i++ {
		if c := f[i]; strings.IndexByte("[]\\\"<>\r\n", c) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(f[i])
	}
	b.WriteByte(']')
	return b.String()
}
