package graph_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/callguard/callguard/internal/graph"
)

// TestActionPermissions: each action with a documented permission is
// refused without every permission that satisfies it and allowed with any
// one; reject needs none.
func TestActionPermissions(t *testing.T) {
	tests := []struct {
		action graph.CallAction
		anyOf  []string
	}{
		{graph.CallReject, nil},
		{graph.CallRedirect, []string{graph.PermissionCallsInitiate}},
		{graph.CallAnswer, []string{graph.PermissionCallsJoinGroupCall, graph.PermissionCallsJoinGroupCallAsGuest}},
		{graph.CallPlayPrompt, []string{graph.PermissionCallsInitiate, graph.PermissionCallsAccessMedia}},
		{graph.CallHangUp, []string{graph.PermissionCallsInitiate, graph.PermissionCallsAccessMedia}},
	}
	for _, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			req, ok := graph.ActionPermissions(tt.action)
			if !ok || !slices.Equal(req.AnyOf, tt.anyOf) || !strings.HasPrefix(req.Doc, "https://learn.microsoft.com/") {
				t.Fatalf("ActionPermissions(%s) = %+v, %v; want any of %v with Microsoft's page", tt.action, req, ok, tt.anyOf)
			}
			rest := slices.DeleteFunc(slices.Clone(graph.CallingPermissions), func(p string) bool { return slices.Contains(tt.anyOf, p) })
			missing := graph.MissingPermissions(rest, []graph.CallAction{tt.action})
			if len(tt.anyOf) == 0 {
				if len(missing) != 0 {
					t.Errorf("missing = %+v, want none", missing)
				}
				return
			}
			if len(missing) != 1 || missing[0].Describe() != strings.Join(tt.anyOf, " or ")+" (for "+req.For+")" {
				t.Errorf("without %v: missing = %+v", tt.anyOf, missing)
			}
			for _, p := range tt.anyOf {
				if m := graph.MissingPermissions([]string{p}, []graph.CallAction{tt.action}); len(m) != 0 {
					t.Errorf("with only %s: missing = %+v", p, m)
				}
			}
		})
	}
}

func TestCallerIdentityPermissions(t *testing.T) {
	for _, p := range graph.CallingPermissions {
		if m := graph.MissingPermissions([]string{p}, nil); len(m) != 0 {
			t.Errorf("%s alone should decrypt callers: missing %+v", p, m)
		}
	}
	m := graph.MissingPermissions([]string{"User.Read.All"}, []graph.CallAction{graph.CallReject})
	if len(m) != 1 || !slices.Equal(m[0].AnyOf, graph.CallingPermissions) || !strings.Contains(m[0].Describe(), "caller identities") {
		t.Errorf("no calling permission: missing = %+v", m)
	}
	if !graph.HasRole([]string{"calls.initiate.all"}, graph.PermissionCallsInitiate) {
		t.Error("HasRole is case-sensitive")
	}
}
