package controllers

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	unrelatedCount = 200
	unrelatedSize  = 512 << 10
)

// createUnrelated creates n objects of size bytes of random data each in ns,
// none of them used by a policy, and waits until the manager's cache has
// seen every one: whatever the cache keeps of them is in memory when this
// returns.
func createUnrelated(tb testing.TB, ns string, n, size int, build func(name string, data []byte) client.Object, listKind string) {
	tb.Helper()
	ctx := context.Background()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	for i := range n {
		if err := k8s.Create(ctx, build(fmt.Sprintf("unrelated-%03d", i), data)); err != nil {
			tb.Fatalf("create %s %d: %v", listKind, i, err)
		}
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind(listKind))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if err := testMgr.GetCache().List(ctx, list, client.InNamespace(ns)); err != nil {
			tb.Fatalf("list cached %s: %v", listKind, err)
		}
		if len(list.Items) == n {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the cache holds %d of %d %s items after a minute", len(list.Items), n, listKind)
		}
	}
}

func unrelatedSecret(ns string) func(string, []byte) client.Object {
	return func(name string, data []byte) client.Object {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"blob": data}}
	}
}

func unrelatedConfigMap(ns string) func(string, []byte) client.Object {
	return func(name string, data []byte) client.Object {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, BinaryData: map[string][]byte{"blob": data}}
	}
}

// deleteUnrelated spares the suite's API server the data: envtest runs no
// namespace controller, so nothing else would delete it.
func deleteUnrelated(tb testing.TB, ns string) {
	tb.Helper()
	for _, obj := range []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}} {
		if err := k8s.DeleteAllOf(context.Background(), obj, client.InNamespace(ns)); err != nil {
			tb.Errorf("delete %T in %s: %v", obj, ns, err)
		}
	}
}

// liveHeap is the bytes of reachable heap objects: after a full collection
// HeapAlloc counts nothing else.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestCacheHoldsNoSecretOrConfigMapData: 200 unrelated 512 KiB Secrets and
// 50 such ConfigMaps (125 MiB) must not stay in the manager's memory. It
// watches both kinds, so it sees every one, but as metadata only. The bound
// is far below the data and above the metadata (a few hundred KiB) plus
// the heap's noise between two collections.
func TestCacheHoldsNoSecretOrConfigMapData(t *testing.T) {
	const bound = 20 << 20
	ns := newNamespace(t)
	t.Cleanup(func() { deleteUnrelated(t, ns) })
	before := liveHeap()
	createUnrelated(t, ns, unrelatedCount, unrelatedSize, unrelatedSecret(ns), "SecretList")
	createUnrelated(t, ns, 50, unrelatedSize, unrelatedConfigMap(ns), "ConfigMapList")
	grown := liveHeap() - before
	t.Logf("live heap grew by %.1f MiB with 125 MiB of unrelated Secrets and ConfigMaps in the cluster", float64(grown)/(1<<20))
	if grown > bound {
		t.Fatalf("live heap grew by %d MiB, bound %d MiB: the manager holds Secret or ConfigMap data", grown>>20, bound>>20)
	}
}

// BenchmarkUnrelatedSecrets measures what 200 unrelated 512 KiB Secrets
// (100 MiB) cost the manager, which runs in this process: the growth of the
// live heap and of the resident set, both after a full collection that
// returns free memory to the OS, so garbage the benchmark's own client left
// behind does not count; and the peak RSS of the whole run.
func BenchmarkUnrelatedSecrets(b *testing.B) {
	for i := 0; i < b.N; i++ {
		ns := newNamespace(b)
		heap0, rss0 := liveHeap(), retainedRSS(b)
		createUnrelated(b, ns, unrelatedCount, unrelatedSize, unrelatedSecret(ns), "SecretList")
		heap1, rss1 := liveHeap(), retainedRSS(b)
		b.ReportMetric(float64(heap1-heap0)/(1<<20), "heap-growth-MiB")
		b.ReportMetric(float64(rss1-rss0)/(1<<20), "RSS-growth-MiB")
		b.ReportMetric(float64(rss1)/(1<<20), "RSS-MiB")
		deleteUnrelated(b, ns)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MiB")
	}
}

// retainedRSS is the process's resident set after returning free memory to
// the OS.
func retainedRSS(tb testing.TB) int64 {
	tb.Helper()
	debug.FreeOSMemory()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("parse VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}
