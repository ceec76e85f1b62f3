package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/state"
)

// expiryPolicy: a vip number first (no expiry), then a list rule.
func expiryPolicy(t testing.TB, list string) *Policy {
	t.Helper()
	src := testSource(
		allow("vip", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550100009"}})),
		reject("listed", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}}}})),
		reject("listed-too", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550100003"}, NumberLists: []v1alpha1.NumberList{
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}}}})),
	)
	src.Lists = map[ListRef]string{{"robocallers", "numbers.txt"}: list}
	return mustCompile(t, src)
}

func TestListExpires(t *testing.T) {
	at := time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)
	p := expiryPolicy(t, strings.Join([]string{
		"+15550100001 expires=2027-01-31T00:00:00Z",
		"+1 (555) 010-0002   expires=2027-01-31 # a date is 00:00 UTC",
		"+1555011* expires=2027-01-31T01:00:00+01:00",
		// Duplicates: any live entry matches, so the latest expiry wins…
		"+15550100003 expires=2027-01-30",
		"+15550100003 expires=2027-02-01",
		"+15550100003 expires=2027-01-29",
		// …and an entry without one never expires.
		"+15550100004 expires=2027-01-30",
		"+15550100004",
		"+15550100005 expires=2027-02-01T00:00:00.9Z",
		"+15550100009 expires=2020-01-01",
		"+15550100010",
	}, "\n"))
	tests := []struct {
		number     string
		at         time.Time
		rule       string
		whyExpired string
	}{
		{"+15550100001", at.Add(-time.Second), "listed", ""},
		{"+15550100001", at, "", "expired at T"},
		{"+15550100002", at.Add(-time.Second), "listed", ""},
		{"+15550100002", at, "", "a date is 00:00 UTC"},
		{"+15550110042", at.Add(-time.Second), "listed", ""},
		{"+15550110042", at, "", "a prefix expires too, in any zone"},
		{"+15550100003", at.Add(24*time.Hour - time.Second), "listed", ""},
		// The list's entry in listed-too has expired, its numbers entry not.
		{"+15550100003", at.Add(24 * time.Hour), "listed-too", "the latest expiry wins"},
		{"+15550100004", at.Add(365 * 24 * time.Hour), "listed", "no expiry wins"},
		{"+15550100005", at.Add(24 * time.Hour), "", "fractions of a second are dropped"},
		{"+15550100009", at, "vip", "an expired entry does not hide other rules' entries"},
		{"+15550100010", at.Add(100 * 365 * 24 * time.Hour), "listed", ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s at %s", tt.number, tt.at.Format(time.RFC3339)), func(t *testing.T) {
			if d := p.Decide(phoneCall(tt.number), tt.at); d.Rule != tt.rule {
				t.Errorf("Decide = rule %q, want %q (%s)", d.Rule, tt.rule, tt.whyExpired)
			}
		})
	}
}

// TestListExpiresPrepare: Prepare judges expiries at the call's arrival too.
func TestListExpiresPrepare(t *testing.T) {
	at := time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)
	src := testSource(
		blockFor(reject("listed", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})), time.Hour),
	)
	src.Lists = map[ListRef]string{{"l", "k"}: "+15550100001 expires=2027-01-31\n"}
	p := mustCompile(t, src)
	for _, c := range []struct {
		at     time.Time
		static bool
	}{{at.Add(-time.Second), true}, {at, false}} {
		var q state.Query
		if _, ask := p.Prepare(phoneCall("+15550100001"), c.at, "", &q); !ask || len(q.Steps) != 1 || q.Steps[0].Static != c.static {
			t.Errorf("Prepare at %s = %v, %+v; want the step with Static %v", c.at, ask, q, c.static)
		}
	}
}

func TestListExpiresErrors(t *testing.T) {
	src := testSource(reject("listed", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
		{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})))
	src.Lists = map[ListRef]string{{"l", "k"}: strings.Join([]string{
		"+15550100001 expires=2027-01-31",
		"+15550100002 expires=2027-13-01",
		"+15550100003 expires=tomorrow",
		"expires=2027-01-31",
		"+15550100004 expires=",
		"+15550100005 expires=2027-01-31T00:00:00",
		"+15550100006 expires=2027-01-31 +15550100007",
		"+15550100008 Expires=2027-01-31",
	}, "\n")}
	_, err := Compile(src)
	var ce *CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("Compile = %v, want a *CompileError", err)
	}
	const where = "spec.rules[0].match.callers.numberLists[0] (configmap l key k) line "
	want := []FieldError{
		{where + "2", `"+15550100002 expires=2027-13-01": expires="2027-13-01": want an RFC 3339 time such as 2027-01-31T00:00:00Z or a date such as 2027-01-31 (00:00 UTC)`},
		{where + "3", `"+15550100003 expires=tomorrow": expires="tomorrow": want an RFC 3339 time such as 2027-01-31T00:00:00Z or a date such as 2027-01-31 (00:00 UTC)`},
		{where + "4", `"expires=2027-01-31": no number or prefix before expires=`},
		{where + "5", `"+15550100004 expires=": expires="": want an RFC 3339 time such as 2027-01-31T00:00:00Z or a date such as 2027-01-31 (00:00 UTC)`},
		{where + "6", `"+15550100005 expires=2027-01-31T00:00:00": expires="2027-01-31T00:00:00": want an RFC 3339 time such as 2027-01-31T00:00:00Z or a date such as 2027-01-31 (00:00 UTC)`},
		{where + "7", `"+15550100006 expires=2027-01-31 +15550100007": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
		{where + "8", `"+15550100008 Expires=2027-01-31": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
	}
	if len(ce.Errors) != len(want) {
		t.Errorf("got %d errors, want %d:\n%s", len(ce.Errors), len(want), strings.ReplaceAll(err.Error(), "; ", "\n"))
	}
	for i := range min(len(ce.Errors), len(want)) {
		if ce.Errors[i] != want[i] {
			t.Errorf("error %d = %s\n        want %s", i, ce.Errors[i], want[i])
		}
	}
}

