// Package harness drives callguard on a real cluster with the Graph emulator:
// the shared steps of `make demo` (hack/demo) and `make e2e` (test/e2e).
// It is test tooling: production code never imports it.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/telemetry"
)

// The demo bot. The secret is not a secret: it only opens the local emulator.
const (
	BotAppID    = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	BotTenantID = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
	BotSecret   = "local-emulator-secret"
)

// Cluster is a connection to the cluster under test.
type Cluster struct {
	Client     client.Client
	Clientset  kubernetes.Interface
	Kubeconfig string
}

// Connect opens the cluster of a kubeconfig file.
func Connect(kubeconfig string) (*Cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	// The tests time the cluster: client-go's default limiter (5 requests/s
	// after a burst of 10) would hold each request of a timed loop ~200 ms.
	cfg.QPS, cfg.Burst = 1000, 1000
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(callsv1alpha1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("clientset: %w", err)
	}
	return &Cluster{Client: c, Clientset: cs, Kubeconfig: kubeconfig}, nil
}

// Kubectl runs kubectl against the cluster, as a user would.
func (c *Cluster) Kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Emulator is a graph-emulator process reached over its HTTPS control API.
type Emulator struct {
	URL   string
	CAPEM []byte
	HTTP  *http.Client
}

// StartEmulator starts the graph-emulator binary in the background (it
// outlives this process, so the demo cluster keeps a Graph to talk to), with
// extra flags after the demo bot's, or reuses the one already running from
// stateDir.
func StartEmulator(ctx context.Context, bin, listen, stateDir string, extra ...string) (*Emulator, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, err
	}
	urlFile := filepath.Join(stateDir, "url")
	if e, err := openEmulator(ctx, stateDir, urlFile); err == nil {
		return e, nil
	}
	StopEmulator(stateDir)
	logf, err := os.Create(filepath.Join(stateDir, "emulator.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"--listen", listen, "--state-dir", stateDir,
		"--bot", fmt.Sprintf("appId=%s,tenantId=%s,secret=%s", BotAppID, BotTenantID, BotSecret)}, extra...)
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := os.WriteFile(filepath.Join(stateDir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return nil, err
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				lines <- u
			}
		}
	}()
	select {
	case u := <-lines:
		if err := os.WriteFile(urlFile, []byte(u), 0o644); err != nil {
			return nil, err
		}
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("graph-emulator did not print its address in 30 s; see %s", logf.Name())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_ = cmd.Process.Release()
	return openEmulator(ctx, stateDir, urlFile)
}

func openEmulator(ctx context.Context, stateDir, urlFile string) (*Emulator, error) {
	u, err := os.ReadFile(urlFile)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("ca.crt holds no certificate")
	}
	e := &Emulator{URL: strings.TrimSpace(string(u)), CAPEM: ca, HTTP: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}}
	var stats map[string]any
	if err := e.do(ctx, http.MethodGet, "/emulator/stats", nil, &stats); err != nil {
		return nil, err
	}
	return e, nil
}

