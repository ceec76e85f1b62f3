package controllers

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

func TestBuildRoleNamesExactlyTheManifestAndItsShards(t *testing.T) {
	cp := &callsv1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "p"}}
	tests := []struct {
		shards []string
		want   []string
	}{
		{nil, []string{"p-callguard-policy"}},
		{[]string{"p-callguard-policy-0a", "p-callguard-policy-1b"}, []string{"p-callguard-policy", "p-callguard-policy-0a", "p-callguard-policy-1b"}},
	}
	for _, tt := range tests {
		r := BuildRole(cp, tt.shards)
		if len(r.Rules) != 1 || !slices.Equal(r.Rules[0].ResourceNames, tt.want) {
			t.Errorf("shards %v: role rules = %+v, want resourceNames %v", tt.shards, r.Rules, tt.want)
		}
		for _, v := range r.Rules[0].Verbs {
			if v != "get" && v != "list" && v != "watch" {
				t.Errorf("verb %q grants more than reading", v)
			}
		}
	}
}

func TestShardConfigMapIsImmutableAndFindable(t *testing.T) {
	cp := &callsv1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "p"}}
	cm := buildShardConfigMap(cp, policy.Shard{Name: "p-callguard-policy-0a", Data: []byte{1, 2}})
	if cm.Immutable == nil || !*cm.Immutable {
		t.Error("a shard must be immutable: its name promises its bytes")
	}
	for k, v := range selectorLabels(cp) {
		if cm.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (stale shards are found by it)", k, cm.Labels[k], v)
		}
	}
	if cm.Labels[shardLabel] != "true" || cm.Labels[managedByLabel] != managedBy {
		t.Errorf("labels %v", cm.Labels)
	}
	if len(cm.BinaryData[policy.ShardKey]) != 2 {
		t.Errorf("binaryData %v", cm.BinaryData)
	}
}

func TestUnion(t *testing.T) {
	if got := union([]string{"a", "b"}, []string{"b", "c"}); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("union = %v", got)
	}
	if got := splitNames(""); got != nil {
		t.Errorf("splitNames(\"\") = %v", got)
	}
}