// TestListExpiresRoundTrip: the resolved policy's ConfigMaps carry the
// expiries (they are in the list's text).
func TestListExpiresRoundTrip(t *testing.T) {
	at := time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)
	src := testSource(reject("listed", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
		{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})))
	src.Lists = map[ListRef]string{{"l", "k"}: "+15550100001 expires=2027-01-31\n+15550100002\n"}
	data, shards, _, err := EncodeConfigMaps(src, "hotline-callguard-policy")
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeConfigMaps(data, storeOf(shards).get)
	if err != nil {
		t.Fatal(err)
	}
	p := mustCompile(t, back)
	for _, c := range []struct {
		number string
		at     time.Time
		rule   string
	}{{"+15550100001", at.Add(-time.Second), "listed"}, {"+15550100001", at, ""}, {"+15550100002", at, "listed"}} {
		if d := p.Decide(phoneCall(c.number), c.at); d.Rule != c.rule {
			t.Errorf("decoded policy: %s at %s = rule %q, want %q", c.number, c.at, d.Rule, c.rule)
		}
	}
	// Another expiry is another policy.
	other := testSource(src.Spec.Rules...)
	other.Lists = map[ListRef]string{{"l", "k"}: "+15550100001 expires=2027-02-01\n+15550100002\n"}
	if p.Hash() == mustCompile(t, other).Hash() {
		t.Error("changing an expiry kept the policy's hash")
	}
}

// TestListExpiresIndexSize: expiries cost nothing in a table without them
// and 12 bytes an expiring key in one with them.
func TestListExpiresIndexSize(t *testing.T) {
	var plain, some strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&plain, "+1555010%04d\n", i)
		fmt.Fprintf(&some, "+1555010%04d", i)
		if i%10 == 0 {
			some.WriteString(" expires=2027-01-31")
		}
		some.WriteByte('\n')
	}
	p := expiryPolicy(t, plain.String())
	if p.index.timed || p.index.exact.timed != nil {
		t.Error("a list without expiries has a timed index")
	}
	p = expiryPolicy(t, some.String())
	if !p.index.timed || len(p.index.exact.timed) != 100 || len(p.index.exact.timedCombo) != 100 {
		t.Errorf("%d changes for 100 expiring keys, want 100", len(p.index.exact.timed))
	}
}

// FuzzParseList: any text parses without a panic, each line that is not
// blank or a comment gives an entry or an error, and an entry's expiry is
// the time its line names.
func FuzzParseList(f *testing.F) {
	f.Add("+15550100001 expires=2027-01-31T00:00:00Z\n+1555* expires=2027-01-31\n# c\n\nexpires=\n")
	f.Add("+1 555 expires=2027-01-31T00:00:00.5+14:00 # x\n+1555 expires=9999-12-31\n+1555 expires=1969-12-31")
	f.Add("\ufeff+15550100001\texpires=2027-01-31\n")
	f.Fuzz(func(t *testing.T, text string) {
		l := parseList(text)
		lines := 0
		for _, line := range strings.Split(text, "\n") {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			if strings.TrimSpace(line) != "" {
				lines++
			}
		}
		if got := l.entries() + len(l.errs) + l.more; got != lines {
			t.Fatalf("%d entries and errors for %d lines", got, lines)
		}
		if len(l.exactTimed)+len(l.prefixTimed) > 0 && !strings.Contains(text, expiresField) {
			t.Fatalf("timed entries without %s", expiresField)
		}
		for _, line := range strings.Split(text, "\n") {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			entry, until, timed, msg := cutExpiry(strings.TrimSpace(line))
			if !timed || msg != "" {
				continue
			}
			v := line[strings.LastIndex(line, expiresField)+len(expiresField):]
			v = strings.TrimSpace(v)
			at, err := time.Parse(time.RFC3339, v)
			if err != nil {
				at, err = time.Parse(time.DateOnly, v)
			}
			if err != nil || until != unixSeconds(at) || entry == "" {
				t.Fatalf("line %q: entry %q until %d, want %v", line, entry, until, at)
			}
		}
	})
}
