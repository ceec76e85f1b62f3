package policy

// maxKeyDigits is the longest digit string that packs into a numberKey. E.164
// numbers have at most 15 digits; the slack keeps national oddities usable.
const maxKeyDigits = 18

// numberBuf holds a normalized number on the stack while a call is decided.
// Longer input still normalizes (append moves to the heap), it just costs an
// allocation.
type numberBuf [32]byte

// NormalizeNumber normalizes a phone number as api.md describes: spaces, '-',
// '.', '(' and ')' are removed; a leading "00" becomes '+'; a number without
// '+' gets one. It reports false when anything but digits follows the '+', or
// when no digit is left.
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

// appendNormalized appends the normalized form of s ('+' and digits) to dst.
func appendNormalized(dst []byte, s string) ([]byte, bool) {
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
		seen = true
		if c < '0' || c > '9' {
			return dst[:start], false
		}
		dst = append(dst, c)
	}
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
