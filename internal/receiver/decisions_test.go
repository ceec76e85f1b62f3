package receiver_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func (e *env) decisions(query string) (int, []map[string]any) {
	e.t.Helper()
	resp, err := http.Get(e.ops + "/decisions" + query)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	var out []map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			e.t.Fatalf("/decisions line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return resp.StatusCode, out
}

// TestRecentDecisions: /decisions serves each decision with its result and
// the caller's number masked, oldest first, and ?since= cuts older ones.
func TestRecentDecisions(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	busy := e.placeCall(numBusy)
	e.acted(busy)
	e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"result": "success"}, 1)
	allowed := e.placeCall(numAllowed)
	e.waitMetric("callguard_receiver_upstream_requests_total", map[string]string{"status": "202"}, 1)

	var got []map[string]any
	eventually(t, 10*time.Second, "both decisions at /decisions", func() bool {
		_, got = e.decisions("")
		return len(got) == 2
	})
	want := []map[string]any{
		{"callId": busy, "action": "Reject", "reason": "busy", "rule": "reject-busy", "result": "success", "callerNumber": "****0001", "callerType": "phone"},
		{"callId": allowed, "action": "Allow", "rule": "", "result": "forwarded", "callerNumber": "****0100"},
	}
	for i, w := range want {
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("decision %d: %s = %v, want %v (%v)", i, k, got[i][k], v, got[i])
			}
		}
	}
	first, err := time.Parse(time.RFC3339Nano, got[0]["time"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if _, later := e.decisions("?since=" + url.QueryEscape(first.Format(time.RFC3339Nano))); len(later) != 1 || later[0]["callId"] != allowed {
		t.Errorf("since the first decision: %v, want only the second", later)
	}
	if status, _ := e.decisions("?since=yesterday"); status != http.StatusBadRequest {
		t.Errorf("a bad since: status %d, want 400", status)
	}
}
