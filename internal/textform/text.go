// Package textform reads and writes the text form of the conformance
// cases (conformance/README.md): escaped text that stands for bytes (what
// a client sends, a message file) and expectations that stand for a set
// of byte strings ({any-text}, {optional}, {prefix}), and matches
// received bytes against them. The conformance runner and the seed
// generator of the core's fuzz targets both read cases with it.
package textform

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxRepeatBytes bounds what one {repeat N "s"} may produce. The largest
// case needs a little over 2 MiB (a header section over the 1 MiB default
// limit); 64 MiB leaves room for larger messages while keeping a typo such
// as an extra zero from exhausting the test machine's memory.
const MaxRepeatBytes = 64 << 20

// segKind is the kind of one piece of an expectation.
type segKind uint8

const (
	segLit      segKind = iota // these exact bytes
	segAnyText                 // {any-text}: any bytes other than CR and LF, possibly none
	segOptional                // {optional}: the line in sub, or nothing
	segPrefix                  // {prefix}: any prefix (possibly empty) of lit
)

// seg is one piece of an expectation (a "want" file).
type seg struct {
	kind segKind
	lit  []byte
	sub  []seg // segOptional
}

// Pattern is a parsed expectation: the bytes one side must receive.
type Pattern struct {
	segs []seg
}

// Literals returns the pattern's runs of exact bytes, in order (those
// inside an {optional} line or after {prefix} aside).
func (p Pattern) Literals() [][]byte {
	var lits [][]byte
	for _, s := range p.segs {
		if s.kind == segLit {
			lits = append(lits, s.lit)
		}
	}
	return lits
}

// textMode says which directives a piece of text may hold.
type textMode uint8

const (
	modeBytes textMode = iota // bytes to send: escapes and {repeat} only
	modeWant                  // an expectation: also {any-text}, {prefix}, {optional}
)

// Decode turns escaped text (a file of a case, or an indented block)
// into the bytes it stands for. conformance/README.md states the rules.
func Decode(text string) ([]byte, error) {
	p, err := decodeText(text, modeBytes)
	if err != nil {
		return nil, err
	}
	if len(p.segs) == 0 {
		return []byte{}, nil
	}
	return p.segs[0].lit, nil
}

// DecodePattern turns an expectation file into a Pattern.
func DecodePattern(text string) (Pattern, error) {
	return decodeText(text, modeWant)
}

// textDecoder accumulates segments while text is decoded.
type textDecoder struct {
	mode     textMode
	segs     []seg
	inPrefix bool // {prefix} seen: everything after it is its literal
}

func (d *textDecoder) addLit(b []byte) {
	if len(b) == 0 {
		return
	}
	if d.inPrefix {
		last := &d.segs[len(d.segs)-1]
		last.lit = append(last.lit, b...)
		return
	}
	if n := len(d.segs); n > 0 && d.segs[n-1].kind == segLit {
		d.segs[n-1].lit = append(d.segs[n-1].lit, b...)
		return
	}
	d.segs = append(d.segs, seg{kind: segLit, lit: append([]byte(nil), b...)})
}

