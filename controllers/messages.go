package controllers

import (
	"fmt"
	"strings"
)

// Bounds on the text the operator writes for people. The API server refuses
// a condition message over 32 KiB and an events.k8s.io note over 1 KiB, and a
// refused status write would leave a broken policy looking healthy, so every
// message is cut to fit whatever the spec holds. A condition keeps the first
// ten problems (Ready and Stalled carry the same message, so a status holds
// two); an event note the first three.
const (
	maxConditionProblems = 10
	maxConditionMessage  = 4 * 1024
	maxEventProblems     = 3
	maxEventNote         = 1024
)

// summarizeProblems joins the first problems, at most maxItems of them and
// maxBytes in all, and says how many it left out. A first problem longer than
// the budget is cut, so the message is never empty.
func summarizeProblems(problems []string, maxItems, maxBytes int) string {
	more := func(n int) string {
		if n == 0 {
			return ""
		}
		return fmt.Sprintf("; … and %d more (kubectl callpolicy lint lists them all)", n)
	}
	var b strings.Builder
	taken := 0
	for i, p := range problems {
		if i == maxItems {
			break
		}
		sep := ""
		if i > 0 {
			sep = "; "
		}
		// Room for this problem and for the note on those after it.
		if b.Len()+len(sep)+len(p)+len(more(len(problems)-i-1)) > maxBytes {
			if i == 0 {
				b.WriteString(cut(p, maxBytes-len(more(len(problems)-1))))
				taken = 1
			}
			break
		}
		b.WriteString(sep)
		b.WriteString(p)
		taken = i + 1
	}
	b.WriteString(more(len(problems) - taken))
	return b.String()
}

// cut shortens s to at most n bytes, ending in "…", without splitting a
// UTF-8 sequence.
func cut(s string, n int) string {
	const ellipsis = "…"
	if len(s) <= n {
		return s
	}
	if n < len(ellipsis) {
		return ""
	}
	return strings.ToValidUTF8(s[:n-len(ellipsis)], "") + ellipsis
}
