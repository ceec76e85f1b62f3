package policy

import (
	"unicode"
	"unicode/utf8"
)

// maxKeyDigits is the longest digit string that packs into a numberKey. E.164
// numbers have at most 15 digits; the slack keeps national oddities usable.
const maxKeyDigits = 18

// numberBuf holds a normalized number on the stack while a call is decided.
// Longer input still normalizes (append moves to the heap), it just costs an
// allocation. The normalized form is at most one byte (the '+') longer than
// the input.
type numberBuf [32]byte

// NormalizeNumber normalizes a phone number as docs/matching.md describes, and is the
// only normalizer: the compiler (rule fields and list entries), Decide (the
// caller's number) and the kubectl plugin (--number) all use it, through
// appendNormalized.
//
//   - A leading "tel:" (RFC 3966, any case) is dropped, and with it the URI's
//     parameters: everything from the first ';' ("tel:+1-555-0100;ext=2").
//     Without "tel:", a ';' makes the number invalid.
//   - Unicode decimal digits (category Nd: fullwidth, Arabic-Indic,
//     Devanagari, …) become ASCII digits by their value; scripts may mix.
//   - Format characters (category Cf: zero-width space, BOM, word joiner,
//     direction marks, soft hyphen, …) are dropped.
//   - Spaces (' ' and Unicode spaces of category Zs such as no-break space),
//     '-', '.', '(' and ')' are removed; so are their fullwidth forms and the
//     hyphens and dashes U+2010 to U+2015 and U+2212 (minus sign), which word
//     processors put in for '-'. Fullwidth '＋' reads as '+'. Tabs and line
//     breaks are not separators.
//   - A leading "00" becomes '+'; a number without '+' gets one.
//
// It reports false when anything but digits follows the '+' (a '+' anywhere
// but first, a letter, a superscript digit, invalid UTF-8), or when no digit
// is left.
func NormalizeNumber(s string) (string, bool) {
	if isNormalized(s) {
		// The common case (Graph sends E.164) returns the input: no allocation.
		return s, true
	}
	var buf numberBuf
	n, ok := appendNormalized(buf[:0], s)
	if !ok {
		return "", false
	}
	return string(n), true
}

// isNormalized reports whether s already is '+' followed by one or more digits.
func isNormalized(s string) bool {
	if len(s) < 2 || s[0] != '+' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// What a character of a number is, once read: an ASCII digit or '+' stands
// for itself; numSkip is a separator or a format character, numBad anything
// else.
const (
	numSkip = ' '
	numBad  = 'x'
)

// appendNormalized appends the normalized form of s ('+' and ASCII digits) to
// dst. It does not allocate while dst has room. ASCII input stays in this
// function's byte loop, which calls nothing (a call in the loop would cost
// E.164 input a third more time); the first non-ASCII byte hands the rest to
// appendNormalizedUnicode.
func appendNormalized(dst []byte, s string) ([]byte, bool) {
	if len(s) > 0 && s[0] != '+' && (s[0] < '0' || s[0] > '9') {
		// Only a number that does not start with '+' or a digit can be a
		// tel: URI.
		s = cutTel(s)
	}
	start := len(dst)
	dst = append(dst, '+')
	plus, seen := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '-', '.', '(', ')':
			continue
		}
		if c == '+' && !seen {
			plus, seen = true, true
			continue
		}
		if c < '0' || c > '9' {
			if c >= utf8.RuneSelf {
				return appendNormalizedUnicode(dst, start, plus, seen, s[i:])
			}
			return dst[:start], false
		}
		seen = true
		dst = append(dst, c)
	}
	return finishNormalized(dst, start, plus)
}

// appendNormalizedUnicode goes on where appendNormalized met a non-ASCII
// byte: dst[start:] holds '+' and the digits so far, plus and seen say
// whether a '+' and anything but a separator were read.
func appendNormalizedUnicode(dst []byte, start int, plus, seen bool, s string) ([]byte, bool) {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch c {
			case ' ', '-', '.', '(', ')':
				continue
			}
		} else {
			r, size := utf8.DecodeRuneInString(s[i:])
			i += size
			if c = classify(r); c == numSkip {
				continue
			}
		}
		if c == '+' && !seen {
			plus, seen = true, true
			continue
		}
		if c < '0' || c > '9' {
			return dst[:start], false
		}
		seen = true
		dst = append(dst, c)
	}
	return finishNormalized(dst, start, plus)
}

