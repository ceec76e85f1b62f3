package policy

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// MaxListBytes bounds the decompressed text of one gzip-compressed number
// list. A million entries of E.164 numbers take about 14 MB, so the bound
// leaves room for comments while refusing a gzip bomb before it fills the
// memory of the operator, the receiver or the plugin.
const MaxListBytes = 64 << 20

// GzipSuffix marks a binaryData key that holds a gzip-compressed number list.
const GzipSuffix = ".gz"

// ListText returns the number list text that key names in a ConfigMap with
// these data and binaryData maps, as docs/matching.md says: data holds text;
// binaryData holds text, or gzip-compressed text when key ends in ".gz",
// which is decompressed up to MaxListBytes. found is false when neither map
// has key. The operator, the --policy-file loader and the kubectl plugin all
// read lists through it, so a list means the same everywhere. Errors name
// the ConfigMap and the key.
func ListText(configMap, key string, data map[string]string, binaryData map[string][]byte) (text string, found bool, err error) {
	if t, ok := data[key]; ok {
		return t, true, nil
	}
	b, ok := binaryData[key]
	if !ok {
		return "", false, nil
	}
	if !strings.HasSuffix(key, GzipSuffix) {
		return string(b), true, nil
	}
	t, err := gunzipList(b, MaxListBytes)
	if err != nil {
		return "", true, fmt.Errorf("ConfigMap %q key %q: %w", configMap, key, err)
	}
	return t, true, nil
}

// gunzipList decompresses a gzip stream (several members are read as one, as
// gzip -d does) of at most limit bytes.
func gunzipList(b []byte, limit int64) (string, error) {
	text, _, err := gunzipParts([][]byte{b}, limit)
	return text, err
}

// gunzipParts decompresses a gzip stream held in parts, in order, of at most
// limit bytes, and returns the text with its SHA-256. The parts are read
// where they are and the text hashed as it is written, so that a list of
// 14 MB costs 14 MB, not twice or three times that.
func gunzipParts(parts [][]byte, limit int64) (text string, sum [sha256.Size]byte, err error) {
	readers := make([]io.Reader, len(parts))
	for i, p := range parts {
		readers[i] = bytes.NewReader(p)
	}
	zr, err := gzip.NewReader(io.MultiReader(readers...))
	if err != nil {
		return "", sum, fmt.Errorf("a key ending in %s must hold gzip-compressed text: %w", GzipSuffix, err)
	}
	var out strings.Builder
	// The trailer's ISIZE is the (last member's) length mod 2^32: a hint
	// that saves regrowing, trusted only up to the limit.
	if last := parts[len(parts)-1]; len(last) >= 4 {
		if size := int64(binary.LittleEndian.Uint32(last[len(last)-4:])); size <= limit {
			out.Grow(int(size))
		}
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&out, h), io.LimitReader(zr, limit+1))
	switch {
	case err != nil:
		return "", sum, fmt.Errorf("corrupt gzip data: %w", err)
	case n > limit:
		return "", sum, fmt.Errorf("decompresses to more than %d MiB, the limit for one number list", limit>>20)
	}
	h.Sum(sum[:0])
	return out.String(), sum, nil
}

// sha256String hashes s without copying it whole ([]byte(s) would, for a
// list of 14 MB).
func sha256String(s string) [sha256.Size]byte {
	h := sha256.New()
	var buf [32 << 10]byte
	for len(s) > 0 {
		n := copy(buf[:], s)
		h.Write(buf[:n])
		s = s[n:]
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// Gzip compresses b as one gzip member with no name and no time, so the same
// input gives the same bytes: the form of the resolved policy's lists and of
// a binaryData number list ending in .gz.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	// Writes to a bytes.Buffer do not fail.
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}
