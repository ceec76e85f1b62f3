package wav

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	good := Tone(1500 * time.Millisecond)
	set16 := func(off int, v uint16) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint16(b[off:], v)
		return b
	}
	set32 := func(off int, v uint32) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want string // "" valid
	}{
		{"tone", good, ""},
		{"empty", nil, "not a RIFF/WAVE"},
		{"mp3", []byte("ID3\x03\x00\x00\x00\x00\x00\x00\x00\x00"), "not a RIFF/WAVE"},
		{"float", set16(20, 3), "audio format 3 at byte 20"},
		{"stereo", set16(22, 2), "2 channels at byte 22"},
		{"8 kHz", set32(24, 8000), "sample rate 8000 Hz at byte 24"},
		{"8-bit", set16(34, 8), "8 bits per sample at byte 34"},
		{"truncated data", set32(40, 1<<30), `chunk "data" at byte 36`},
		{"too big", append(Tone(0), make([]byte, MaxSize)...), "over the"},
		{"no data", good[:36], "no data chunk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := Check(tt.in)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				if info.Duration != 1500*time.Millisecond {
					t.Errorf("duration %v, want 1.5s", info.Duration)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Check: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func FuzzCheck(f *testing.F) {
	f.Add(Tone(10 * time.Millisecond))
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVEdata\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := Check(b)
		if err == nil && info.DataBytes > len(b) {
			t.Fatalf("data %d bytes in a %d-byte file", info.DataBytes, len(b))
		}
	})
}
