package policycli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time:
// -ldflags "-X github.com/callguard/callguard/internal/policycli.version=v0.1.0".
// Without it the module version `go install` recorded is used.
var version string

const versionSynopsis = `Print the plugin's version.

Usage:
  kubectl callpolicy version
`

// Version is the plugin's version: the one set at build time, else the
// module's, else "(devel)" with the VCS revision when known.
func Version() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	v := "(devel)"
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "-dirty"
		}
	}
	return v
}

func runVersion(s streams, args []string) int {
	c := newCommand(s, "version", versionSynopsis, false)
	if code, ok := c.parseNoArgs(args); !ok {
		return code
	}
	if _, err := fmt.Fprintf(s.stdout, "kubectl-callpolicy %s %s %s/%s\n", Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH); err != nil {
		return exitError
	}
	return exitOK
}
