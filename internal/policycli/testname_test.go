package policycli

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/internal/policy"
)

// TestTestAgainstCluster decides calls with the CallPolicy and the
// ConfigMap list as they are in the cluster: the same output as the
// offline form with the same policy in files.
func TestTestAgainstCluster(t *testing.T) {
	cluster(t)
	ns := newNamespace(t)
	spec, lists := sampleSpec(t)
	list := lists[policy.ListRef{Name: "robocallers", Key: "numbers.txt"}]
	create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "robocallers"}, Data: map[string]string{"numbers.txt": list}})
	callPolicy(t, ns, "hotline", spec, "", "")
	// The same policy where its list is missing.
	bare := newNamespace(t)
	callPolicy(t, bare, "hotline", spec, "", "")

	same := []struct {
		name string
		args []string
	}{
		{"number on the list", []string{"--number", "+1 (206) 555-0123"}},
		{"prefix on the list", []string{"--number", "+18095550000"}},
		{"premium rate", []string{"--number", "+19005550100"}},
		{"default, table", []string{"--number", "+14255550111", "-o", "table"}},
		{"notification", []string{"--notification", "testdata/two-calls.json", "--at", "2026-03-04T12:00:00Z"}},
		{"call after hours", []string{"--notification", "testdata/seed-notification.json", "--at", "2026-03-04T19:00:00-08:00"}},
	}
	for _, tt := range same {
		t.Run(tt.name, func(t *testing.T) {
			offline := append([]string{"test", "-f", sample}, tt.args...)
			code, want, stderr := kubectl(t, context.Background(), offline...)
			if code != 0 || want == "" {
				t.Fatalf("offline: exit %d, stdout %q, stderr %s", code, want, stderr)
			}
			live := append([]string{"test", "hotline", "-n", ns}, tt.args...)
			code, got, stderr := kubectl(t, context.Background(), live...)
			if code != 0 || got != want || stderr != "" {
				t.Errorf("exit %d\nstdout:\n%s\nwant (offline):\n%s\nstderr: %s", code, got, want, stderr)
			}
		})
	}
	if code, got, _ := kubectl(t, context.Background(), "test", "hotline", "-n", ns, "--number", "+12065550124"); code != 0 ||
		got != `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"robocallers","mode":"Enforce"}`+"\n" {
		t.Errorf("exit %d, stdout %s", code, got)
	}

	fails := []struct {
		name      string
		args      []string
		code      int
		stderrHas string
	}{
		// A policy that does not compile is 2, like test -f; every other
		// error is kubectl's 1.
		{"list missing", []string{"test", "hotline", "-n", bare, "--number", "+1"}, 2, "error: CallPolicy " + bare + "/hotline: spec.rules[2].match.callers.numberLists[0]: configmap robocallers key numbers.txt: not found"},
		{"no such policy", []string{"test", "nope", "-n", ns, "--number", "+1"}, 1, `error: CallPolicy "nope" not found in namespace "` + ns + `"`},
		{"name and files", []string{"test", "-f", sample, "hotline", "--number", "+1"}, 1, `unexpected argument "hotline"`},
		{"two names", []string{"test", "hotline", "other", "--number", "+1"}, 1, `unexpected argument "other"`},
		{"no input", []string{"test", "hotline", "-n", ns}, 1, "exactly one of --notification, --number or --call"},
	}
	for _, tt := range fails {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := kubectl(t, context.Background(), tt.args...)
			if code != tt.code || stdout != "" || !strings.Contains(stderr, tt.stderrHas) {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit %d and:\n%s", code, stdout, stderr, tt.code, tt.stderrHas)
			}
		})
	}
}

// TestTestAgainstClusterGzipList: `test NAME` reads a list from a binaryData
// key ending in .gz and decides the mixed number fields as the offline form
// does; a list that decompresses past the bound is refused, naming it.
func TestTestAgainstClusterGzipList(t *testing.T) {
	cluster(t)
	b, err := policy.LoadFiles(mixed)
	if err != nil {
		t.Fatal(err)
	}
	spec := b.Source.Spec
	feed := policy.ListRef{Name: "feed", Key: "numbers.txt.gz"}
	local := policy.ListRef{Name: "local", Key: "numbers.txt"}
	lists := func(ns string, feedGz []byte) {
		create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: feed.Name}, BinaryData: map[string][]byte{feed.Key: feedGz}})
		create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: local.Name}, Data: map[string]string{local.Key: b.Source.Lists[local]}})
	}
	ns := newNamespace(t)
	lists(ns, policy.Gzip([]byte(b.Source.Lists[feed])))
	callPolicy(t, ns, "mixed", spec, "", "")

	for _, number := range []string{"+14255550100", "+19005550000", "+442071234567", "+13125550111", "+12065550000", "+15035550199", "+4420712345678", "+15555550100"} {
		t.Run(number, func(t *testing.T) {
			code, want, stderr := kubectl(t, context.Background(), "test", "-f", mixed, "--number", number)
			if code != 0 || want == "" {
				t.Fatalf("offline: exit %d, stdout %q, stderr %s", code, want, stderr)
			}
			code, got, stderr := kubectl(t, context.Background(), "test", "mixed", "-n", ns, "--number", number)
			if code != 0 || got != want || stderr != "" {
				t.Errorf("exit %d\nstdout:\n%s\nwant (offline):\n%s\nstderr: %s", code, got, want, stderr)
			}
		})
	}

	bomb := newNamespace(t)
	lists(bomb, policy.Gzip([]byte(strings.Repeat("\n", policy.MaxListBytes+1))))
	callPolicy(t, bomb, "mixed", spec, "", "")
	code, stdout, stderr := kubectl(t, context.Background(), "test", "mixed", "-n", bomb, "--number", "+1")
	if want := `ConfigMap "feed" key "numbers.txt.gz": decompresses to more than 64 MiB`; code != 2 || stdout != "" || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %s", code, stdout, stderr, want)
	}
}
