// Command receiver is callguard's Graph callback: it decides incoming calls
// by a CallPolicy and rejects, redirects or forwards them.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/receiver"
)

func main() {
	var o receiver.Options
	flag.StringVar(&o.PolicyFile, "policy-file", "", "standalone: multi-document YAML with one CallPolicy, the ConfigMaps its numberLists name and the Secret its credentials name; reloaded on change")
	flag.StringVar(&o.PolicyConfigMap, "policy-configmap", "", "in the cluster: NAMESPACE/NAME of the compiled policy ConfigMap, watched through the Kubernetes API")
	flag.StringVar(&o.Listen, "listen", fmt.Sprintf(":%d", v1alpha1.ReceiverPort), "address of the Graph callback listener")
	flag.StringVar(&o.MetricsListen, "metrics-listen", fmt.Sprintf(":%d", v1alpha1.ReceiverMetricsPort), "address of /metrics, /healthz and /readyz")
	flag.StringVar(&o.CAFile, "ca-file", "", "PEM file of extra roots trusted for Graph, the token authority and the OpenID configuration")
	flag.StringVar(&o.CredentialsDir, "credentials-dir", receiver.DefaultCredentialsDir, "directory holding the bot Secret's client-secret, or tls.crt and tls.key (used when the policy source carries no Secret)")
	flag.StringVar(&o.StateDir, "state-dir", receiver.DefaultStateDir, "directory holding the policy's state key (file key: hashes callers in the state store, signs announcement steps; absent: a random key of this process) and the state store's redis-username, redis-password and redis-ca.crt, read on every policy apply")
	flag.StringVar(&o.Server.CallbackURL, "callback-url", "", "the public https URL Graph reaches the callback at (the policy's status.receiver.callbackURL): Announce answers calls with it and serves ConfigMap prompts under {callback-url}/prompts/; without it Announce decisions reject the call")
	flag.BoolVar(&o.LogCallerNumbers, "log-caller-numbers", false, "log callers' numbers in full instead of their last four digits")
	flag.IntVar(&o.MaxConnections, "max-connections", 0, "cap on open callback connections; at the cap the longest-idle one is closed (0: sized from the container memory limit)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "receiver: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := receiver.CheckCallbackURL(o.Server.CallbackURL); err != nil {
		fmt.Fprintf(os.Stderr, "receiver: %v\n", err)
		os.Exit(2)
	}
	o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	receiver.TuneGC(o.Logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := receiver.Run(ctx, o); err != nil {
		o.Logger.Error("receiver failed", "error", err)
		os.Exit(1)
	}
}
