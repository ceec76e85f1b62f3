package receiver

import (
	"errors"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/telemetry"
)

const namespace = telemetry.Namespace

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
	withheld        prometheus.Counter
	connsEvicted    prometheus.Counter
	connsShed       prometheus.Counter
	loadSeconds     prometheus.Histogram
	reloads         *prometheus.CounterVec
	policyInfo      *prometheus.GaugeVec
	// Token requests to the authority, by result; and calls not acted on
	// for want of a token in their tenant. No tenant label: with "*" the
	// tenants are unbounded; the log names them.
	tokenRequests       *prometheus.CounterVec
	tenantTokenFailures prometheus.Counter

	// The state store (callers.repeat, blockFor): its round trips by
	// result and their time, the calls decided without its answer, and the
	// temporary blocks started, by rule.
	stateRequests *prometheus.CounterVec
	// stateRoundTrips are a Redis store's round trips: concurrent batches'
	// requests share one.
	stateRoundTrips prometheus.Counter
	stateSeconds    prometheus.Histogram
	stateErrors     prometheus.Counter
	blocksStarted   *prometheus.CounterVec
	stateBy         [3]prometheus.Counter // stateRequests by stateResults

	// The children counted on every notification, looked up once: a
	// CounterVec hashes and checks the label values on each lookup.
	accepted     prometheus.Counter // requests{code="202"}
	legacy       prometheus.Counter // requests{code="204"}
	byChangeType [4]prometheus.Counter
	decisionsBy  counterCache
	actionsBy    counterCache
	graphBy      counterCache // by operation and answered status
	toGraphMu    sync.RWMutex
	toGraphBy    map[string]prometheus.Observer // by operation
}

// counterCache remembers the children of a CounterVec by label values.
type counterCache struct {
	vec *prometheus.CounterVec
	mu  sync.RWMutex
	m   map[[3]string]prometheus.Counter
}

// with returns the child for up to three label values.
func (c *counterCache) with(lvs ...string) prometheus.Counter {
	var k [3]string
	copy(k[:], lvs)
	c.mu.RLock()
	ctr, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return ctr
	}
	// A copy, so that lvs does not escape and callers need not allocate it.
	ctr = c.vec.WithLabelValues(append([]string(nil), lvs...)...)
	c.mu.Lock()
	if c.m == nil {
		c.m = map[[3]string]prometheus.Counter{}
	}
	c.m[k] = ctr
	c.mu.Unlock()
	return ctr
}

// graphRequest counts a request sent to Graph.
func (m *metrics) graphRequest(op string, status int, err error) {
	if err != nil {
		m.graphRequests.WithLabelValues(op, statusLabel(status, err)).Inc()
		return
	}
	m.graphBy.with(op, statusText(status)).Inc()
}

// statusText is strconv.Itoa without allocating for HTTP statuses.
func statusText(status int) string {
	if status >= 100 && status < 600 {
		return statusTexts[status-100]
	}
	return strconv.Itoa(status)
}

var statusTexts = func() (t [500]string) {
	for i := range t {
		t[i] = strconv.Itoa(i + 100)
	}
	return t
}()

// decisionToGraphOf is the latency histogram of an operation.
func (m *metrics) decisionToGraphOf(op string) prometheus.Observer {
	m.toGraphMu.RLock()
	o, ok := m.toGraphBy[op]
	m.toGraphMu.RUnlock()
	if ok {
		return o
	}
	o = m.decisionToGraph.WithLabelValues(op)
	m.toGraphMu.Lock()
	m.toGraphBy[op] = o
	m.toGraphMu.Unlock()
	return o
}

// changeTypes are the values of notifications_total's change_type label.
var changeTypes = [4]string{graph.ChangeCreated, graph.ChangeUpdated, graph.ChangeDeleted, "other"}

// notification counts an accepted notification of a change type, in any
// case (Graph's SDKs write "Created").
func (m *metrics) notification(changeType string) {
	for i, t := range changeTypes[:3] {
		if graph.EnumEqual(changeType, t) {
			m.byChangeType[i].Inc()
			return
		}
	}
	m.byChangeType[3].Inc()
}

