package receiver_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

func TestRejectsWithEachReasonAndRedirects(t *testing.T) {
	for _, version := range []string{"v1.0", "beta"} {
		t.Run(version, func(t *testing.T) {
			e := startEnv(t, envOptions{apiVersion: version, upstream: true})
			for _, tc := range []struct{ number, reason, rule string }{
				{numBusy, "busy", "reject-busy"},
				{numForbidden, "forbidden", "reject-forbidden"},
				{numNone, "none", "reject-none"},
			} {
				id := e.placeCall(tc.number)
				rec := e.acted(id)
				if rec.Action != "reject" || rec.Reason != tc.reason {
					t.Errorf("%s: action %q reason %q, want reject %s", tc.number, rec.Action, rec.Reason, tc.reason)
				}
				d := e.logs.decisionFor(t, id)
				if d["rule"] != tc.rule || d["action"] != "Reject" || d["mode"] != "Enforce" {
					t.Errorf("%s: decision log %v", tc.number, d)
				}
			}
			id := e.placeCall(numRedirect)
			rec := e.acted(id)
			if rec.Action != "redirect" || rec.RedirectTimeout != 20 || len(rec.RedirectTargets) != 1 ||
				rec.RedirectTargets[0].Identity.Phone == nil || rec.RedirectTargets[0].Identity.Phone.ID != redirectTo {
				t.Errorf("redirect: %+v", rec)
			}
			e.waitMetric("callguard_receiver_decisions_total", map[string]string{"action": "Reject", "mode": "Enforce"}, 3)
			e.waitMetric("callguard_receiver_decision_to_graph_seconds", nil, 4)
			e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"result": "success"}, 4)
		})
	}
}

func TestRejectedAndRedirectedCallsNeverReachUpstream(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	for i, number := range []string{numBusy, numRedirect} {
		id := e.placeCall(number)
		e.acted(id)
		// Graph's deleted notification follows the action; it must not
		// leak either. Forwarding runs after the 202, so wait until the
		// receiver has worked on it: counted as withheld.
		eventually(t, 10*time.Second, "deleted notification acknowledged", func() bool {
			for _, ev := range e.record(id).History {
				if ev.Event == emulator.EventDeletedNotification && ev.Status == http.StatusAccepted {
					return true
				}
			}
			return false
		})
		e.waitMetric("callguard_receiver_notifications_withheld_total", nil, float64(i+1))
		if got := e.upstream.forCall(t, id); len(got) != 0 {
			t.Errorf("call from %s reached upstream %d times", number, len(got))
		}
	}
}

func TestAllowForwardsOriginalRequestUpstream(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	c := e.placeQuiet(numAllowed)
	body := createdBody(t, c)
	// Extra whitespace and an unknown field: upstream must get these bytes.
	body = append([]byte("  "), bytes.Replace(body, []byte(`"value"`), []byte(`"x-extra":{"k":1},"value"`), 1)...)
	auth := e.genuineAuth()
	if status, resp := e.post(http.MethodPost, auth, body); status != http.StatusAccepted {
		t.Fatalf("status %d %s", status, resp)
	}
	var got []upstreamRequest
	eventually(t, 10*time.Second, "upstream delivery", func() bool {
		got = e.upstream.forCall(t, c.ID)
		return len(got) > 0
	})
	if len(got) != 1 || !bytes.Equal(got[0].body, body) || got[0].auth != auth {
		t.Fatalf("upstream got %d requests; first body %q auth %q", len(got), got[0].body, got[0].auth)
	}
	if rec := e.record(c.ID); rec.Action != "" {
		t.Fatalf("allowed call acted on: %+v", rec)
	}
	if e.graphActions() != 0 {
		t.Fatal("Graph was called for an allowed call")
	}
}

func TestAllowedCallFollowUpsAreForwarded(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	id := e.placeCall(numAllowed)
	eventually(t, 10*time.Second, "created notification upstream", func() bool {
		return len(e.upstream.forCall(t, id)) == 1
	})
	// The upstream bot answers; Graph then notifies the callback (the
	// receiver) that the call is establishing, then established.
	answer(t, e, id)
	eventually(t, 10*time.Second, "updated notifications upstream", func() bool {
		return len(e.upstream.forCall(t, id)) == 3
	})
	n, err := graph.DecodeNotifications(e.upstream.forCall(t, id)[1].body)
	if err != nil || n.Value[0].ChangeType != graph.ChangeUpdated {
		t.Fatalf("second upstream notification: %v %+v", err, n)
	}
}

