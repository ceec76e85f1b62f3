// Package telemetry names, once, what a receiver reports about itself: the
// record of each decision (its log line, the lines of GET /decisions, and
// what `kubectl callpolicy decisions` prints) and the metric names that
// the plugin, the demo and the tests read. The receiver writes them; the
// others read them from here instead of spelling them again.
package telemetry

import (
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// Namespace prefixes every receiver metric.
const Namespace = "callguard_receiver"

// Receiver metrics read outside the receiver.
const (
	MetricPolicyInfo        = Namespace + "_policy_info"
	MetricPolicyLoadSeconds = Namespace + "_policy_load_seconds"
	MetricPolicyReloads     = Namespace + "_policy_reloads_total"
	MetricDecisions         = Namespace + "_decisions_total"
	MetricGraphActions      = Namespace + "_graph_actions_total"
	MetricAuthFailures      = Namespace + "_auth_failures_total"
)

// Decision is the record of one decided call. The receiver logs it (as the
// member "decision" of a log line whose msg is "decision") and serves its
// last ones at GET /decisions as JSON lines; the plugin reads those lines
// into this type.
type Decision struct {
	// Time is when the notification arrived.
	Time        time.Time `json:"time"`
	CallID      string    `json:"callId"`
	CallChainID string    `json:"callChainId"`
	CallerType  string    `json:"callerType"`
	// CallerNumber is masked to its last four digits (MaskNumber) unless the
	// receiver runs with --log-caller-numbers.
	CallerNumber string `json:"callerNumber"`
	// Rule is the deciding rule's name, "" for the default action.
	Rule   string `json:"rule"`
	Action string `json:"action"`
	// Reason is set for Reject only.
	Reason string `json:"reason,omitempty"`
	// Blocked reports that the rule decided because the caller is under its
	// temporary block (blockFor).
	Blocked bool   `json:"blocked,omitempty"`
	Mode    string `json:"mode"`
	// Tenant is the tenant the call arrived in (the notification token's
	// tenant claim), whose app token acted on it.
	Tenant string `json:"tenant,omitempty"`
	// Result is what Graph or the upstream bot answered (success,
	// already_done, failed, deadline, forwarded, …).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Policy is the hash of the policy version that decided.
	Policy string `json:"policy"`
	// LatencyMs is from the notification's arrival to the outcome.
	LatencyMs float64 `json:"latencyMs"`
}

// AppendJSON appends d as one JSON object, members in the order of the
// type, without allocating: the receiver writes one per decided call.
// encoding/json reads it back into a Decision unchanged.
func (d *Decision) AppendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = d.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendString(b, "callId", d.CallID)
	b = appendString(b, "callChainId", d.CallChainID)
	b = appendString(b, "callerType", d.CallerType)
	b = appendString(b, "callerNumber", d.CallerNumber)
	b = appendString(b, "rule", d.Rule)
	b = appendString(b, "action", d.Action)
	if d.Reason != "" {
		b = appendString(b, "reason", d.Reason)
	}
	if d.Blocked {
		b = append(b, `,"blocked":true`...)
	}
	b = appendString(b, "mode", d.Mode)
	if d.Tenant != "" {
		b = appendString(b, "tenant", d.Tenant)
	}
	b = appendString(b, "result", d.Result)
	if d.Error != "" {
		b = appendString(b, "error", d.Error)
	}
	b = appendString(b, "policy", d.Policy)
	b = append(b, `,"latencyMs":`...)
	b = strconv.AppendFloat(b, d.LatencyMs, 'f', -1, 64)
	return append(b, '}')
}

func appendString(b []byte, name, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	// Ids and names come from the network: quoted as JSON quotes them
	// (invalid UTF-8 becomes U+FFFD).
	b, _ = jsontext.AppendQuote(b, value)
	return b
}

// MaskNumber keeps only a number's last four digits: "+14255550143" →
// "****0143".
func MaskNumber(n string) string {
	if n == "" {
		return ""
	}
	digits := 0
	cut := len(n)
	for i := len(n) - 1; i >= 0 && digits < 4; i-- {
		if n[i] >= '0' && n[i] <= '9' {
			digits++
			cut = i
		}
	}
	return "****" + strings.TrimLeft(n[cut:], "+")
}
