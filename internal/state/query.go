package state

import (
	"fmt"
	"time"
)

// checkQueries refuses queries a store cannot answer faithfully: a store
// keeps times in milliseconds, and a window or block under one would
// expire at once.
func checkQueries(qs []Query, ans []Answer) error {
	if len(ans) < len(qs) {
		return fmt.Errorf("%d answers for %d queries", len(ans), len(qs))
	}
	for i := range qs {
		q := &qs[i]
		if q.Record && (q.Keep < time.Millisecond || q.KeepCalls < 1) {
			return fmt.Errorf("query %d: recording a call needs keep >= 1ms and keepCalls >= 1, got %s and %d", i, q.Keep, q.KeepCalls)
		}
		for j := range q.Steps {
			s := &q.Steps[j]
			switch {
			case s.Rule == "" || s.Rule == maskedField:
				return fmt.Errorf("query %d: step %d: rule name %q", i, j, s.Rule)
			case s.Calls < 0:
				return fmt.Errorf("query %d: step %q: calls %d", i, s.Rule, s.Calls)
			case s.Calls > 0 && s.Within < time.Millisecond:
				return fmt.Errorf("query %d: step %q: within %s", i, s.Rule, s.Within)
			case s.BlockFor < 0:
				return fmt.Errorf("query %d: step %q: blockFor %s", i, s.Rule, s.BlockFor)
			}
		}
	}
	return nil
}