// answer answers a call on the emulator as the upstream bot would.
func answer(t *testing.T, e *env, id string) {
	t.Helper()
	hc := e.emu.Client()
	cred, err := graph.NewCredential(graph.CredentialConfig{
		TenantID: tenantID, ClientID: appID, AuthorityHost: e.emu.URL() + "/",
		Secret: map[string][]byte{graph.SecretKeyClientSecret: []byte(secret)}, HTTPClient: hc,
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cred.GetToken(context.Background(), tokenRequest(e.emu.URL()))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, e.emu.URL()+"/v1.0/communications/calls/"+id+"/answer",
		strings.NewReader(`{"callbackUri":"`+e.callback+`","acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.serviceHostedMediaConfig"}}`))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("answer: HTTP %d", resp.StatusCode)
	}
}

func tokenRequest(endpoint string) azpolicy.TokenRequestOptions {
	return azpolicy.TokenRequestOptions{Scopes: []string{endpoint + "/.default"}}
}

func TestAllowWithoutUpstreamDoesNothing(t *testing.T) {
	e := startEnv(t, envOptions{})
	id := e.placeCall(numAllowed)
	d := e.logs.decisionFor(t, id)
	if d["action"] != "Allow" || d["rule"] != "" {
		t.Fatalf("decision %v", d)
	}
	if _, ok := d["error"]; ok {
		t.Fatalf("allow without upstream logged an error: %v", d)
	}
	if rec := e.record(id); rec.Action != "" || e.graphActions() != 0 {
		t.Fatalf("allowed call acted on: %+v", rec)
	}
}

func TestDryRunSendsNothingToGraph(t *testing.T) {
	e := startEnv(t, envOptions{mode: "DryRun", upstream: true})
	id := e.placeCall(numBusy)
	eventually(t, 10*time.Second, "dry-run call forwarded upstream", func() bool {
		return len(e.upstream.forCall(t, id)) == 1
	})
	d := e.logs.decisionFor(t, id)
	if d["action"] != "Reject" || d["mode"] != "DryRun" || d["rule"] != "reject-busy" {
		t.Fatalf("decision %v", d)
	}
	if rec := e.record(id); rec.Action != "" || rec.State != graph.StateIncoming {
		t.Fatalf("dry-run call acted on: %+v", rec)
	}
	if n := e.graphActions(); n != 0 {
		t.Fatalf("Graph got %d action requests in DryRun", n)
	}
	if got := e.metric("callguard_receiver_decisions_total", map[string]string{"mode": "DryRun", "action": "Reject", "rule": "reject-busy"}); got != 1 {
		t.Fatalf("DryRun decisions counted %v", got)
	}
}

func TestDuplicateDeliveryIsDecidedOnce(t *testing.T) {
	e := startEnv(t, envOptions{})
	c := e.placeQuiet(numBusy)
	body := createdBody(t, c)
	for range 3 {
		if status, resp := e.post(http.MethodPost, e.genuineAuth(), body); status != http.StatusAccepted {
			t.Fatalf("status %d %s", status, resp)
		}
	}
	e.acted(c.ID)
	e.waitMetric("callguard_receiver_duplicate_notifications_total", nil, 2)
	if n := e.graphActions(); n != 1 {
		t.Fatalf("Graph got %d rejects, want 1", n)
	}
	if got := e.metric("callguard_receiver_decisions_total", nil); got != 1 {
		t.Fatalf("%v decisions, want 1", got)
	}
}

func TestLegacyHandshake(t *testing.T) {
	e := startEnv(t, envOptions{legacy: true})
	id := e.placeCall(numBusy)
	rec := e.acted(id)
	if rec.Action != "reject" {
		t.Fatalf("call after legacy handshake: %+v", rec)
	}
	if len(rec.History) < 2 || rec.History[0].Event != emulator.EventLegacyNotification ||
		rec.History[0].Status != http.StatusNoContent || rec.History[1].Event != emulator.EventCreatedNotification ||
		rec.History[1].Status != http.StatusAccepted {
		t.Fatalf("history %+v, want legacy 204 then created 202", rec.History)
	}
}

func TestNotificationsOfUnknownCallsAreForwarded(t *testing.T) {
	// A call decided by another replica, or longer ago than the
	// deduplication window: this receiver never refused it.
	e := startEnv(t, envOptions{upstream: true})
	body := []byte(`{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/elsewhere","resourceData":{"id":"elsewhere","state":"terminated"}}]}`)
	if status, resp := e.post(http.MethodPost, e.genuineAuth(), body); status != http.StatusAccepted {
		t.Fatalf("status %d %s", status, resp)
	}
	eventually(t, 10*time.Second, "forwarded", func() bool { return len(e.upstream.forCall(t, "elsewhere")) == 1 })
}