// finishNormalized turns a leading "00" into the '+' when the number had none,
// and fails when no digit was read.
func finishNormalized(dst []byte, start int, plus bool) ([]byte, bool) {
	digits := dst[start+1:]
	if !plus && len(digits) >= 2 && digits[0] == '0' && digits[1] == '0' {
		n := copy(digits, digits[2:])
		dst = dst[:start+1+n]
	}
	if len(dst) == start+1 {
		return dst[:start], false
	}
	return dst, true
}

// cutTel returns s without a leading "tel:" (any case) and the URI's
// parameters, from the first ';'. Spaces and format characters before
// "tel:" are passed over (a list line may start with a byte order mark); s is
// returned unchanged when it does not start with "tel:".
func cutTel(s string) string {
	i := 0
	for i < len(s) {
		if s[i] == ' ' {
			i++
			continue
		}
		if s[i] < utf8.RuneSelf {
			break
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if classify(r) != numSkip {
			break
		}
		i += size
	}
	if len(s)-i < 4 || s[i]|0x20 != 't' || s[i+1]|0x20 != 'e' || s[i+2]|0x20 != 'l' || s[i+3] != ':' {
		return s
	}
	s = s[i+4:]
	for j := 0; j < len(s); j++ {
		if s[j] == ';' {
			return s[:j]
		}
	}
	return s
}

// classify reads a non-ASCII character of a number: an ASCII digit for a
// decimal digit, '+' for the fullwidth plus, numSkip for a separator or a
// format character, numBad for anything else (utf8.RuneError included).
func classify(r rune) byte {
	if r >= '\uFF10' && r <= '\uFF19' {
		// Fullwidth digits, the form East Asian input methods type, spared
		// the search.
		return byte('0' + r - '\uFF10')
	}
	switch r {
	case '\uFF0B': // fullwidth plus sign
		return '+'
	case '\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2015', // hyphen … horizontal bar
		'\u2212',                               // minus sign
		'\uFF0D', '\uFF0E', '\uFF08', '\uFF09': // fullwidth - . ( )
		return numSkip
	}
	if d, ok := digitValue(r); ok {
		return '0' + d
	}
	if unicode.Is(unicode.Zs, r) || unicode.Is(unicode.Cf, r) {
		return numSkip
	}
	return numBad
}

// digitValue returns the value of a decimal digit (category Nd). Unicode
// assigns decimal digits only in runs of ten, 0 to 9 in order, and
// unicode.Nd's ranges are whole runs with stride 1 (TestDigitValueTable
// checks it), so the value is the distance from the range's start, mod 10.
// The ranges are sorted: a binary search finds the one that may hold r.
func digitValue(r rune) (byte, bool) {
	if r <= 0xFFFF {
		t := unicode.Nd.R16
		lo, hi := 0, len(t)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			switch rg := t[m]; {
			case uint16(r) < rg.Lo:
				hi = m
			case uint16(r) > rg.Hi:
				lo = m + 1
			default:
				return byte((uint16(r) - rg.Lo) % 10), true
			}
		}
		return 0, false
	}
	t := unicode.Nd.R32
	lo, hi := 0, len(t)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch rg := t[m]; {
		case uint32(r) < rg.Lo:
			hi = m
		case uint32(r) > rg.Hi:
			lo = m + 1
		default:
			return byte((uint32(r) - rg.Lo) % 10), true
		}
	}
	return 0, false
}

// numberKey packs a digit string of at most maxKeyDigits digits into a uint64:
// the digits read as a decimal number behind a leading 1, so "+01" and "+1"
// stay apart. Exact and prefix lookups then need neither strings nor hashing
// of bytes.
func numberKey(digits []byte) uint64 {
	k := uint64(1)
	for _, d := range digits {
		k = k*10 + uint64(d-'0')
	}
	return k
}
