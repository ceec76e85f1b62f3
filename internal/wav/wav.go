// Package wav checks that a file is an announcement Graph can play: a
// RIFF/WAVE file of PCM audio, 1 channel, 16,000 Hz, 16-bit, at most 2 MiB.
package wav

import (
	"encoding/binary"
	"fmt"
	"time"
)

// MaxSize is the largest prompt Graph plays.
const MaxSize = 2 << 20

// Format is what Graph plays.
const (
	SampleRate    = 16000
	Channels      = 1
	BitsPerSample = 16
)

// Info describes a valid prompt.
type Info struct {
	// Duration is how long it plays.
	Duration time.Duration
	// DataBytes is the size of its samples.
	DataBytes int
}

// Check reads b as a WAV file and reports what is wrong with it for Graph,
// naming the byte offset where it can.
func Check(b []byte) (Info, error) {
	if len(b) > MaxSize {
		return Info{}, fmt.Errorf("%d bytes, over the %d-byte (2 MiB) limit", len(b), MaxSize)
	}
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return Info{}, fmt.Errorf("not a RIFF/WAVE file (bytes 0-11)")
	}
	var (
		haveFmt bool
		info    Info
	)
	for off := 12; off+8 <= len(b); {
		id := string(b[off : off+4])
		size := int(binary.LittleEndian.Uint32(b[off+4 : off+8]))
		body := off + 8
		if size < 0 || size > len(b)-body {
			return Info{}, fmt.Errorf("chunk %q at byte %d: size %d runs past the end of the file", id, off, size)
		}
		switch id {
		case "fmt ":
			if size < 16 {
				return Info{}, fmt.Errorf("fmt chunk at byte %d: %d bytes, want at least 16", off, size)
			}
			f := b[body : body+size]
			format := binary.LittleEndian.Uint16(f[0:2])
			channels := binary.LittleEndian.Uint16(f[2:4])
			rate := binary.LittleEndian.Uint32(f[4:8])
			bits := binary.LittleEndian.Uint16(f[14:16])
			// WAVE_FORMAT_EXTENSIBLE carries the real format in its sub-format GUID.
			if format == 0xFFFE && size >= 26 {
				format = binary.LittleEndian.Uint16(f[24:26])
			}
			switch {
			case format != 1:
				return Info{}, fmt.Errorf("audio format %d at byte %d, want 1 (PCM)", format, body)
			case channels != Channels:
				return Info{}, fmt.Errorf("%d channels at byte %d, want 1 (mono)", channels, body+2)
			case rate != SampleRate:
				return Info{}, fmt.Errorf("sample rate %d Hz at byte %d, want 16000", rate, body+4)
			case bits != BitsPerSample:
				return Info{}, fmt.Errorf("%d bits per sample at byte %d, want 16", bits, body+14)
			}
			haveFmt = true
		case "data":
			if !haveFmt {
				return Info{}, fmt.Errorf("data chunk at byte %d comes before the fmt chunk", off)
			}
			info.DataBytes = size
			info.Duration = time.Duration(size/2) * time.Second / SampleRate
			return info, nil
		}
		// Chunks are padded to an even size.
		off = body + size + size&1
	}
	if !haveFmt {
		return Info{}, fmt.Errorf("no fmt chunk")
	}
	return Info{}, fmt.Errorf("no data chunk")
}

// Tone is a valid prompt of the given length: a quiet 440 Hz square wave,
// for samples, tests and the demo.
func Tone(d time.Duration) []byte {
	n := int(d * SampleRate / time.Second)
	b := make([]byte, 44+2*n)
	copy(b[0:], "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+2*n))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)
	binary.LittleEndian.PutUint16(b[20:], 1)
	binary.LittleEndian.PutUint16(b[22:], Channels)
	binary.LittleEndian.PutUint32(b[24:], SampleRate)
	binary.LittleEndian.PutUint32(b[28:], SampleRate*2)
	binary.LittleEndian.PutUint16(b[32:], 2)
	binary.LittleEndian.PutUint16(b[34:], BitsPerSample)
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], uint32(2*n))
	for i := 0; i < n; i++ {
		v := int16(2000)
		if (i*440*2/SampleRate)%2 == 1 {
			v = -2000
		}
		binary.LittleEndian.PutUint16(b[44+2*i:], uint16(v))
	}
	return b
}
