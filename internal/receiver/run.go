package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// DefaultCredentialsDir is where the operator mounts the bot's Secret.
const DefaultCredentialsDir = "/var/run/secrets/callguard/credentials"

// DefaultShutdownGrace is how long the listener keeps serving after SIGTERM
// while readiness fails, so that load balancers stop sending first.
const DefaultShutdownGrace = 5 * time.Second

// Slow-client limits of the callback listener.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	// idleTimeout is short: an idle connection holds memory (see
	// connMemory), and Graph opens a new one in a millisecond.
	idleTimeout = 30 * time.Second
)

// Options are the receiver's command-line settings plus test hooks.
type Options struct {
	PolicyFile      string
	PolicyConfigMap string // NAMESPACE/NAME
	Listen          string
	MetricsListen   string
	CAFile          string
	CredentialsDir  string
	// StateDir holds the state key and the state store's credentials
	// (DefaultStateDir when empty).
	StateDir         string
	LogCallerNumbers bool
	// MaxConnections caps the open callback connections; 0 sizes the cap
	// from the container's memory limit (ConnectionLimit).
	MaxConnections int
	// RequestBudget is how long a request's body may take once its
	// headers are in (0: DefaultRequestBudget; tests lengthen it).
	RequestBudget time.Duration

	Logger *slog.Logger
	// Listener and MetricsListener, if set, replace Listen and MetricsListen.
	Listener        net.Listener
	MetricsListener net.Listener
	// Kube replaces the in-cluster / KUBECONFIG client for --policy-configmap.
	Kube kubernetes.Interface
	// ShutdownGrace replaces DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Server tunes the callback server.
	Server Config
	// OnServer, if set, is handed the server once it exists.
	OnServer func(*Server)
}

// Run serves until ctx ends, then shuts down gracefully: readiness fails at
// once, the listener keeps serving for the grace period, stops, and the
// acknowledged work is finished. It returns nil after a clean shutdown.
func Run(ctx context.Context, o Options) error {
	if (o.PolicyFile == "") == (o.PolicyConfigMap == "") {
		return errors.New("exactly one of --policy-file and --policy-configmap is required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if o.CredentialsDir == "" {
		o.CredentialsDir = DefaultCredentialsDir
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	grace := o.ShutdownGrace
	if grace <= 0 {
		grace = DefaultShutdownGrace
	}
	var cmNamespace, cmName string
	if o.PolicyConfigMap != "" {
		var ok bool
		cmNamespace, cmName, ok = strings.Cut(o.PolicyConfigMap, "/")
		if !ok || cmNamespace == "" || cmName == "" || strings.Contains(cmName, "/") {
			return fmt.Errorf("--policy-configmap %q: want NAMESPACE/NAME", o.PolicyConfigMap)
		}
	}
	httpClient, err := graph.NewHTTPClient(o.CAFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	kube := o.Kube
	if o.PolicyConfigMap != "" && kube == nil {
		if kube, err = kubeClient(); err != nil {
			return err
		}
	}
	ln, err := listen(o.Listener, o.Listen, fmt.Sprintf(":%d", v1alpha1.ReceiverPort))
	if err != nil {
		return err
	}
	mln, err := listen(o.MetricsListener, o.MetricsListen, fmt.Sprintf(":%d", v1alpha1.ReceiverMetricsPort))
	if err != nil {
		ln.Close()
		return err
	}

	cfg := o.Server
	cfg.Logger = log
	cfg.HTTPClient = httpClient
	cfg.LogCallerNumbers = o.LogCallerNumbers
	cfg.StateDir = o.StateDir
	srv := New(cfg)
	if o.OnServer != nil {
		o.OnServer(srv)
	}

	// Sources run until shutdown starts; a reload after that would be moot.
	srcCtx, stopSources := context.WithCancel(context.Background())
	var sources sync.WaitGroup
	if o.PolicyFile != "" {
		// A first load that fails leaves the receiver unready, not dead:
		// fixing the file brings it up.
		_ = srv.LoadPolicyFile(o.PolicyFile, o.CredentialsDir)
		sources.Go(func() {
			if err := WatchPolicyFile(srcCtx, o.PolicyFile, log, func() {
				_ = srv.LoadPolicyFile(o.PolicyFile, o.CredentialsDir)
			}); err != nil {
				log.Error("policy file watch stopped; reloads are off", "error", err)
			}
		})
	} else {
		sources.Go(func() {
			RunConfigMapSource(srcCtx, srv, kube, cmNamespace, cmName, o.CredentialsDir, log)
		})
	}

	limited := srv.limitConnections(ln, o.MaxConnections, o.RequestBudget)
	api := &http.Server{
		Handler:           srv,
		ConnState:         limited.connState,
		ConnContext:       limited.connContext,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ops := &http.Server{
		Handler:           opsHandler(srv),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- serve(api, limited) }()
	go func() { serveErr <- serve(ops, mln) }()
	log.Info("receiver listening", "listen", ln.Addr().String(), "metricsListen", mln.Addr().String(),
		"maxConnections", limited.max)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
		log.Error("listener failed", "error", runErr)
	}

	log.Info("shutting down")
	srv.BeginShutdown()
	stopSources()
	if runErr == nil {
		// Keep answering while endpoints are withdrawn.
		time.Sleep(grace)
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace+readTimeout)
	defer cancel()
	if err := api.Shutdown(sctx); err != nil {
		log.Warn("callback listener shutdown", "error", err)
	}
	// Queued decisions finish; each is bounded by its call's deadline.
	srv.Close()
	if err := ops.Shutdown(sctx); err != nil {
		log.Warn("metrics listener shutdown", "error", err)
	}
	sources.Wait()
	log.Info("receiver stopped")
	return runErr
}

func serve(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

func listen(given net.Listener, addr, def string) (net.Listener, error) {
	if given != nil {
		return given, nil
	}
	if addr == "" {
		addr = def
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// opsHandler serves health, readiness and metrics.
func opsHandler(srv *Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := srv.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(srv.Registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /decisions", srv.serveDecisions)
	mux.HandleFunc("GET /blocks", srv.serveBlocks)
	mux.HandleFunc("POST /blocks/unblock", srv.serveUnblock)
	return mux
}

// kubeClient uses the pod's ServiceAccount in the cluster, else KUBECONFIG
// (or ~/.kube/config).
func kubeClient() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}
