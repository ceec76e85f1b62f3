package receiver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// keyPolicy is a policy that applies without reaching anything; redis
// gives it a state.redis.
func keyPolicy(t *testing.T, rule string, redis bool) *policy.Policy {
	t.Helper()
	const base = "https://127.0.0.1:9"
	spec := v1alpha1.CallPolicySpec{
		Bot: v1alpha1.BotSpec{AppID: "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10", TenantID: "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
			Credentials: v1alpha1.Credentials{SecretRef: &v1alpha1.SecretReference{Name: "bot"}}},
		Graph: v1alpha1.GraphSpec{Endpoint: base, AuthorityHost: base + "/", OpenIDConfigURL: base + "/openid"},
		Rules: []v1alpha1.Rule{{Name: rule, Action: v1alpha1.ActionReject,
			Match: v1alpha1.Match{Callers: &v1alpha1.CallerMatch{Numbers: []string{"+14255550001"}}}}},
	}
	if redis {
		spec.State = &v1alpha1.StateSpec{Redis: &v1alpha1.RedisSpec{Address: "127.0.0.1:1"}}
	}
	p, err := policy.Compile(&policy.Source{Namespace: "telephony", Name: "hotline", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var botSecret = map[string][]byte{graph.SecretKeyClientSecret: []byte("s3cret")}

func TestStateKey(t *testing.T) {
	fileKey := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name string
		// files are written to the state dir; nil: no dir at all.
		files   map[string][]byte
		redis   bool
		wantKey []byte // nil: a random key of 32 bytes
		wantErr string
	}{
		{name: "no dir: a random key", files: nil},
		{name: "empty dir: a random key", files: map[string][]byte{}},
		{name: "the dir's key", files: map[string][]byte{"key": fileKey}, wantKey: fileKey},
		{name: "the dir's key with redis", files: map[string][]byte{"key": fileKey, "redis-password": []byte("pw")}, redis: true, wantKey: fileKey},
		{name: "redis without a key file is refused", files: map[string][]byte{"redis-password": []byte("pw")}, redis: true, wantErr: "no key file"},
		{name: "redis without a dir is refused", files: nil, redis: true, wantErr: "no key file"},
		{name: "a short key is refused", files: map[string][]byte{"key": []byte("short")}, wantErr: "holds 5 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if tt.files != nil {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				for name, b := range tt.files {
					if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			s := New(Config{StateDir: dir})
			defer s.Close()
			hotline := policyID{"telephony", "hotline"}
			err := s.applied(s.apply(keyPolicy(t, "first", tt.redis), botSecret, hotline))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Apply: %v, want an error containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), filepath.Join(dir, "key")) {
					t.Errorf("error %q does not name the key file", err)
				}
				if s.stateKey() != nil {
					t.Error("a refused policy went live")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			key := s.stateKey()
			switch {
			case tt.wantKey != nil && !bytes.Equal(key, tt.wantKey):
				t.Fatalf("key %x, want the file's %x", key, tt.wantKey)
			case tt.wantKey == nil && len(key) != 32:
				t.Fatalf("random key of %d bytes, want 32", len(key))
			}
			// Another version keeps the key: a process's random key is one.
			if err := s.applied(s.apply(keyPolicy(t, "second", tt.redis), botSecret, hotline)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(s.stateKey(), key) {
				t.Fatal("the key changed with the policy version")
			}
			if tt.wantKey == nil {
				other := New(Config{StateDir: dir})
				defer other.Close()
				if err := other.Apply(keyPolicy(t, "first", false), botSecret); err != nil {
					t.Fatal(err)
				}
				if bytes.Equal(other.stateKey(), key) {
					t.Fatal("two processes drew the same random key")
				}
			}
		})
	}
}

// TestDecideBatchStatelessAllocs: a policy that keeps no state decides a
// batch with the plan's two slices and nothing for the store.
func TestDecideBatchStatelessAllocs(t *testing.T) {
	p := decidePolicy(t, v1alpha1.ModeEnforce)
	if p.Stateful() {
		t.Fatal("the policy keeps state")
	}
	const runs = 100
	batches := make([]*graph.Notifications, runs+1)
	for i := range batches {
		batches[i] = mustDecode(t, incoming(fmt.Sprintf("call-%d", i), "+14255550001"))
	}
	calls := newCallLog(DedupeWindow, 1000)
	now := time.Now()
	i := 0
	allocs := testing.AllocsPerRun(runs, func() {
		pl := decideBatch(batches[i], p, false, calls, now, "", nil)
		if len(pl.decided) != 1 {
			t.Fatalf("decided %d calls, want 1", len(pl.decided))
		}
		i++
	})
	if allocs > 2 {
		t.Errorf("decideBatch allocates %v times a batch, want at most 2 (the plan's slices)", allocs)
	}
}

// BenchmarkDecideBatch decides one-call batches of distinct callers by a
// policy without state and by one with a repeat rule, its store in memory
// or in a real redis-server on loopback (a round trip a batch).
func BenchmarkDecideBatch(b *testing.B) {
	compile := func(m v1alpha1.Match) *policy.Policy {
		p, err := policy.Compile(&policy.Source{Namespace: "telephony", Name: "hotline", Spec: v1alpha1.CallPolicySpec{
			Bot: v1alpha1.BotSpec{AppID: "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10", TenantID: "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
				Credentials: v1alpha1.Credentials{WorkloadIdentity: &v1alpha1.WorkloadIdentity{}}},
			Rules: []v1alpha1.Rule{{Name: "r", Action: v1alpha1.ActionReject, Match: m}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	stateless := compile(v1alpha1.Match{Callers: &v1alpha1.CallerMatch{Numbers: []string{"+14255550001"}}})
	repeat := compile(v1alpha1.Match{Callers: &v1alpha1.CallerMatch{
		Repeat: &v1alpha1.RepeatMatch{Calls: 3, Within: metav1.Duration{Duration: 10 * time.Minute}}}})
	store, err := state.NewMemory([]byte("0123456789abcdef"), memoryCallers)
	if err != nil {
		b.Fatal(err)
	}
	rs := redisserver.Start(b)
	shared, err := state.NewRedis(state.RedisOptions{Address: rs.Addr(), KeyPrefix: "callguard:",
		Namespace: "telephony", Name: "hotline", HashKey: []byte("0123456789abcdef")})
	if err != nil {
		b.Fatal(err)
	}
	defer shared.Close()
	evalIn := func(st state.Store) stateEval {
		return func(qs []state.Query, ans []state.Answer) {
			if err := st.Eval(context.Background(), qs, ans); err != nil {
				b.Fatal(err)
			}
		}
	}
	const batches = 4096
	bodies := make([]*graph.Notifications, batches)
	for i := range bodies {
		n, err := graph.DecodeNotifications([]byte(`{"value":[` + incoming(fmt.Sprintf("call-%d", i), fmt.Sprintf("+1425555%04d", i)) + `]}`))
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = n
	}
	for _, bc := range []struct {
		name string
		p    *policy.Policy
		st   stateEval
	}{{"stateless", stateless, nil}, {"memory store", repeat, evalIn(store)}, {"redis store", repeat, evalIn(shared)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			calls := newCallLog(DedupeWindow, batches)
			now := time.Now()
			i := 0
			for b.Loop() {
				if i == batches {
					// The ids come round: a fresh call log decides them again.
					b.StopTimer()
					calls, now, i = newCallLog(DedupeWindow, batches), now.Add(time.Second), 0
					b.StartTimer()
				}
				if pl := decideBatch(bodies[i], bc.p, false, calls, now, "", bc.st); len(pl.decided) != 1 {
					b.Fatalf("decided %d calls, want 1", len(pl.decided))
				}
				i++
			}
		})
	}
}