func decodeText(text string, mode textMode) (Pattern, error) {
	d := &textDecoder{mode: mode}
	if text == "" {
		return Pattern{}, nil
	}
	lines := strings.SplitAfter(text, "\n")
	if last := lines[len(lines)-1]; last == "" {
		lines = lines[:len(lines)-1]
	}
	for i, line := range lines {
		line = strings.TrimSuffix(line, "\n")
		if err := d.line(line); err != nil {
			return Pattern{}, fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return Pattern{segs: d.segs}, nil
}

const optionalMarker = "{optional}"

// line decodes one line of text and its line end.
func (d *textDecoder) line(line string) error {
	if d.mode == modeWant && strings.HasPrefix(line, optionalMarker) {
		if d.inPrefix {
			return fmt.Errorf("%s after {prefix}: {prefix} must be the last directive", optionalMarker)
		}
		sub := &textDecoder{mode: d.mode}
		if err := sub.content(line[len(optionalMarker):], true); err != nil {
			return err
		}
		for _, s := range sub.segs {
			if s.kind == segPrefix {
				return fmt.Errorf("{prefix} inside an {optional} line")
			}
		}
		d.segs = append(d.segs, seg{kind: segOptional, sub: sub.segs})
		return nil
	}
	return d.content(line, false)
}

// content decodes the bytes of one line (without its LF) and appends its
// line end: CRLF, unless the line ends in a lone backslash.
func (d *textDecoder) content(line string, inOptional bool) error {
	var lit []byte
	flush := func() {
		d.addLit(lit)
		lit = lit[:0]
	}
	crlf := true
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == '\\':
			if i+1 == len(line) {
				crlf = false
				i++
				continue
			}
			b, n, err := decodeEscape(line[i:])
			if err != nil {
				return fmt.Errorf("column %d: %w", i+1, err)
			}
			lit = append(lit, b)
			i += n
		case c == '{':
			name, arg, n, err := splitDirective(line[i:])
			if err != nil {
				return fmt.Errorf("column %d: %w", i+1, err)
			}
			switch {
			case name == "repeat":
				b, err := decodeRepeat(arg)
				if err != nil {
					return fmt.Errorf("column %d: %w", i+1, err)
				}
				lit = append(lit, b...)
			case d.mode == modeWant && name == "any-text" && arg == "":
				if d.inPrefix {
					return fmt.Errorf("column %d: {any-text} after {prefix}: {prefix} must be the last directive", i+1)
				}
				flush()
				d.segs = append(d.segs, seg{kind: segAnyText})
			case d.mode == modeWant && name == "prefix" && arg == "":
				if inOptional {
					return fmt.Errorf("column %d: {prefix} inside an {optional} line", i+1)
				}
				if d.inPrefix {
					return fmt.Errorf("column %d: a second {prefix}", i+1)
				}
				flush()
				d.segs = append(d.segs, seg{kind: segPrefix, lit: []byte{}})
				d.inPrefix = true
			case d.mode == modeWant && name == "optional":
				return fmt.Errorf("column %d: {optional} must open its line", i+1)
			default:
				if d.mode == modeBytes && (name == "any-text" || name == "prefix" || name == "optional") {
					return fmt.Errorf("column %d: {%s} is allowed only in want-* files", i+1, name)
				}
				return fmt.Errorf("column %d: unknown directive %q (write a literal brace as \\{)", i+1, line[i:i+n])
			}
			i += n
		case c == '\r' || c == 0 || (c < 0x20 && c != '\t') || c == 0x7f:
			return fmt.Errorf("column %d: raw control byte %#02x: write it as an escape", i+1, c)
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRuneInString(line[i:])
			if r == utf8.RuneError && n == 1 {
				return fmt.Errorf("column %d: invalid UTF-8 byte %#02x: write it as \\x%02X", i+1, c, c)
			}
			lit = append(lit, line[i:i+n]...)
			i += n
		default:
			lit = append(lit, c)
			i++
		}
	}
	if crlf {
		lit = append(lit, '\r', '\n')
	}
	flush()
	return nil
}

// decodeEscape decodes the backslash escape at the start of s (which has
// at least two bytes) and returns the byte and the length consumed.
func decodeEscape(s string) (byte, int, error) {
	switch s[1] {
	case 'r':
		return '\r', 2, nil
	case 'n':
		return '\n', 2, nil
	case 't':
		return '\t', 2, nil
	case '0':
		return 0, 2, nil
	case '\\':
		return '\\', 2, nil
	case '{':
		return '{', 2, nil
	case '"':
		return '"', 2, nil
	case 'x':
		if len(s) < 4 {
			return 0, 0, fmt.Errorf("\\x needs two hex digits")
		}
		v, err := strconv.ParseUint(s[2:4], 16, 8)
		if err != nil {
			return 0, 0, fmt.Errorf("\\x needs two hex digits, not %q", s[2:4])
		}
		return byte(v), 4, nil
	}
	return 0, 0, fmt.Errorf("unknown escape \\%c", s[1])
}

// splitDirective reads "{name}" or "{name args}" at the start of s. The
// args end at the first "}" that is not inside a double-quoted string.
func splitDirective(s string) (name, arg string, n int, err error) {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++ // skip the escaped byte
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			// A directive without arguments is its bare name: "{any-text }"
			// is no directive, so a stray blank cannot change a meaning.
			body := s[1:i]
			name, arg, hasArg := strings.Cut(body, " ")
			if hasArg && arg == "" {
				arg = " "
			}
			return name, arg, i + 1, nil
		}
	}
	return "", "", 0, fmt.Errorf("unterminated directive %q (write a literal brace as \\{)", s)
}

