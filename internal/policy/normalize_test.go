package policy

import (
	"strings"
	"testing"
)

func TestNormalizeNumber(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"already E.164", "+14255550100", "+14255550100", true},
		{"spaces", "+1 425 555 0100", "+14255550100", true},
		{"dashes", "+1-425-555-0100", "+14255550100", true},
		{"dots", "+1.425.555.0100", "+14255550100", true},
		{"brackets", "+1 (425) 555-0100", "+14255550100", true},
		{"leading 00", "0044 20 7946 0958", "+442079460958", true},
		{"leading 00 after brackets", "(00)44 2079460958", "+442079460958", true},
		{"missing plus", "14255550100", "+14255550100", true},
		{"plus then 00 stays", "+0044", "+0044", true},
		{"single 0 is kept", "0201234567", "+0201234567", true},
		{"letters", "+1 425 CALL NOW", "", false},
		{"tel uri", "tel:+14255550100", "", false},
		{"extension", "+14255550100;ext=12", "", false},
		{"plus in the middle", "1+4255550100", "", false},
		{"two pluses", "++14255550100", "", false},
		{"tab is not a separator", "+1\t425", "", false},
		{"empty", "", "", false},
		{"only plus", "+", "", false},
		{"only separators", " - . ( ) ", "", false},
		{"only 00", "00", "", false},
		{"anonymous", "anonymous", "", false},
		{"non-ASCII digit", "+1٤٢٥", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := NormalizeNumber(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("NormalizeNumber(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestNormalizeNumberAllocations(t *testing.T) {
	for _, in := range []string{"+14255550100", "+1 (425) 555-0100"} {
		var buf numberBuf
		if n := testing.AllocsPerRun(100, func() { _, _ = appendNormalized(buf[:0], in) }); n != 0 {
			t.Errorf("appendNormalized(%q) allocates %v times", in, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizeNumber("+14255550100") }); n != 0 {
		t.Errorf("NormalizeNumber of a normalized number allocates %v times", n)
	}
}

func TestNumberKey(t *testing.T) {
	// Leading zeros must not collide with shorter numbers.
	keys := map[uint64]string{}
	for _, d := range []string{"1", "01", "001", "10", "100", "14255550100", "014255550100", strings.Repeat("9", maxKeyDigits)} {
		k := numberKey([]byte(d))
		if prev, dup := keys[k]; dup {
			t.Errorf("numberKey(%q) == numberKey(%q)", d, prev)
		}
		keys[k] = d
		if got := keyDigits(k); got != len(d) {
			t.Errorf("keyDigits(numberKey(%q)) = %d, want %d", d, got, len(d))
		}
	}
}

func FuzzNormalizeNumber(f *testing.F) {
	for _, s := range []string{"+14255550100", "0044 20 7946 0958", "(425) 555-0100", "+1 425 CALL", "", "00", "+", "1+2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := NormalizeNumber(s)
		if !ok {
			if got != "" {
				t.Fatalf("NormalizeNumber(%q) = %q, false; want \"\" on failure", s, got)
			}
			return
		}
		if !isNormalized(got) {
			t.Fatalf("NormalizeNumber(%q) = %q: not '+' and digits", s, got)
		}
		if again, ok := NormalizeNumber(got); !ok || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, got, again, ok)
		}
		var buf numberBuf
		n, ok := appendNormalized(buf[:0], s)
		if !ok || string(n) != got {
			t.Fatalf("appendNormalized(%q) = %q, %v; NormalizeNumber gave %q", s, n, ok, got)
		}
	})
}
