package receiver

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

func (s *Server) logDecision(n *graph.Notification, d policy.Decision, j *job, err error) {
	caller := policy.CallerOf(n.ResourceData)
	number := caller.Number
	if !s.cfg.LogCallerNumbers {
		number = maskNumber(number)
	}
	// Room for every attribute, so that the slice stays on the stack.
	attrs := make([]slog.Attr, 0, 11)
	attrs = append(attrs,
		slog.String("callId", n.CallID()),
		slog.String("callChainId", n.ResourceData.CallChainID),
		slog.String("callerType", string(caller.Type)),
		slog.String("callerNumber", number),
		slog.String("rule", d.Rule),
		slog.String("action", string(d.Action)),
		slog.String("mode", string(d.Mode)),
		slog.String("policy", j.rt.hash),
		slog.Float64("latencyMs", float64(time.Since(j.arrival).Microseconds())/1000),
	)
	if d.Action == v1alpha1.ActionReject {
		attrs = append(attrs, slog.String("reason", string(d.Reason)))
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.log.LogAttrs(context.Background(), level, "decision", attrs...)
}

// maskNumber keeps only a number's last four digits.
func maskNumber(n string) string {
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
