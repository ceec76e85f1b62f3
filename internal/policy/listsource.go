package policy

import (
	"bytes"
	"compress/gzip"
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
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("a key ending in %s must hold gzip-compressed text: %w", GzipSuffix, err)
	}
	var out strings.Builder
	// The trailer's ISIZE is the (last member's) length mod 2^32: a hint
	// that saves regrowing, trusted only up to the limit.
	if len(b) >= 4 {
		if size := int64(binary.LittleEndian.Uint32(b[len(b)-4:])); size <= limit {
			out.Grow(int(size))
		}
	}
	n, err := io.Copy(&out, io.LimitReader(zr, limit+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("corrupt gzip data: %w", err)
	case n > limit:
		return "", fmt.Errorf("decompresses to more than %d MiB, the limit for one number list", limit>>20)
	}
	return out.String(), nil
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