// StopEmulator stops a background emulator started from stateDir.
func StopEmulator(stateDir string) {
	b, err := os.ReadFile(filepath.Join(stateDir, "pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	_ = os.Remove(filepath.Join(stateDir, "pid"))
	_ = os.Remove(filepath.Join(stateDir, "url"))
}

func (e *Emulator) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.URL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Record is the emulator's record of a call (GET /emulator/calls/{id}).
type Record struct {
	emulator.CallRecord
}

// Delivered reports whether the created notification reached the bot and
// was acknowledged (the deleted one of a missed call does not count).
func (r *Record) Delivered() bool {
	for _, h := range r.History {
		if h.Event == emulator.EventCreatedNotification && h.Status/100 == 2 {
			return true
		}
	}
	return false
}

// PlaceCall places a call to the demo bot whose callback is callback.
func (e *Emulator) PlaceCall(ctx context.Context, callback string, source *graph.IdentitySet, modalities []string) (string, error) {
	return e.PlaceCallIn(ctx, callback, "", source, modalities)
}

// PlaceCallIn places a call that arrives in tenant (one the demo bot is
// registered in; "" is its home tenant).
func (e *Emulator) PlaceCallIn(ctx context.Context, callback, tenant string, source *graph.IdentitySet, modalities []string) (string, error) {
	var call graph.Call
	err := e.do(ctx, http.MethodPost, "/emulator/calls", emulator.PlaceCallRequest{
		AppID: BotAppID, TenantID: tenant, CallbackURI: callback, Source: source, RequestedModalities: modalities,
	}, &call)
	return call.ID, err
}

// WaitEnded polls a call until it ended (endedBy set) or timeout passed.
func (e *Emulator) WaitEnded(ctx context.Context, id string, timeout time.Duration) (*Record, error) {
	deadline := time.Now().Add(timeout)
	for {
		r, err := e.Call(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.EndedBy != "" {
			return r, nil
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("call %s not ended after %s (state %s, action %q)", id, timeout, r.State, r.Action)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Call returns the emulator's record of a call.
func (e *Emulator) Call(ctx context.Context, id string) (*Record, error) {
	var r Record
	return &r, e.do(ctx, http.MethodGet, "/emulator/calls/"+id, nil, &r)
}

// WaitAction polls a call until Graph was acted on or quiet passes without
// action (an allowed call is never acted on).
func (e *Emulator) WaitAction(ctx context.Context, id string, quiet time.Duration) (*Record, error) {
	deadline := time.Now().Add(quiet)
	for {
		r, err := e.Call(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.Action != "" || r.Missed || time.Now().After(deadline) {
			return r, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Scenario is one scripted caller.
type Scenario struct {
	Caller     string
	Kind       string
	Source     *graph.IdentitySet
	Modalities []string
	// Tenant is the tenant the call arrives in ("" is the bot's home tenant).
	Tenant string
}

func phone(n string) *graph.IdentitySet {
	return &graph.IdentitySet{Phone: &graph.Identity{ID: n}}
}

// Scenarios are the demo's callers: one for each rule of the sample policy
// but repeat-callers, a few the default decides, and one whose call arrives
// in the bot's additional tenant.
func Scenarios(additionalTenant string) []Scenario {
	audio := []string{"audio"}
	return []Scenario{
		{"+14255550100", "phone (VIP)", phone("+14255550100"), audio, ""},
		{"+1 900 555 0123", "phone (premium rate)", phone("+1 900 555 0123"), audio, ""},
		{"+12125550143", "phone (robocaller list)", phone("+12125550143"), audio, ""},
		{"+15550101234", "phone (list range +1555010*)", phone("+15550101234"), audio, ""},
		{"+447700900123", "phone (UK mobile)", phone("+447700900123"), audio, ""},
		{"+14255550111", "phone", phone("+14255550111"), audio, ""},
		{"(anonymous)", "anonymous", nil, audio, ""},
		{"guest Pat", "guest", &graph.IdentitySet{Guest: &graph.Identity{ID: "3f6e2d90-5b1c-4e53-a7f0-9c0b8d2e4a11", DisplayName: "Pat (Guest)"}}, audio, ""},
		{"Ada Lovelace", "user", &graph.IdentitySet{User: &graph.Identity{ID: "8a34a46b-3d17-4adc-8dce-dc4e7d572698", DisplayName: "Ada Lovelace", TenantID: BotTenantID}}, []string{"audio", "video"}, ""},
		{"Scheduler bot", "application", &graph.IdentitySet{Application: &graph.Identity{ID: "0c9d7a52-2b8e-4f0a-8d61-3e5b1f7c2a90", DisplayName: "Scheduler"}}, audio, ""},
		{"+12125550178", "phone (robocaller), in the second tenant", phone("+12125550178"), audio, additionalTenant},
	}
}

// Apply creates or replaces objects (server-side apply, as kubectl apply --server-side).
func (c *Cluster) Apply(ctx context.Context, objs ...client.Object) error {
	for _, o := range objs {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return err
		}
		delete(u, "status")
		gvk, err := c.Client.GroupVersionKindFor(o)
		if err != nil {
			return err
		}
		u["apiVersion"], u["kind"] = gvk.GroupVersion().String(), gvk.Kind
		if md, ok := u["metadata"].(map[string]any); ok {
			delete(md, "creationTimestamp")
		}
		data, err := json.Marshal(u)
		if err != nil {
			return err
		}
		if err := c.Client.Patch(ctx, o, client.RawPatch("application/apply-patch+yaml", data),
			client.FieldOwner("callguard-harness"), client.ForceOwnership); err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk.Kind, o.GetName(), err)
		}
	}
	return nil
}

// EnsureNamespace creates a namespace if it does not exist.
func (c *Cluster) EnsureNamespace(ctx context.Context, ns string) error {
	err := c.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// WaitReady waits until the policy is Ready for its current generation.
func (c *Cluster) WaitReady(ctx context.Context, ns, name string, timeout time.Duration) (*callsv1alpha1.CallPolicy, error) {
	deadline := time.Now().Add(timeout)
	cp := &callsv1alpha1.CallPolicy{}
	for {
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cp)
		if err == nil && cp.Status.ObservedGeneration == cp.Generation &&
			meta.IsStatusConditionTrue(cp.Status.Conditions, "Ready") {
			return cp, nil
		}
		if time.Now().After(deadline) {
			return cp, fmt.Errorf("CallPolicy %s/%s not Ready after %s: %v (conditions %+v)", ns, name, timeout, err, cp.Status.Conditions)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// CallbackURL is the receivers' callback through their Service's ClusterIP
// (this machine reaches ClusterIPs through kube-proxy; there is no cluster DNS).
func (c *Cluster) CallbackURL(ctx context.Context, ns, policy, path string) (string, error) {
	svc := &corev1.Service{}
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(policy)}, svc); err != nil {
		return "", err
	}
	return "http://" + svc.Spec.ClusterIP + path, nil
}

// WaitCallbackReachable waits until the receivers' callback answers through
// the Service: a Ready Deployment can precede kube-proxy programming the
// Service's endpoints by a moment. An unauthenticated POST must get 401.
func WaitCallbackReachable(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	// A new connection each time: a kept-alive one would keep asking the
	// backend the first attempt happened to reach.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		resp, err := hc.Post(url, "application/json", strings.NewReader(`{"value":[]}`))
		if err == nil {
			if resp.StatusCode == http.StatusUnauthorized {
				resp.Body.Close()
				return nil
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			err = fmt.Errorf("unauthenticated POST got %s (%s), want 401", resp.Status, strings.TrimSpace(string(body)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("callback %s not reachable after %s: %w", url, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Decision is a receiver's record of one decided call, with the pod that
// logged it.
type Decision struct {
	telemetry.Decision
	Pod string
}

// Decisions reads the decision log lines of every receiver pod of a policy.
func (c *Cluster) Decisions(ctx context.Context, ns, policy string) (map[string]Decision, error) {
	pods, err := c.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(callsv1alpha1.ReceiverSelector(policy)).String()})
	if err != nil {
		return nil, err
	}
	out := map[string]Decision{}
	for _, p := range pods.Items {
		raw, err := c.Clientset.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			continue // a pod still starting has no log yet
		}
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			var line struct {
				Msg      string             `json:"msg"`
				Decision telemetry.Decision `json:"decision"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "decision" && line.Decision.CallID != "" {
				out[line.Decision.CallID] = Decision{Decision: line.Decision, Pod: p.Name}
			}
		}
	}
	return out, nil
}

// LivePolicyHashes returns the policy hash each ready receiver pod reports on
// its metrics endpoint (pod IPs are reachable from the node).
func (c *Cluster) LivePolicyHashes(ctx context.Context, ns, policy string) (map[string]string, error) {
	pods, err := c.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(callsv1alpha1.ReceiverSelector(policy)).String()})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		resp, err := hc.Get("http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(callsv1alpha1.ReceiverMetricsPort)) + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, telemetry.MetricPolicyInfo+`{hash="`); ok {
				if i := strings.IndexByte(rest, '"'); i > 0 {
					out[p.Name] = rest[:i]
				}
			}
		}
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ReceiverMetricsURLs are the metrics URLs of the ready receiver pods of a
// policy (pod IPs are reachable from the node), by pod name.
func (c *Cluster) ReceiverMetricsURLs(ctx context.Context, ns, policy string) (map[string]string, error) {
	pods, err := c.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(callsv1alpha1.ReceiverSelector(policy)).String()})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil && podReady(&p) {
			out[p.Name] = "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(callsv1alpha1.ReceiverMetricsPort)) + "/metrics"
		}
	}
	return out, nil
}

// WaitReceiversSwitch polls the receivers' metrics URLs (no API server in
// the loop) until every one reports the same policy hash other than old,
// and returns it and the time since start.
func WaitReceiversSwitch(ctx context.Context, urls map[string]string, old string, start time.Time, timeout time.Duration) (string, time.Duration, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	hashes := map[string]string{}
	var mu sync.Mutex
	for {
		// All pods at once: polled one after another, each round would take
		// as long as all the scrapes together and blur the figure.
		var wg sync.WaitGroup
		for pod, u := range urls {
			wg.Go(func() {
				if h, err := policyInfoHash(ctx, hc, u); err == nil {
					mu.Lock()
					hashes[pod] = h
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		var hash string
		all := len(hashes) == len(urls)
		for _, h := range hashes {
			all = all && h != old && (hash == "" || h == hash)
			hash = h
		}
		if all {
			return hash, time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return "", 0, fmt.Errorf("receivers did not all switch from policy %s within %s: %v", old, timeout, hashes)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func policyInfoHash(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, telemetry.MetricPolicyInfo+`{hash="`); ok {
			if i := strings.IndexByte(rest, '"'); i > 0 {
				return rest[:i], nil
			}
		}
	}
	return "", fmt.Errorf("%s: no %s", url, telemetry.MetricPolicyInfo)
}

// WaitPolicyLive waits until the operator has compiled a policy hash other
// than old and every ready receiver reports it. It returns the new hash and
// when each of the two happened, measured from start.
func (c *Cluster) WaitPolicyLive(ctx context.Context, ns, policy, old string, start time.Time, timeout time.Duration) (hash string, compiled, live time.Duration, err error) {
	deadline := start.Add(timeout)
	cp := &callsv1alpha1.CallPolicy{}
	for {
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: policy}, cp); err == nil && cp.Status.PolicyHash != old && cp.Status.PolicyHash != "" {
			hash, compiled = cp.Status.PolicyHash, time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			return "", 0, 0, fmt.Errorf("the operator did not publish a new policy hash within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for {
		hashes, err := c.LivePolicyHashes(ctx, ns, policy)
		if err == nil && len(hashes) > 0 {
			all := true
			for _, h := range hashes {
				all = all && h == hash
			}
			if all {
				return hash, compiled, time.Since(start), nil
			}
		}
		if time.Now().After(deadline) {
			return hash, compiled, 0, fmt.Errorf("receivers did not all report policy %s within %s: %v", hash, timeout, hashes)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
