package policy

import (
	"testing"

	"github.com/callguard/callguard/api/v1alpha1"
)

// numberFormsPolicy has a rule per number field, each written in the ways
// the normalization (docs/matching.md) accepts, then a rule that any phone caller matches.
func numberFormsPolicy(t testing.TB) *Policy {
	t.Helper()
	lists := "\ufeff+15550005555 # a byte order mark, as Notepad saves\n" +
		"tel:+15550002222;ext=1\n" +
		"＋１５５５０００３３３３\n" +
		"+1555\u200b0004444\n" +
		"+1 555\u00a0000\u00a06666\n" +
		"tel:+1-555-777*\n" +
		"٠٠٣٣ ١*\n"
	src := testSource(
		reject("numbers", callers(v1alpha1.CallerMatch{Numbers: []string{
			"+15550001111", "tel:+1-555-000-7777", "＋１５５５０００８８８８"}})),
		reject("prefixes", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"tel:+1-900", "＋４４ ２０*"}})),
		reject("patterns", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+8613[0-9]{9}$`}})),
		reject("lists", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "feed", Key: "numbers.txt"}}}})),
		reject("any-phone", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{v1alpha1.IdentityPhone}})),
	)
	src.Lists = map[ListRef]string{{"feed", "numbers.txt"}: lists}
	return mustCompile(t, src)
}

// TestDecideNumberForms: a caller's number written as a tel: URI, in other
// scripts' digits or with format characters inside matches the rules on the
// number, and rules and list entries written that way match it. A number
// that stays invalid matches no number field but still its identity type.
func TestDecideNumberForms(t *testing.T) {
	p := numberFormsPolicy(t)
	if w := p.Warnings(); len(w) > 0 {
		t.Fatalf("warnings: %v", w)
	}
	tests := []struct{ caller, rule string }{
		// The three callers against a rule on +15550001111.
		{"+15550001111", "numbers"},
		{"tel:+15550001111", "numbers"},
		{"＋１５５５０００１１１１", "numbers"},
		{"+1555\u200b0001111", "numbers"},
		{"TEL:+1-555-000-1111;ext=99", "numbers"},
		{"+١٥٥٥٠٠٠١١١١", "numbers"},
		{"+१५५५०००११११", "numbers"},
		{"\ufeff+1\u00a0555\u00a0000\u20131111", "numbers"},
		// Rule entries written as a tel: URI and in fullwidth digits.
		{"+15550007777", "numbers"},
		{"+15550008888", "numbers"},
		{"tel:+15550008888", "numbers"},
		// Prefixes.
		{"+19005550100", "prefixes"},
		{"tel:+1900-555-0100;ext=3", "prefixes"},
		{"+442079460958", "prefixes"},
		{"٠٠٤٤٢٠٧٩٤٦٠٩٥٨", "prefixes"},
		// Patterns are searched in the normalized number.
		{"+8613812345678", "patterns"},
		{"tel:+86-138-1234-5678", "patterns"},
		{"＋８６１３８１２３４５６７８", "patterns"},
		{"+86138\u200b12345678", "patterns"},
		// List entries written every way, and callers written another.
		{"+15550005555", "lists"},
		{"+15550002222", "lists"},
		{"+15550003333", "lists"},
		{"tel:+15550003333", "lists"},
		{"+15550004444", "lists"},
		{"+15550006666", "lists"},
		{"+15557770000", "lists"},
		{"+३३१२३४५६७८९", "lists"},
		// Garbage stays invalid: no number field, but still a phone caller.
		{"+1555000111l", "any-phone"},
		{"tel:", "any-phone"},
		{"tel:;ext=1", "any-phone"},
		{"sip:+15550001111", "any-phone"},
		{"+15550001111;ext=1", "any-phone"},
		{"+1555000111\u00b9", "any-phone"},
		{"+1555\t0001111", "any-phone"},
		{"+1555\xff0001111", "any-phone"},
		{"1+5550001111", "any-phone"},
		// Valid, listed nowhere.
		{"+14255550100", "any-phone"},
		{"tel:+14255550100", "any-phone"},
	}
	for _, tt := range tests {
		if d := p.Decide(phoneCall(tt.caller), wed); d.Rule != tt.rule {
			t.Errorf("caller %q: decided by rule %q, want %q", tt.caller, d.Rule, tt.rule)
		}
	}
}

// TestCallerOfNumberForms: the caller that CEL and the decision log see has
// the normalized number.
func TestCallerOfNumberForms(t *testing.T) {
	for _, in := range []string{"tel:+15550001111", "＋１５５５０００１１１１", "+1555\u200b0001111"} {
		if c := CallerOf(phoneCall(in)); c.Number != "+15550001111" || c.ID != in {
			t.Errorf("CallerOf(%q) = number %q, id %q; want +15550001111, %q", in, c.Number, c.ID, in)
		}
	}
}

// TestDecideNumberFormsAllocations: deciding a number written another way
// does not allocate when no regex or CEL needs it as a string.
func TestDecideNumberFormsAllocations(t *testing.T) {
	src := testSource(reject("numbers", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550001111"}})))
	p := mustCompile(t, src)
	for _, in := range []string{"+15550001111", "+1 (555) 000-1111", "tel:+1-555-000-1111;ext=1",
		"＋１５５５０００１１１１", "+1555\u200b0001111", "+١٥٥٥٠٠٠١١١١"} {
		call := phoneCall(in)
		if d := p.Decide(call, wed); d.Rule != "numbers" {
			t.Fatalf("caller %q: rule %q, want numbers", in, d.Rule)
		}
		if n := testing.AllocsPerRun(100, func() { p.Decide(call, wed) }); n != 0 {
			t.Errorf("Decide(%q) allocates %v times", in, n)
		}
	}
}
