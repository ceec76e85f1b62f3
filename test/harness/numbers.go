package harness

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/internal/policy"
)

// NumberListKey is the binaryData key NumberListConfigMap writes.
const NumberListKey = "numbers.txt.gz"

// RandomNumbers returns n random North American E.164 numbers
// (+1NXXNXXXXXX), the same ones for the same seed.
func RandomNumbers(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 0x5ca1e))
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("+1%03d%07d", 201+r.IntN(799), r.IntN(1e7))
	}
	return out
}

// NumberListConfigMap is a number list as a user keeps a large one: the
// numbers gzipped under binaryData[NumberListKey] (about a megabyte for
// 170,000 random numbers).
func NumberListConfigMap(ns, name string, numbers []string) *corev1.ConfigMap {
	var text strings.Builder
	for _, n := range numbers {
		text.WriteString(n)
		text.WriteByte('\n')
	}
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		BinaryData: map[string][]byte{NumberListKey: policy.Gzip([]byte(text.String()))},
	}
}

// ProcessMemory returns a process's resident set now and at its peak
// (VmRSS, VmHWM), in MiB, from /proc; 0 when it cannot be read.
func ProcessMemory(pid int) (rss, peak float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	field := func(name string) float64 {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				return kb / 1024
			}
		}
		return 0
	}
	return field("VmRSS"), field("VmHWM")
}

// ProcessesWith returns the pids of this machine's processes whose command
// line (NUL-separated) contains every one of args: the local cluster's
// containers are processes of this machine.
func ProcessesWith(args ...string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		match := true
		for _, a := range args {
			match = match && strings.Contains(string(b), a)
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); match && err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
