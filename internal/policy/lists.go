package policy

import (
	"fmt"
	"strings"
)

// maxListEntries is the limit on number list entries (docs/matching.md) across a policy.
const maxListEntries = 1_000_000

// maxListErrors caps the errors reported per list: a list in the wrong format
// would otherwise yield a message per line.
const maxListErrors = 10

// parsedList is a number list as keys: exact numbers and prefixes.
type parsedList struct {
	exact, prefix []uint64
	errs          []listError
	// more counts the errors past maxListErrors.
	more int
}

type listError struct {
	line int
	msg  string
}

func (l *parsedList) entries() int { return len(l.exact) + len(l.prefix) }

// parseList reads a number list: one entry a line, an E.164 number or a
// prefix ending in '*', written any way NormalizeNumber reads (a tel: URI,
// fullwidth or other digits, a byte order mark before the first line); blank
// lines and '#' comments (also after an entry) are ignored.
func parseList(text string) *parsedList {
	l := &parsedList{}
	// Entries are about 13 bytes a line; sizing once avoids regrowing a
	// million-entry slice.
	l.exact = make([]uint64, 0, len(text)/13+1)
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
		key, prefix, err := entryKey(line)
		if err != "" {
			if len(l.errs) < maxListErrors {
				l.errs = append(l.errs, listError{n, fmt.Sprintf("%q: %s", line, err)})
			} else {
				l.more++
			}
			continue
		}
		if prefix {
			l.prefix = append(l.prefix, key)
		} else {
			l.exact = append(l.exact, key)
		}
	}
	return l
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