// decodeRepeat decodes the arguments of {repeat N "s"}.
func decodeRepeat(arg string) ([]byte, error) {
	countText, quoted, ok := strings.Cut(arg, " ")
	if !ok {
		return nil, fmt.Errorf(`{repeat} wants a count and a quoted string: {repeat 1000 "x"}`)
	}
	count, err := strconv.Atoi(countText)
	if err != nil || count < 0 {
		return nil, fmt.Errorf("{repeat}: bad count %q", countText)
	}
	quoted = strings.TrimSpace(quoted)
	if len(quoted) < 2 || quoted[0] != '"' || quoted[len(quoted)-1] != '"' {
		return nil, fmt.Errorf("{repeat}: the string must be in double quotes, got %s", quoted)
	}
	var unit []byte
	body := quoted[1 : len(quoted)-1]
	for i := 0; i < len(body); {
		switch c := body[i]; {
		case c == '\\':
			if i+1 == len(body) {
				return nil, fmt.Errorf("{repeat}: string ends in a backslash")
			}
			b, n, err := decodeEscape(body[i:])
			if err != nil {
				return nil, fmt.Errorf("{repeat}: %w", err)
			}
			unit = append(unit, b)
			i += n
		case c == '"':
			return nil, fmt.Errorf(`{repeat}: a quote inside the string must be written \"`)
		default:
			unit = append(unit, c)
			i++
		}
	}
	if len(unit) == 0 {
		return nil, fmt.Errorf("{repeat}: empty string")
	}
	if count > MaxRepeatBytes/len(unit) {
		return nil, fmt.Errorf("{repeat}: %d × %d bytes is over the %d-byte limit", count, len(unit), MaxRepeatBytes)
	}
	return bytes.Repeat(unit, count), nil
}

// repeatThreshold is the run length from which Escape writes a {repeat}:
// short runs read better spelled out.
const repeatThreshold = 40

// Escape writes b in the text form of a case file: Decode(Escape(b))
// equals b for every b. CRLF ends a line; a final partial line ends in a
// backslash; CR, LF, NUL, other control bytes, invalid UTF-8, backslash,
// left brace and trailing blanks are escaped; long runs of one byte use
// {repeat}. It is what the runner prints for received bytes.
func Escape(b []byte) string {
	var out strings.Builder
	for len(b) > 0 {
		line, rest, found := bytes.Cut(b, []byte("\r\n"))
		escapeLine(&out, line)
		if !found {
			out.WriteString("\\\n")
			break
		}
		out.WriteByte('\n')
		b = rest
	}
	return out.String()
}

func escapeLine(out *strings.Builder, line []byte) {
	// Trailing blanks are escaped so that no editor can strip them.
	trail := len(line)
	for trail > 0 && (line[trail-1] == ' ' || line[trail-1] == '\t') {
		trail--
	}
	for i := 0; i < len(line); {
		c := line[i]
		run := 1
		for i+run < len(line) && line[i+run] == c {
			run++
		}
		if run >= repeatThreshold {
			unit := escapeByte(c, false)
			if c == '"' {
				unit = `\"`
			}
			fmt.Fprintf(out, "{repeat %d \"%s\"}", run, unit)
			i += run
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRune(line[i:])
			if r != utf8.RuneError || n > 1 {
				out.Write(line[i : i+n])
				i += n
				continue
			}
		}
		out.WriteString(escapeByte(c, i >= trail))
		i++
	}
}

// escapeByte writes one byte; trailing says it is a blank at the end of
// its line.
func escapeByte(c byte, trailing bool) string {
	switch {
	case c == '\r':
		return `\r`
	case c == '\n':
		return `\n`
	case c == 0:
		return `\0`
	case c == '\\':
		return `\\`
	case c == '{':
		return `\{`
	case c == '"':
		return `"`
	case c == '\t' && trailing:
		return `\t`
	case c == ' ' && trailing:
		return `\x20`
	case c == '\t':
		return "\t"
	case c < 0x20 || c == 0x7f || c >= utf8.RuneSelf:
		return fmt.Sprintf(`\x%02X`, c)
	}
	return string(c)
}
