//go:build release

// Package release checks a snapshot of the release (hack/release.sh VERSION
// --snapshot): the images as OCI layouts, the plugin archives and their
// checksums, the krew manifest, the chart package and install.yaml.
//
// It needs ko, crane, helm and kustomize (KO, CRANE, HELM, KUSTOMIZE), and
// the build tag release, so that `go test ./...` does not build the release:
// `make test-release` (part of `make test`) builds the tools and runs it.
package release

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	version   = "v0.0.0-snapshot"
	imageRepo = "ghcr.io/callguard"
)

// The snapshot's plugin platforms: RELEASE_PLUGIN_PLATFORMS (os/arch, space
// separated), by default the images' two, whose dependencies those builds
// have compiled already: another OS costs `make test` minutes on two cores
// (docs/benchmarks.md, "Release snapshot"). The darwin and windows checks
// below run with e.g. RELEASE_PLUGIN_PLATFORMS="linux/amd64 darwin/arm64
// windows/amd64" make test-release.
var pluginPlatforms = strings.Fields(cmp.Or(os.Getenv("RELEASE_PLUGIN_PLATFORMS"), "linux/amd64 linux/arm64"))

var imagePlatforms = []string{"linux/amd64", "linux/arm64"}

func TestSnapshot(t *testing.T) {
	if os.Getenv("KO") == "" {
		t.Fatal("KO not set: run `make test-release` (part of `make test`), which builds the tools this needs")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "hack/release.sh"), version, "--snapshot")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "OUT="+out, "IMAGE_REPO="+imageRepo,
		"PLUGIN_PLATFORMS="+strings.Join(pluginPlatforms, " "))
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		t.Fatalf("hack/release.sh: %v\n%s", err, log.String())
	}

	var manager string
	t.Run("images", func(t *testing.T) {
		manager = checkImage(t, filepath.Join(out, "images/callguard"), []string{"manager", "receiver"}, "/ko-app/manager")
		checkImage(t, filepath.Join(out, "images/callguard-receiver"), []string{"receiver"}, "/ko-app/receiver")
	})
	sums := checksums(t, out)
	t.Run("archives", func(t *testing.T) { checkArchives(t, out, sums) })
	t.Run("krew", func(t *testing.T) { checkKrew(t, out, sums) })
	t.Run("chart", func(t *testing.T) { checkChart(t, out) })
	t.Run("install.yaml", func(t *testing.T) {
		if manager == "" {
			t.Skip("no manager image")
		}
		checkInstall(t, out, manager)
	})
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform,omitempty"`
}

type index struct {
	Manifests []descriptor `json:"manifests"`
}

type manifest struct {
	Config descriptor   `json:"config"`
	Layers []descriptor `json:"layers"`
}

type configFile struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Config       struct {
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
	} `json:"config"`
}

// blob reads a blob of an OCI layout and checks it against its descriptor.
func blob(t *testing.T, layout string, d descriptor) []byte {
	t.Helper()
	alg, hexDigest, ok := strings.Cut(d.Digest, ":")
	if !ok || alg != "sha256" {
		t.Fatalf("descriptor digest %q: want sha256:…", d.Digest)
	}
	b, err := os.ReadFile(filepath.Join(layout, "blobs", alg, hexDigest))
	if err != nil {
		t.Fatalf("blob %s: %v", d.Digest, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexDigest {
		t.Fatalf("blob %s: its sha256 is %x", d.Digest, sum)
	}
	if int64(len(b)) != d.Size {
		t.Fatalf("blob %s: %d bytes, its descriptor says %d", d.Digest, len(b), d.Size)
	}
	return b
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// checkImage checks an OCI layout holding one multi-platform image index:
// every blob there by digest, a manifest per image platform, and in each the
// binaries for its architecture at /ko-app/NAME with /NAME linking there. It
// returns the index's digest.
func checkImage(t *testing.T, layout string, bins []string, entrypoint string) string {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(layout, "oci-layout")); err != nil || !bytes.Contains(b, []byte(`"imageLayoutVersion"`)) {
		t.Fatalf("%s: no oci-layout (%v)", layout, err)
	}
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var top index
	unmarshal(t, b, &top)
	if len(top.Manifests) != 1 || !strings.HasSuffix(top.Manifests[0].MediaType, "image.index.v1+json") {
		t.Fatalf("%s/index.json: want one image index, got %+v", layout, top.Manifests)
	}
	var idx index
	unmarshal(t, blob(t, layout, top.Manifests[0]), &idx)
	var platforms []string
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			t.Fatalf("%s: manifest %s without a platform", layout, d.Digest)
		}
		p := d.Platform.OS + "/" + d.Platform.Architecture
		platforms = append(platforms, p)
		var m manifest
		unmarshal(t, blob(t, layout, d), &m)
		var cfg configFile
		unmarshal(t, blob(t, layout, m.Config), &cfg)
		if cfg.OS+"/"+cfg.Architecture != p {
			t.Errorf("%s %s: config says %s/%s", layout, p, cfg.OS, cfg.Architecture)
		}
		if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{entrypoint}) {
			t.Errorf("%s %s: user %q, entrypoint %q; want 65532:65532, [%s]", layout, p, cfg.Config.User, cfg.Config.Entrypoint, entrypoint)
		}
		files := map[string][]byte{}
		links := map[string]string{}
		for _, l := range m.Layers {
			readLayer(t, blob(t, layout, l), files, links)
		}
		for _, bin := range bins {
			exe, ok := files["ko-app/"+bin]
			if !ok {
				t.Errorf("%s %s: no /ko-app/%s", layout, p, bin)
				continue
			}
			if got := elfArch(t, exe); got != d.Platform.Architecture {
				t.Errorf("%s %s: /ko-app/%s is for %s", layout, p, bin, got)
			}
			if links[bin] != "/ko-app/"+bin {
				t.Errorf("%s %s: /%s links to %q, want /ko-app/%s", layout, p, bin, links[bin], bin)
			}
		}
		if _, ok := files["etc/ssl/certs/ca-certificates.crt"]; !ok {
			t.Errorf("%s %s: no CA bundle", layout, p)
		}
		if !bytes.Contains(files["etc/passwd"], []byte("nonroot:x:65532:65532:")) {
			t.Errorf("%s %s: no nonroot user in /etc/passwd", layout, p)
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, imagePlatforms) {
		t.Errorf("%s: platforms %v, want %v", layout, platforms, imagePlatforms)
	}
	return top.Manifests[0].Digest
}

