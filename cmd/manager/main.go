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
	)
	flag.StringVar(&receiverImage, "receiver-image", os.Getenv("RECEIVER_IMAGE"), "receiver image for policies that set none (default: $RECEIVER_IMAGE)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the https metrics endpoint, served to callers allowed GET /metrics (0 disables it)")
	flag.StringVar(&metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for the metrics endpoint (default: a self-signed certificate made at start)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the health probes")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so only one replica reconciles")
	flag.StringVar(&watchNamespaces, "namespaces", "", "comma-separated namespaces to watch (default: all)")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", 4, "how many CallPolicies reconcile at once")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(callsv1alpha1.AddToScheme(scheme))

	var namespaces []string
	for _, ns := range strings.Split(watchNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			namespaces = append(namespaces, ns)
		}
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  controllers.CacheOptions(namespaces),
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
		Client:                  mgr.GetClient(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                mgr.GetEventRecorder("callguard-manager"),
		ReceiverImage:           receiverImage,
		MaxConcurrentReconciles: concurrency,
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
	log.Info("starting manager", "receiverImage", receiverImage, "namespaces", watchNamespaces)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "run manager")
		os.Exit(1)
	}
}
