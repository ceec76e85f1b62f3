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
	)
	flag.Var(&args, "arg", "argument appended to the entrypoint (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: pack --tag REF --out FILE.tar [--entrypoint /BIN] [--arg A]... BINARY...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *tag == "" || *out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := pack(*tag, *out, *entrypoint, *user, *caBundle, args, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "pack: %v\n", err)
		os.Exit(1)
	}
}

func pack(tag, out, entrypoint, user, caBundle string, args, bins []string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	layer, err := buildLayer(bins, caBundle)
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
// at the root plus the few files a static image needs.
func buildLayer(bins []string, caBundle string) (v1.Layer, error) {
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
		if err := checkStatic(b); err != nil {
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

// checkStatic fails for an ELF binary that needs a dynamic loader: the image
// has no libc. (Build with CGO_ENABLED=0.)
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}
