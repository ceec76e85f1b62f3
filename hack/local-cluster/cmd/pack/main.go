// Command pack builds a container image from static binaries without Docker
// or a registry, and writes it as a docker-archive tarball that
// `ctr images import` loads:
//
//	pack --tag callguard:dev --out callguard.tar --entrypoint /manager bin/manager bin/receiver
//
// Each binary lands at /<basename>, owned by 65532:65532 (the "nonroot" user
// of distroless, which the Dockerfile uses) with mode 0755. The image also has
// /tmp (1777), a minimal /etc/passwd and /etc/group, and the host's CA bundle
// at /etc/ssl/certs/ca-certificates.crt when present, like
// gcr.io/distroless/static:nonroot. Timestamps are fixed, so the same binaries
// give the same image digest.
//
// A dynamically linked binary (a Debian package's, such as redis-server) is
// packed only with its loader and libraries, each given with --file PATH:
// copied from the host to the same path in the image (symlinks followed),
// owned by root. ldd lists them:
//
//	pack --tag localhost/callguard/redis:local --out redis.tar \
//	    --file /lib64/ld-linux-x86-64.so.2 --file /lib/x86_64-linux-gnu/libc.so.6 … /usr/bin/redis-server
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const nonroot = 65532

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var (
		tag        = flag.String("tag", "", "image reference to tag the image with, e.g. callguard:dev (required)")
		out        = flag.String("out", "", "path of the tarball to write (required)")
		entrypoint = flag.String("entrypoint", "", "entrypoint, e.g. /manager (default: the first binary)")
		user       = flag.String("user", fmt.Sprintf("%d:%d", nonroot, nonroot), "user:group the image runs as")
		caBundle   = flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to copy to /etc/ssl/certs/ca-certificates.crt (empty: none)")
		args       stringList
		files      stringList
	)
	flag.Var(&args, "arg", "argument appended to the entrypoint (repeatable)")
	flag.Var(&files, "file", "absolute `PATH` of a host file (a shared library, the dynamic loader) copied to the same path in the image (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: pack --tag REF --out FILE.tar [--entrypoint /BIN] [--arg A]... [--file /PATH]... BINARY...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *tag == "" || *out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := pack(*tag, *out, *entrypoint, *user, *caBundle, args, files, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "pack: %v\n", err)
		os.Exit(1)
	}
}

func pack(tag, out, entrypoint, user, caBundle string, args, files, bins []string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	layer, err := buildLayer(bins, files, caBundle)
	if err != nil {
		return err
	}
	if entrypoint == "" {
		entrypoint = "/" + filepath.Base(bins[0])
	}
	cfg := &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{entrypoint},
			Cmd:        args,
			User:       user,
			WorkingDir: "/",
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
			},
		},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{CreatedBy: "pack " + strings.Join(baseNames(bins), " "), Comment: "hack/local-cluster/cmd/pack"},
	})
	if err != nil {
		return err
	}
	img, err = mutate.CreatedAt(img, v1.Time{Time: time.Unix(0, 0).UTC()})
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", tag, digest, out)
	return nil
}

func baseNames(paths []string) []string {
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = filepath.Base(p)
	}
	return names
}

// buildLayer returns one uncompressed-in-memory tar layer holding the binaries
// at the root, the extra files at their own paths, and the few files a static
// image needs.
func buildLayer(bins, files []string, caBundle string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, uid int, data []byte) error {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)),
			Uid: uid, Gid: uid, ModTime: epoch, Format: tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"etc", "etc/ssl", "etc/ssl/certs"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonroot)
	if err := file("etc/passwd", 0o644, 0, []byte(passwd)); err != nil {
		return nil, err
	}
	if err := file("etc/group", 0o644, 0, []byte(group)); err != nil {
		return nil, err
	}
	if caBundle != "" {
		data, err := os.ReadFile(caBundle)
		switch {
		case err == nil:
			if err := file("etc/ssl/certs/ca-certificates.crt", 0o644, 0, data); err != nil {
				return nil, err
			}
		case os.IsNotExist(err):
			fmt.Fprintf(os.Stderr, "pack: no CA bundle at %s; the image has none\n", caBundle)
		default:
			return nil, err
		}
	}
	dirs := map[string]bool{"etc": true, "etc/ssl": true, "etc/ssl/certs": true, "tmp": true}
	given := map[string]bool{}
	for _, f := range files {
		if !filepath.IsAbs(f) {
			return nil, fmt.Errorf("--file %s: want an absolute path", f)
		}
		rel := strings.TrimPrefix(filepath.Clean(f), "/")
		if given[rel] {
			continue
		}
		given[rel] = true
		var parents []string
		for d := filepath.Dir(rel); d != "." && !dirs[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			if err := dir(parents[i], 0o755); err != nil {
				return nil, err
			}
		}
		st, err := os.Stat(f) // follows symlinks: the image gets the file itself
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("--file %s is not a regular file", f)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		mode := int64(0o644)
		if st.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := file(rel, mode, 0, data); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	for _, b := range bins {
		base := filepath.Base(b)
		if seen[base] {
			return nil, fmt.Errorf("two binaries named %s", base)
		}
		seen[base] = true
		st, err := os.Stat(b)
		if err != nil {
			return nil, fmt.Errorf("binary: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", b)
		}
		if err := checkLoader(b, given); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(b)
		if err != nil {
			return nil, err
		}
		if err := file(base, 0o755, nonroot, data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	})
}

// checkLoader fails for an ELF binary that needs a dynamic loader the image
// does not get with --file: without one it has no libc. (Build Go binaries
// with CGO_ENABLED=0.)
func checkLoader(path string, given map[string]bool) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		raw, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("%s: reading its interpreter: %w", path, err)
		}
		interp := strings.TrimRight(string(raw), "\x00")
		if !given[strings.TrimPrefix(filepath.Clean(interp), "/")] {
			return fmt.Errorf("%s is dynamically linked (loader %s): build it with CGO_ENABLED=0, or give the loader and its libraries with --file", path, interp)
		}
	}
	return nil
}