// readLayer adds a gzipped tar layer's regular files and symlinks (by path
// without the leading / or ./) to files and links; later layers win.
func readLayer(t *testing.T, b []byte, files map[string][]byte, links map[string]string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		switch h.Typeflag {
		case tar.TypeReg:
			if files[name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			links[name] = h.Linkname
		}
	}
}

func elfArch(t *testing.T, b []byte) string {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not an ELF binary: %v", err)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return f.Machine.String()
}

// checksums reads checksums.txt and checks every file it lists.
func checksums(t *testing.T, out string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		sum, name, ok := strings.Cut(s.Text(), "  ")
		if !ok {
			t.Fatalf("checksums.txt: %q", s.Text())
		}
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			t.Errorf("checksums.txt: %s is %x, not %s", name, got, sum)
		}
		sums[name] = sum
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range append(archives(), "callguard-"+strings.TrimPrefix(version, "v")+".tgz", "install.yaml", "callpolicy.yaml") {
		if _, ok := sums[name]; !ok {
			t.Errorf("checksums.txt lists no %s", name)
		}
	}
	return sums
}

func archive(platform string) string {
	goos, goarch, _ := strings.Cut(platform, "/")
	if goos == "windows" {
		return "kubectl-callpolicy_" + goos + "_" + goarch + ".zip"
	}
	return "kubectl-callpolicy_" + goos + "_" + goarch + ".tar.gz"
}

func archives() []string {
	var names []string
	for _, p := range pluginPlatforms {
		names = append(names, archive(p))
	}
	return names
}

// checkArchives checks that each archive holds the plugin for its platform,
// and runs the one for this machine's.
func checkArchives(t *testing.T, out string, sums map[string]string) {
	for _, p := range pluginPlatforms {
		goos, goarch, _ := strings.Cut(p, "/")
		exe := "kubectl-callpolicy"
		if goos == "windows" {
			exe += ".exe"
		}
		b := extract(t, filepath.Join(out, archive(p)), exe)
		var got string
		switch goos {
		case "linux":
			got = elfArch(t, b)
		case "darwin":
			f, err := macho.NewFile(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("%s: %v", archive(p), err)
			}
			got = map[macho.Cpu]string{macho.CpuAmd64: "amd64", macho.CpuArm64: "arm64"}[f.Cpu]
		case "windows":
			f, err := pe.NewFile(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("%s: %v", archive(p), err)
			}
			got = map[uint16]string{pe.IMAGE_FILE_MACHINE_AMD64: "amd64", pe.IMAGE_FILE_MACHINE_ARM64: "arm64"}[f.Machine]
		}
		if got != goarch {
			t.Errorf("%s holds a binary for %s/%q", archive(p), goos, got)
		}
		if p != runtime.GOOS+"/"+runtime.GOARCH {
			continue
		}
		bin := filepath.Join(t.TempDir(), exe)
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		v, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(v), "kubectl-callpolicy "+version+" ") {
			t.Errorf("kubectl-callpolicy version: %q (%v); want it to start with the release's version", v, err)
		}
	}
}

