package receiver

import (
	"errors"
	"net"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "callguard_receiver"

// metrics are the receiver's Prometheus series, on a registry of their own
// so that several receivers can live in one test process.
type metrics struct {
	registry *prometheus.Registry

	requests        *prometheus.CounterVec
	notifications   *prometheus.CounterVec
	duplicates      prometheus.Counter
	authFailures    *prometheus.CounterVec
	decisions       *prometheus.CounterVec
	celErrors       *prometheus.CounterVec
	graphRequests   *prometheus.CounterVec
	actions         *prometheus.CounterVec
	decisionToGraph *prometheus.HistogramVec
	upstream        *prometheus.CounterVec
	reloads         *prometheus.CounterVec
	policyInfo      *prometheus.GaugeVec
}

func newMetrics(queueDepth func() float64) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Callback requests by HTTP status answered.",
		}, []string{"code"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "notifications_total",
			Help: "Graph notifications accepted, by change type.",
		}, []string{"change_type"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "duplicate_notifications_total",
			Help: "Incoming-call notifications of calls already decided within the deduplication window.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_failures_total",
			Help: "Callback requests refused for their bearer token, by reason.",
		}, []string{"reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "decisions_total",
			Help: "Calls decided, by rule (empty for the default), action and mode.",
		}, []string{"rule", "action", "mode"}),
		celErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "expression_errors_total",
			Help: "CEL expressions that failed to evaluate (and so did not match), by rule.",
		}, []string{"rule"}),
		graphRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "graph_requests_total",
			Help: "Requests sent to Graph, by operation and HTTP status (or error).",
		}, []string{"operation", "status"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "graph_actions_total",
			Help: "Reject and redirect actions, by operation and final result (success, failed, deadline).",
		}, []string{"operation", "result"}),
		decisionToGraph: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "decision_to_graph_seconds",
			Help:    "Time from a decision to Graph's success answer.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
		}, []string{"operation"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_requests_total",
			Help: "Notifications forwarded to the upstream bot, by HTTP status (or error).",
		}, []string{"status"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "policy_reloads_total",
			Help: "Policy loads, by result (success, error, unchanged).",
		}, []string{"result"}),
		policyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "policy_info",
			Help: "The live policy: 1 for its hash.",
		}, []string{"hash"}),
	}
	m.registry.MustRegister(
		m.requests, m.notifications, m.duplicates, m.authFailures, m.decisions, m.celErrors,
		m.graphRequests, m.actions, m.decisionToGraph, m.upstream, m.reloads, m.policyInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "queue_depth",
			Help: "Notification batches waiting for a worker.",
		}, queueDepth),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// statusLabel names a response status, or the kind of transport error.
func statusLabel(status int, err error) string {
	if err == nil {
		return strconv.Itoa(status)
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "error"
}
