package receiver

import (
	"fmt"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
)

func TestCallLogClaimsOncePerWindow(t *testing.T) {
	l := newCallLog(10*time.Minute, 100)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if !l.claim("a", t0) {
		t.Fatal("first claim refused")
	}
	if l.claim("a", t0.Add(9*time.Minute)) {
		t.Fatal("second claim within the window accepted")
	}
	l.decided("a", v1alpha1.ActionAllow)
	if a, known := l.action("a", t0.Add(time.Minute)); !known || a != v1alpha1.ActionAllow {
		t.Fatalf("action = %q, %v; want Allow, true", a, known)
	}
	if _, known := l.action("a", t0.Add(10*time.Minute)); known {
		t.Fatal("call still known after the window")
	}
	if !l.claim("a", t0.Add(10*time.Minute)) {
		t.Fatal("claim after the window refused")
	}
}

func TestCallLogIsBounded(t *testing.T) {
	l := newCallLog(time.Hour, 3)
	t0 := time.Now()
	for i := range 10 {
		if !l.claim(fmt.Sprint(i), t0) {
			t.Fatalf("claim %d refused", i)
		}
	}
	if len(l.calls) != 3 || l.size != 3 {
		t.Fatalf("log holds %d calls (ring %d), want 3", len(l.calls), l.size)
	}
	if _, known := l.action("9", t0); !known {
		t.Fatal("newest call forgotten")
	}
	if _, known := l.action("0", t0); known {
		t.Fatal("oldest call kept past the bound")
	}
}

func TestRedirectRequestTargets(t *testing.T) {
	req := redirectRequest(&v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{
		{Phone: "+14255550199"}, {User: "u1"}, {ApplicationInstance: "ai1"},
	}})
	if req.Timeout != v1alpha1.DefaultRedirectTimeoutSeconds || len(req.Targets) != 3 {
		t.Fatalf("request = %+v", req)
	}
	if req.Targets[0].Identity.Phone.ID != "+14255550199" || req.Targets[1].Identity.User.ID != "u1" ||
		req.Targets[2].Identity.ApplicationInstance.ID != "ai1" {
		t.Fatalf("targets = %+v", req.Targets)
	}
}
