package policy

import (
	"strings"
	"testing"
	"unicode"
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
		{"bare extension", "+14255550100;ext=12", "", false},
		{"plus in the middle", "1+4255550100", "", false},
		{"two pluses", "++14255550100", "", false},
		{"tab is not a separator", "+1\t425", "", false},
		{"newline is not a separator", "+1\n425", "", false},
		{"empty", "", "", false},
		{"only plus", "+", "", false},
		{"only separators", " - . ( ) ", "", false},
		{"only 00", "00", "", false},
		{"anonymous", "anonymous", "", false},

		// RFC 3966 tel: URIs.
		{"tel uri", "tel:+14255550100", "+14255550100", true},
		{"tel uri upper case", "TEL:+14255550100", "+14255550100", true},
		{"tel uri visual separators", "tel:+1-425-555-0100", "+14255550100", true},
		{"tel uri all separators", "tel:+1(425)555.0100", "+14255550100", true},
		{"tel uri extension", "tel:+1-425-555-0100;ext=12", "+14255550100", true},
		{"tel uri parameters", "tel:+14255550100;isub=7;phone-context=example.com", "+14255550100", true},
		{"tel uri with spaces around", "  tel:+1 425 555 0100 ", "+14255550100", true},
		{"tel uri after BOM", "\ufefftel:+14255550100", "+14255550100", true},
		{"tel uri with 00", "tel:0044-20-7946-0958", "+442079460958", true},
		{"tel alone", "tel:", "", false},
		{"tel only parameters", "tel:;ext=1", "", false},
		{"tel twice", "tel:tel:+14255550100", "", false},
		{"tel in the middle", "+1 tel:4255550100", "", false},
		{"tel without colon", "tel+14255550100", "", false},
		{"sip uri", "sip:+14255550100@example.com", "", false},
		{"tel letters", "tel:+1-425-CALL", "", false},

		// Unicode decimal digits, by value.
		{"fullwidth", "＋１４２５５５５０１００", "+14255550100", true},
		{"fullwidth separators", "＋１（４２５）５５５－０１００．", "+14255550100", true},
		{"fullwidth 00", "００４４２０７９４６０９５８", "+442079460958", true},
		{"arabic-indic", "+١٤٢٥٥٥٥٠١٠٠", "+14255550100", true},
		{"extended arabic-indic", "+۱۴۲۵۵۵۵۰۱۰۰", "+14255550100", true},
		{"devanagari", "+१४२५५५५०१००", "+14255550100", true},
		{"bengali", "+১৪২৫৫৫৫০১০০", "+14255550100", true},
		{"mathematical bold", "+𝟏𝟒𝟐𝟓𝟓𝟓𝟓𝟎𝟏𝟎𝟎", "+14255550100", true},
		{"scripts mixed", "+1٤२５5550100", "+14255550100", true},
		{"arabic-indic digits in an RTL run", "\u200f+١ ٤٢٥ ٥٥٥ ٠١٠٠\u200f", "+14255550100", true},
		{"superscript digit", "+1425555010²", "", false},
		{"circled digit", "+1425555010①", "", false},
		{"roman numeral", "+1Ⅳ", "", false},
		{"fullwidth letter", "+1４２５ＣＡＬＬ", "", false},
		{"fullwidth plus in the middle", "1＋4255550100", "", false},

		// Format characters dropped, Unicode spaces and dashes removed.
		{"zero-width space", "+1425\u200b5550100", "+14255550100", true},
		{"zero-width space first", "\u200b+14255550100", "+14255550100", true},
		{"BOM", "\ufeff+14255550100", "+14255550100", true},
		{"word joiner", "+1\u2060425\u20605550100", "+14255550100", true},
		{"direction marks", "\u202a+1 425\u200e555\u200f0100\u202c", "+14255550100", true},
		{"soft hyphen", "+1\u00ad425\u00ad5550100", "+14255550100", true},
		{"no-break space", "+1\u00a0425\u00a0555\u00a00100", "+14255550100", true},
		{"narrow no-break space", "+1\u202f425\u202f5550100", "+14255550100", true},
		{"ideographic space", "+1\u3000425\u30005550100", "+14255550100", true},
		{"en dash", "+1 425\u2013555\u20130100", "+14255550100", true},
		{"non-breaking hyphen", "+1\u2011425\u20115550100", "+14255550100", true},
		{"minus sign", "+1\u2212425\u22125550100", "+14255550100", true},
		{"mixed", "\ufeff tel:＋１\u00a0(٤٢٥)\u200b५५५\u20130100;ext=9", "+14255550100", true},
		{"only format characters", "\u200b\ufeff", "", false},
		{"zero-width space inside tel", "t\u200bel:+14255550100", "", false},
		{"line separator", "+1\u2028425", "", false},
		{"replacement character", "+1\ufffd425", "", false},
		{"invalid UTF-8", "+1\xff425", "", false},
		{"truncated UTF-8", "+1425\xe2\x80", "", false},
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
	for _, in := range []string{"+14255550100", "+1 (425) 555-0100", "tel:+1-425-555-0100;ext=1",
		"＋１４２５５５５０１００", "+1425\u200b5550100", "+१४२५५५५०१००"} {
		var buf numberBuf
		if n := testing.AllocsPerRun(100, func() { _, _ = appendNormalized(buf[:0], in) }); n != 0 {
			t.Errorf("appendNormalized(%q) allocates %v times", in, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizeNumber("+14255550100") }); n != 0 {
		t.Errorf("NormalizeNumber of a normalized number allocates %v times", n)
	}
}

// TestDigitValueTable checks what digitValue assumes of unicode.Nd: ranges of
// stride 1 made of whole runs of ten digits, 0 to 9.
func TestDigitValueTable(t *testing.T) {
	for _, rg := range unicode.Nd.R16 {
		if rg.Stride != 1 || (rg.Hi-rg.Lo+1)%10 != 0 {
			t.Errorf("unicode.Nd range %U..%U stride %d: not whole runs of ten", rg.Lo, rg.Hi, rg.Stride)
		}
	}
	for _, rg := range unicode.Nd.R32 {
		if rg.Stride != 1 || (rg.Hi-rg.Lo+1)%10 != 0 {
			t.Errorf("unicode.Nd range %U..%U stride %d: not whole runs of ten", rg.Lo, rg.Hi, rg.Stride)
		}
	}
	// Some zeros, whose nine successors are 1 to 9.
	for _, zero := range []rune{'0', '٠', '۰', '߀', '०', '০', '੦', '๐', '០', '᠐', '０', '𐒠', '𝟎', '𝟘', '🯰'} {
		for v := range rune(10) {
			if d, ok := digitValue(zero + v); !ok || rune(d) != v {
				t.Errorf("digitValue(%U) = %d, %v; want %d", zero+v, d, ok, v)
			}
		}
	}
	// Every decimal digit has a value; nothing else does.
	n := 0
	for r := rune(0); r <= unicode.MaxRune; r++ {
		d, ok := digitValue(r)
		if ok != unicode.Is(unicode.Nd, r) || ok && d > 9 {
			t.Fatalf("digitValue(%U) = %d, %v; unicode.Is(Nd) = %v", r, d, ok, unicode.Is(unicode.Nd, r))
		}
		if ok {
			n++
		}
	}
	if n%10 != 0 {
		t.Errorf("%d decimal digits, not a multiple of ten", n)
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
	for _, s := range []string{"+14255550100", "0044 20 7946 0958", "(425) 555-0100", "+1 425 CALL", "", "00", "+", "1+2",
		"tel:+1-425-555-0100;ext=12", "TEL:0044 20", "tel:", "tel:;x", " \ufefftel:+1", "+1;ext=1",
		"＋１４２５", "+١٤٢٥", "+۱۴۲۵", "+१४२५", "+𝟏𝟒", "+1٤२５", "+1²", "\u200f+١ ٤٢٥\u200f",
		"+1425\u200b555", "\ufeff+1", "+1\u00a0425", "+1\u2013425", "\u200b", "+1\xff", "+1425\xe2\x80"} {
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
		if len(got) > len(s)+1 {
			t.Fatalf("NormalizeNumber(%q) = %q: more than one byte longer than its input", s, got)
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
