package receiver

import "testing"

func TestGCSettings(t *testing.T) {
	tests := []struct {
		name        string
		env         map[string]string
		limit       int64
		wantPercent int
		wantLimit   int64
	}{
		{name: "defaults, no container limit", wantPercent: GCPercent},
		{name: "defaults in a 256Mi container", limit: 256 << 20, wantPercent: GCPercent, wantLimit: 241591910},
		{name: "GOGC set", env: map[string]string{"GOGC": "100"}, limit: 256 << 20, wantLimit: 241591910},
		{name: "GOMEMLIMIT set", env: map[string]string{"GOMEMLIMIT": "100MiB"}, limit: 256 << 20, wantPercent: GCPercent},
		{name: "both set", env: map[string]string{"GOGC": "off", "GOMEMLIMIT": "1GiB"}, limit: 256 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, l := gcSettings(func(k string) string { return tt.env[k] }, tt.limit)
			if p != tt.wantPercent || l != tt.wantLimit {
				t.Errorf("gcSettings = %d, %d; want %d, %d", p, l, tt.wantPercent, tt.wantLimit)
			}
		})
	}
}

func TestParseCgroupLimit(t *testing.T) {
	for in, want := range map[string]int64{
		"268435456\n":           268435456,
		"max\n":                 0,
		"9223372036854771712\n": 0, // cgroup v1's "unlimited"
		"":                      0,
		"-1":                    0,
		"12x":                   0,
	} {
		if got := parseCgroupLimit(in); got != want {
			t.Errorf("parseCgroupLimit(%q) = %d, want %d", in, got, want)
		}
	}
}
