package controllers

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSummarizeProblems(t *testing.T) {
	many := make([]string, 1000)
	for i := range many {
		many[i] = fmt.Sprintf("spec.rules[0].match.callers.numbers[%d]: not a phone number", i)
	}
	huge := strings.Repeat("ü", 3000) // 6,000 bytes of two-byte runes
	for _, tc := range []struct {
		name      string
		problems  []string
		items     int
		bytes     int
		want      string
		wantStart string
	}{
		{name: "none", want: "", items: 10, bytes: 100},
		{name: "all fit", problems: []string{"a: x", "b: y"}, items: 10, bytes: 100, want: "a: x; b: y"},
		{name: "count bound", problems: []string{"a", "b", "c"}, items: 2, bytes: 100,
			want: "a; b; … and 1 more (kubectl callpolicy lint lists them all)"},
		{name: "byte bound", problems: many, items: 10, bytes: 300,
			wantStart: "spec.rules[0].match.callers.numbers[0]: not a phone number; spec.rules[0].match.callers.numbers[1]"},
		{name: "one problem over the budget", problems: []string{huge}, items: 10, bytes: 1024, wantStart: "üüü"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := summarizeProblems(tc.problems, tc.items, tc.bytes)
			if len(got) > tc.bytes {
				t.Errorf("%d bytes, bound %d", len(got), tc.bytes)
			}
			if !utf8.ValidString(got) {
				t.Errorf("not valid UTF-8: %q", got)
			}
			if tc.wantStart == "" && got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if !strings.HasPrefix(got, tc.wantStart) {
				t.Errorf("got %q, want it to start with %q", got, tc.wantStart)
			}
		})
	}
	got := summarizeProblems(many, maxConditionProblems, maxConditionMessage)
	if want := "; … and 990 more (kubectl callpolicy lint lists them all)"; !strings.HasSuffix(got, want) {
		t.Errorf("1,000 problems: got %q, want the first 10 and %q", got, want)
	}
}