// extract returns the file name from a .tar.gz or .zip archive, which must
// hold nothing else.
func extract(t *testing.T, archivePath, name string) []byte {
	t.Helper()
	if strings.HasSuffix(archivePath, ".zip") {
		zr, err := zip.OpenReader(archivePath)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		if len(zr.File) != 1 || zr.File[0].Name != name {
			t.Fatalf("%s: want just %s", archivePath, name)
		}
		r, err := zr.File[0].Open()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b, err := os.ReadFile(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	files, links := map[string][]byte{}, map[string]string{}
	readLayer(t, b, files, links)
	if len(files) != 1 || len(links) != 0 || files[name] == nil {
		t.Fatalf("%s: want just %s, got %d files", archivePath, name, len(files))
	}
	return files[name]
}

type krewPlugin struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version   string `json:"version"`
		Platforms []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Bin    string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

// checkKrew checks the rendered krew manifest: the version, one platform per
// archive built, each URI under the release's download path and each sha256
// the archive's.
func checkKrew(t *testing.T, out string, sums map[string]string) {
	b, err := os.ReadFile(filepath.Join(out, "callpolicy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var p krewPlugin
	if err := yaml.UnmarshalStrict(b, &p); err != nil && !strings.Contains(err.Error(), "unknown field") {
		t.Fatal(err)
	}
	if p.Metadata.Name != "callpolicy" || p.Spec.Version != version {
		t.Errorf("krew manifest: name %q, version %q; want callpolicy, %s", p.Metadata.Name, p.Spec.Version, version)
	}
	var got []string
	for _, pl := range p.Spec.Platforms {
		plat := pl.Selector.MatchLabels["os"] + "/" + pl.Selector.MatchLabels["arch"]
		got = append(got, plat)
		want := "https://github.com/callguard/callguard/releases/download/" + version + "/" + archive(plat)
		if pl.URI != want {
			t.Errorf("krew %s: uri %s, want %s", plat, pl.URI, want)
		}
		if strings.Trim(pl.SHA256, "0") == "" || pl.SHA256 != sums[archive(plat)] {
			t.Errorf("krew %s: sha256 %q, want the archive's %q", plat, pl.SHA256, sums[archive(plat)])
		}
	}
	if !slices.Equal(got, pluginPlatforms) {
		t.Errorf("krew manifest platforms %v, want %v (the archives built)", got, pluginPlatforms)
	}
}

// checkChart checks the chart package's version, appVersion and default image.
func checkChart(t *testing.T, out string) {
	b, err := os.ReadFile(filepath.Join(out, "callguard-"+strings.TrimPrefix(version, "v")+".tgz"))
	if err != nil {
		t.Fatal(err)
	}
	files, links := map[string][]byte{}, map[string]string{}
	readLayer(t, b, files, links)
	var chart struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(files["callguard/Chart.yaml"], &chart); err != nil {
		t.Fatal(err)
	}
	if chart.Version != strings.TrimPrefix(version, "v") || chart.AppVersion != version {
		t.Errorf("Chart.yaml: version %q, appVersion %q; want %s, %s", chart.Version, chart.AppVersion, strings.TrimPrefix(version, "v"), version)
	}
	var values struct {
		Image struct {
			Repository string `json:"repository"`
			Tag        string `json:"tag"`
		} `json:"image"`
	}
	if err := yaml.Unmarshal(files["callguard/values.yaml"], &values); err != nil {
		t.Fatal(err)
	}
	if values.Image.Repository != imageRepo+"/callguard" || values.Image.Tag != "" {
		t.Errorf("values.yaml: image %q tag %q; want %s/callguard, the appVersion", values.Image.Repository, values.Image.Tag, imageRepo)
	}
	if _, ok := files["callguard/files/crds/calls.callguard.dev_callpolicies.yaml"]; !ok {
		t.Errorf("the chart package has no CRD")
	}
}

// checkInstall checks that install.yaml runs the manager, and the receivers by
// default, from the release's image by digest.
func checkInstall(t *testing.T, out, digest string) {
	b, err := os.ReadFile(filepath.Join(out, "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	image := fmt.Sprintf("%s/callguard:%s@%s", imageRepo, version, digest)
	if n := strings.Count(string(b), image); n != 2 {
		t.Errorf("install.yaml names %s %d times, want 2 (the manager's image and RECEIVER_IMAGE)", image, n)
	}
	if strings.Contains(string(b), "controller:latest") || strings.Contains(string(b), "callguard:dev") {
		t.Errorf("install.yaml still names a development image")
	}
	if !bytes.Contains(b, []byte("kind: CustomResourceDefinition")) {
		t.Errorf("install.yaml has no CRD")
	}
}