// graphLatencyBuckets are the buckets of the times up to Graph's answer
// (decisions and announcement steps): from 5 ms to Graph's 15 s deadline.
var graphLatencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15}

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
			Name: telemetry.MetricAuthFailures,
			Help: "Callback requests refused for their bearer token, by reason.",
		}, []string{"reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: telemetry.MetricDecisions,
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
			Name: telemetry.MetricGraphActions,
			Help: "Graph actions (reject, redirect; answer, playPrompt, hangup for announcements), by operation and final result (success, already_done, failed, deadline, …).",
		}, []string{"operation", "result"}),
		decisionToGraph: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "decision_to_graph_seconds",
			Help:    "Time from a decision to Graph's success answer.",
			Buckets: graphLatencyBuckets,
		}, []string{"operation"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_requests_total",
			Help: "Notifications forwarded to the upstream bot, by HTTP status (or error).",
		}, []string{"status"}),
		withheld: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "notifications_withheld_total",
			Help: "Notifications not passed to the upstream bot because their call was rejected or redirected here.",
		}),
		connsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_evicted_total",
			Help: "Callback connections (idle, or with an incomplete request) closed to make room at the connection cap.",
		}),
		connsShed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_shed_total",
			Help: "Callback connections closed on arrival: the cap was reached and every open one was serving a whole request.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: telemetry.MetricPolicyReloads,
			Help: "Policy loads, by result (success, error, unchanged).",
		}, []string{"result"}),
		loadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    telemetry.MetricPolicyLoadSeconds,
			Help:    "Time to read, check and compile a policy version from its source (the ConfigMaps, or --policy-file), for the versions that went live.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10},
		}),
		policyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: telemetry.MetricPolicyInfo,
			Help: "The live policy: 1 for its hash.",
		}, []string{"hash"}),
	}
	m.tokenRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "graph_token_requests_total",
		Help: "App token requests to the authority, in any tenant, by result (success, error).",
	}, []string{"result"})
	m.tenantTokenFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "tenant_token_failures_total",
		Help: "Calls not acted on because the authority of the tenant they arrived in refused the app a token (e.g. no consent there); the log names the tenant.",
	})
	m.stateRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "state_requests_total",
		Help: "Requests to the state store (one per notification batch with calls it decides), by result (ok, error, timeout).",
	}, []string{"result"})
	m.stateRoundTrips = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "state_round_trips_total",
		Help: "Round trips of script calls (decisions, unblocks) to a Redis state store: the requests of batches decided at once share one.",
	})
	m.stateSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "state_seconds",
		Help:    "Time a batch waited for the state store's answer, answered or not (the budget is 100 ms).",
		Buckets: []float64{.00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	})
	m.stateErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "state_errors_total",
		Help: "Calls decided without the state store's answer (it failed or took over 100 ms): state.onError applied.",
	})
	m.blocksStarted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "blocks_started_total",
		Help: "Temporary blocks (blockFor) started, by rule; a block extended while it holds is not counted again.",
	}, []string{"rule"})
	for i, r := range stateResults {
		m.stateBy[i] = m.stateRequests.WithLabelValues(r)
	}
	m.accepted = m.requests.WithLabelValues("202")
	m.legacy = m.requests.WithLabelValues("204")
	for i, t := range changeTypes {
		m.byChangeType[i] = m.notifications.WithLabelValues(t)
	}
	m.decisionsBy.vec = m.decisions
	m.actionsBy.vec = m.actions
	m.graphBy.vec = m.graphRequests
	m.toGraphBy = map[string]prometheus.Observer{}
	m.registry.MustRegister(
		m.requests, m.notifications, m.duplicates, m.authFailures, m.decisions, m.celErrors,
		m.graphRequests, m.actions, m.decisionToGraph, m.upstream, m.withheld, m.connsEvicted, m.connsShed, m.reloads, m.loadSeconds, m.policyInfo,
		m.tokenRequests, m.tenantTokenFailures,
		m.stateRequests, m.stateRoundTrips, m.stateSeconds, m.stateErrors, m.blocksStarted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "queue_depth",
			Help: "Notification batches waiting for a worker.",
		}, queueDepth),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// tokenRequest counts a token request to the authority.
func (m *metrics) tokenRequest(err error) {
	if err != nil {
		m.tokenRequests.WithLabelValues("error").Inc()
		return
	}
	m.tokenRequests.WithLabelValues("success").Inc()
}

// statusLabel names a response status, or the kind of transport error.
func statusLabel(status int, err error) string {
	if err == nil {
		return statusText(status)
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "error"
}
