package receiver

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/callguard/callguard/internal/policy"
)

// TestShardStoreFetchesOnlyNewShards: shards are immutable, so a new
// version reads from the API server only the shards the live one lacks; a
// version that did not go live does not change what is kept.
func TestShardStoreFetchesOnlyNewShards(t *testing.T) {
	shard := func(name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: name},
			BinaryData: map[string][]byte{policy.ShardKey: []byte(name)}}
	}
	kube := fake.NewClientset(shard("a"), shard("b"), shard("c"))
	var gets []string
	kube.PrependReactor("get", "configmaps", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		gets = append(gets, a.(k8stesting.GetAction).GetName())
		return false, nil, nil
	})
	st := newShardStore(kube.CoreV1().ConfigMaps("n"))
	read := func(names ...string) {
		t.Helper()
		get := st.getter(context.Background())
		for _, n := range names {
			if b, err := get(n); err != nil || string(b) != n {
				t.Fatalf("shard %s: %q, %v", n, b, err)
			}
		}
	}

	read("a", "b")
	st.keep()
	gets = nil
	read("b", "c") // a version sharing b with the live one
	if len(gets) != 1 || gets[0] != "c" {
		t.Fatalf("fetched %v, want only c", gets)
	}
	// That version did not go live (no keep): the next one still has a, b.
	gets = nil
	read("a", "b")
	if len(gets) != 0 {
		t.Fatalf("fetched %v, want nothing: a and b are the live version's", gets)
	}
	st.keep()
	if _, err := st.getter(context.Background())("missing"); err == nil {
		t.Fatal("a shard the API server does not have was read")
	}
}
