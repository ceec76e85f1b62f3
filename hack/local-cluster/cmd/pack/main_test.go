package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDynamicBinaryNeedsItsLoader packs a dynamically linked binary of the
// host: refused without its loader, packed with the loader and libraries
// ldd names, each at its own path and owned by root.
func TestDynamicBinaryNeedsItsLoader(t *testing.T) {
	bin := "/bin/true"
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	var files []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			files = append(files, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			files = append(files, f[0])
		}
	}
	if len(files) < 2 {
		t.Fatalf("ldd %s named %v, want the loader and libc", bin, files)
	}
	if _, err := buildLayer([]string{bin}, nil, ""); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("without --file: err = %v, want dynamically linked", err)
	}
	if _, err := buildLayer([]string{bin}, []string{"lib/relative.so"}, ""); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative --file: err = %v, want an absolute path error", err)
	}
	layer, err := buildLayer([]string{bin}, files, "")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for _, f := range files {
		rel := strings.TrimPrefix(filepath.Clean(f), "/")
		h, ok := got[rel]
		if !ok {
			t.Errorf("%s is not in the layer", rel)
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg || h.Size != st.Size() || h.Uid != 0 {
			t.Errorf("%s: type %c, size %d (want %d), uid %d", rel, h.Typeflag, h.Size, st.Size(), h.Uid)
		}
		if d := filepath.Dir(rel) + "/"; got[d] == nil || got[d].Typeflag != tar.TypeDir {
			t.Errorf("directory %s of %s is not in the layer", d, rel)
		}
	}
	if h := got["true"]; h == nil || h.Uid != nonroot || h.Mode != 0o755 {
		t.Errorf("the binary /true: %+v", h)
	}
}
