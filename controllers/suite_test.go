package controllers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

const testReceiverImage = "example.com/callguard:test"

// testScraperNamespace is the suite manager's --metrics-scraper-namespaces.
const testScraperNamespace = "monitoring"

// One API server (envtest: a real kube-apiserver and etcd) and one manager
// for the package; each test works in its own namespace.
var (
	k8s     client.Client
	cfg     *rest.Config
	testMgr ctrl.Manager
	scheme  = runtime.NewScheme()
	nsCount atomic.Int32
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run the tests with `make test` (it builds kube-apiserver and etcd)")
		return 1
	}
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(callsv1alpha1.AddToScheme(scheme))
	utilruntime.Must(gatewayv1.Install(scheme))
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))

	// The suite's API server serves the Gateway API's HTTPRoutes (the CRD
	// from the module go.mod pins); TestWithoutGatewayAPI runs one without.
	httpRouteCRD, err := gatewayAPICRD("gateway.networking.k8s.io_httproutes.yaml")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases"), httpRouteCRD},
		ErrorIfCRDPathMissing: true,
	}
	// envtest's default /24 of Service IPs runs out after ~250 policies;
	// the convergence benchmark creates 200 per iteration.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.0.0.0/16")
	cfg, err = env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()

	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The cache as cmd/manager configures it; metrics are tested on a
	// manager of their own (TestMetricsNeedAnAuthorizedCaller).
	// As cmd/manager decides it.
	gatewayAPI, err := GatewayAPIInstalled(cfg)
	if err != nil || !gatewayAPI {
		fmt.Fprintln(os.Stderr, "the suite's API server should serve HTTPRoutes:", gatewayAPI, err)
		return 1
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Cache: CacheOptions(nil, gatewayAPI), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	r := &CallPolicyReconciler{
		Client:                   mgr.GetClient(),
		Scheme:                   mgr.GetScheme(),
		Recorder:                 mgr.GetEventRecorder("callguard-manager"),
		ReceiverImage:            testReceiverImage,
		MaxConcurrentReconciles:  4,
		GatewayAPI:               gatewayAPI,
		MetricsScraperNamespaces: []string{testScraperNamespace},
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	testMgr = mgr
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "manager stopped:", err)
	}
	return code
}

func zapLevel() zapcore.Level {
	if os.Getenv("CALLGUARD_TEST_VERBOSE") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel // keep `go test` output readable
}

// newNamespace makes a fresh namespace for one test.
func newNamespace(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%100000, nsCount.Add(1))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return name
}

// gatewayAPICRD is the path of one of the Gateway API's standard CRDs in the
// module go.mod requires (sigs.k8s.io/gateway-api), from the module cache.
func gatewayAPICRD(name string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find the gateway-api module: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("the gateway-api module is not downloaded (go mod download sigs.k8s.io/gateway-api)")
	}
	p := filepath.Join(dir, "config", "crd", "standard", name)
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// startAPIServer starts an API server of the test's own (envtest), serving
// the CallGuard CRDs but not the Gateway API's, stopped when the test ends;
// for tests whose manager must not share policies with the suite's.
func startAPIServer(t *testing.T) (*rest.Config, client.Client) {
	t.Helper()
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	apiCfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(apiCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return apiCfg, c
}

// managerOptions is how a test's own manager differs from the suite's.
type managerOptions struct {
	// What names the manager in the test's failures.
	What string
	// Config reaches the API server, as the manager's user.
	Config *rest.Config
	// Namespaces is the cache's --namespaces (nil: all).
	Namespaces       []string
	GatewayAPI       bool
	CheckGraphAccess bool
}

// startManager sets the CallPolicy controller up on a manager of the test's
// own, as cmd/manager does with opts, and runs it until the test ends.
func startManager(t *testing.T, opts managerOptions) (ctrl.Manager, *CallPolicyReconciler) {
	t.Helper()
	mgr, err := ctrl.NewManager(opts.Config, ctrl.Options{
		Scheme:  scheme,
		Cache:   CacheOptions(opts.Namespaces, opts.GatewayAPI),
		Metrics: metricsserver.Options{BindAddress: "0"},
		// The suite's manager runs a controller of the same name. Should the
		// cache not sync, the controller gives up in time for the test to
		// report it.
		Controller: config.Controller{SkipNameValidation: ptr.To(true), CacheSyncTimeout: eventually},
	})
	if err != nil {
		t.Fatalf("%s: %v", opts.What, err)
	}
	r := &CallPolicyReconciler{
		Client:           mgr.GetClient(),
		Scheme:           mgr.GetScheme(),
		Recorder:         mgr.GetEventRecorder("callguard-manager"),
		ReceiverImage:    testReceiverImage,
		GatewayAPI:       opts.GatewayAPI,
		CheckGraphAccess: opts.CheckGraphAccess,
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		cancel()
		t.Fatalf("%s: setup: %v", opts.What, err)
	}
	runManager(t, ctx, cancel, mgr, opts.What)
	return mgr, r
}

// runManager runs a test's own manager until the test ends (cancel stops
// it), and fails the test if it stops with an error or not within a minute.
func runManager(t *testing.T, ctx context.Context, cancel context.CancelFunc, mgr ctrl.Manager, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(time.Minute):
			t.Errorf("%s did not stop within a minute", what)
		}
	})
}
