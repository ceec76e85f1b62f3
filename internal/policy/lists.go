package policy

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// maxListEntries is the limit on number list entries (docs/matching.md) across a policy.
const maxListEntries = 1_000_000

// maxListErrors caps the errors reported per list: a list in the wrong format
// would otherwise yield a message per line.
const maxListErrors = 10

// parsedList is a number list as keys: exact numbers and prefixes, those
// that never expire and those that do.
type parsedList struct {
	exact, prefix           []uint64
	exactTimed, prefixTimed []timedKey
	errs                    []listError
	// more counts the errors past maxListErrors.
	more int
}

type listError struct {
	line int
	msg  string
}

func (l *parsedList) entries() int {
	return len(l.exact) + len(l.prefix) + len(l.exactTimed) + len(l.prefixTimed)
}

// expiresField starts the last field of an entry that expires.
const expiresField = "expires="

// parseList reads a number list: one entry a line, an E.164 number or a
// prefix ending in '*', written any way NormalizeNumber reads (a tel: URI,
// fullwidth or other digits, a byte order mark before the first line),
// optionally followed by " expires=" and an RFC 3339 time or a date (00:00
// UTC) from which the entry matches nothing; blank lines and '#' comments
// (also after an entry) are ignored.
func parseList(text string) *parsedList {
	l := &parsedList{}
	// Entries are about 13 bytes a line; sizing once avoids regrowing a
	// million-entry slice.
	l.exact = make([]uint64, 0, len(text)/13+1)
	// Entries that expire are sized too: regrowing them left garbage of
	// five times their size (the whole scan costs a compile about 1%).
	if n := strings.Count(text, expiresField); n > 0 {
		l.exactTimed = make([]timedKey, 0, n)
	}
	for n := 1; len(text) > 0; n++ {
		line := text
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = ""
		}
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		entry, until, timed, err := cutExpiry(line)
		var (
			key    uint64
			prefix bool
		)
		if err == "" {
			key, prefix, err = entryKey(entry)
		}
		if err != "" {
			if len(l.errs) < maxListErrors {
				l.errs = append(l.errs, listError{n, fmt.Sprintf("%q: %s", line, err)})
			} else {
				l.more++
			}
			continue
		}
		switch {
		case timed && prefix:
			l.prefixTimed = append(l.prefixTimed, timedKey{key, until})
		case timed:
			l.exactTimed = append(l.exactTimed, timedKey{key, until})
		case prefix:
			l.prefix = append(l.prefix, key)
		default:
			l.exact = append(l.exact, key)
		}
	}
	return l
}

// cutExpiry splits a list line into its entry and its expiry, if its last
// field is expires=. An expiry after what the index holds (2106) is none.
// Fractions of a second are dropped: the index counts whole seconds.
func cutExpiry(line string) (entry string, until uint32, timed bool, msg string) {
	i := strings.LastIndexAny(line, " \t")
	field := line[i+1:]
	if !strings.HasPrefix(field, expiresField) {
		return line, 0, false, ""
	}
	entry = strings.TrimSpace(line[:max(i, 0)])
	if entry == "" {
		return "", 0, false, "no number or prefix before " + expiresField
	}
	v := field[len(expiresField):]
	// One layout by the length: a failed parse allocates its error.
	layout := time.RFC3339
	if len(v) == len(time.DateOnly) {
		layout = time.DateOnly
	}
	t, err := time.Parse(layout, v)
	if err != nil {
		return "", 0, false, fmt.Sprintf("expires=%q: want an RFC 3339 time such as 2027-01-31T00:00:00Z or a date such as 2027-01-31 (00:00 UTC)", v)
	}
	if s := t.Unix(); s >= math.MaxUint32 {
		return entry, 0, false, ""
	}
	return entry, unixSeconds(t), true, ""
}

// entryKey normalizes a number, or a prefix when it ends in '*', into a
// numberKey with appendNormalized, the normalizer Decide uses for callers.
// It returns a message on failure.
func entryKey(s string) (key uint64, prefix bool, msg string) {
	if strings.HasSuffix(s, "*") {
		prefix, s = true, strings.TrimSpace(s[:len(s)-1])
	}
	var buf numberBuf
	n, ok := appendNormalized(buf[:0], s)
	if !ok {
		return 0, prefix, "not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)"
	}
	if len(n)-1 > maxKeyDigits {
		return 0, prefix, fmt.Sprintf("has %d digits, more than %d", len(n)-1, maxKeyDigits)
	}
	return numberKey(n[1:]), prefix, ""
}
