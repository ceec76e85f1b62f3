// Command manager runs the callguard operator.
package main

import (
	"flag"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/controllers"
)

func main() {
	var (
		receiverImage   string
		metricsAddr     string
		metricsCertDir  string
		probeAddr       string
		leaderElect     bool
		watchNamespaces string
		concurrency     int
		scrapers        string
	)
	flag.StringVar(&receiverImage, "receiver-image", os.Getenv("RECEIVER_IMAGE"), "receiver image for policies that set none (default: $RECEIVER_IMAGE)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the https metrics endpoint, served to callers allowed GET /metrics (0 disables it)")
	flag.StringVar(&metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for the metrics endpoint (default: a self-signed certificate made at start)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the health probes")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so only one replica reconciles")
	flag.StringVar(&watchNamespaces, "namespaces", "", "comma-separated namespaces to watch (default: all)")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", 4, "how many CallPolicies reconcile at once")
	flag.StringVar(&scrapers, "metrics-scraper-namespaces", "", "comma-separated namespaces whose pods may reach the receivers' metrics port, for policies that set no spec.receiver.networkPolicy.metricsFrom (default: none; the API server always may)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(callsv1alpha1.AddToScheme(scheme))
	utilruntime.Must(gatewayv1.Install(scheme))

	namespaces := splitList(watchNamespaces)
	cfg := ctrl.GetConfigOrDie()
	// Decided once: HTTPRoutes are watched only if the Gateway API's CRDs
	// are installed now (install them, then restart the operator).
	gatewayAPI, err := controllers.GatewayAPIInstalled(cfg)
	if err != nil {
		log.Error(err, "discover the Gateway API")
		os.Exit(1)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  controllers.CacheOptions(namespaces, gatewayAPI),
		Metrics:                controllers.MetricsOptions(metricsAddr, metricsCertDir),
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "callguard-manager.callguard.dev",
	})
	if err != nil {
		log.Error(err, "create manager")
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	r := &controllers.CallPolicyReconciler{
		Client:                   mgr.GetClient(),
		Scheme:                   mgr.GetScheme(),
		Recorder:                 mgr.GetEventRecorder("callguard-manager"),
		ReceiverImage:            receiverImage,
		MaxConcurrentReconciles:  concurrency,
		GatewayAPI:               gatewayAPI,
		MetricsScraperNamespaces: splitList(scrapers),
		CheckGraphAccess:         true,
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		log.Error(err, "set up CallPolicy controller")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "add health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "add ready check")
		os.Exit(1)
	}
	if receiverImage == "" {
		log.Info("no --receiver-image or RECEIVER_IMAGE: policies must set spec.receiver.image")
	}
	log.Info("starting manager", "receiverImage", receiverImage, "namespaces", watchNamespaces,
		"gatewayAPI", gatewayAPI, "metricsScraperNamespaces", scrapers)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "run manager")
		os.Exit(1)
	}
}

// splitList splits a comma-separated flag, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
