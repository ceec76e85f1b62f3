package policycli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// One API server (envtest: a real kube-apiserver and etcd) for the package,
// started by the first test that needs it; each test works in its own
// namespace. The offline tests need none.
var (
	clusterOnce sync.Once
	clusterErr  error
	testEnv     *envtest.Environment
	kubeconfig  string
	k8s         client.Client
	core        kubernetes.Interface
	nsCount     atomic.Int32
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testEnv != nil {
		_ = testEnv.Stop()
		_ = os.RemoveAll(filepath.Dir(kubeconfig))
	}
	os.Exit(code)
}

// cluster starts the package's API server once, with the CallPolicy CRD,
// and writes a kubeconfig for it that the commands get with --kubeconfig.
func cluster(t *testing.T) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run the tests with `make test` (it builds kube-apiserver and etcd)")
	}
	clusterOnce.Do(func() { clusterErr = startCluster() })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
}

func startCluster() error {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start envtest: %w", err)
	}
	testEnv = env
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return err
	}
	if err := appsv1.AddToScheme(s); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: s}); err != nil {
		return err
	}
	if core, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "callpolicy-kubeconfig")
	if err != nil {
		return err
	}
	kubeconfig = filepath.Join(dir, "kubeconfig")
	return writeKubeconfig(cfg, kubeconfig)
}

func writeKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// newNamespace makes a fresh namespace for one test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%100000, nsCount.Add(1))
	create(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	return name
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// kubectl runs the plugin against the test cluster.
func kubectl(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(args, "--kubeconfig", kubeconfig)
	code := RunContext(ctx, args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// podIP is an address of this machine that the API server will proxy to:
// it refuses loopback, link-local and unspecified pod IPs ("address not
// allowed"), so the test servers listen on a global unicast address of a
// local interface, which the API server on the same machine reaches.
func podIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no global unicast IPv4 address: the API server's pod proxy refuses loopback pod IPs, so it cannot reach a test server")
	return ""
}

// podServer is a plain HTTP server on podIP:0 serving a pod's metrics port.
type podServer struct {
	port int
	mu   sync.Mutex
	// queries are the raw queries of the /decisions requests.
	queries []string
}

func (p *podServer) decisionQueries() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.queries...)
}

// servePod serves a pod's /decisions and /metrics on podIP:0 until the
// test ends.
func servePod(t *testing.T, ip string, decisions func(since string) string, metrics string) *podServer {
	t.Helper()
	ps := &podServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /decisions", func(w http.ResponseWriter, r *http.Request) {
		ps.mu.Lock()
		ps.queries = append(ps.queries, r.URL.RawQuery)
		ps.mu.Unlock()
		w.Header().Set("Content-Type", "application/jsonl")
		fmt.Fprint(w, decisions(r.URL.Query().Get("since")))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, metrics)
	})
	ps.port = servePodMux(t, ip, mux)
	return ps
}

// servePodMux serves mux as a pod's port on ip:0 until the test ends and
// returns the port.
func servePodMux(t *testing.T, ip string, mux *http.ServeMux) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// receivers creates the Deployment of a policy's receivers and a pod of it
// per port, named <deployment>-a, -b, …: running at ip:port, or Pending
// without an IP for port 0.
func receivers(t *testing.T, ns, policyName, ip string, ports ...int) {
	t.Helper()
	receiverDeployment(t, ns, policyName)
	for i, port := range ports {
		name := fmt.Sprintf("%s-%c", deploymentName(policyName), 'a'+i)
		if port == 0 {
			receiverPod(t, ns, policyName, name, corev1.PodPending, "", 0)
			continue
		}
		receiverPod(t, ns, policyName, name, corev1.PodRunning, ip, port)
	}
}

// receiverDeployment creates the Deployment the operator would make for a
// policy, without pods (envtest runs no controllers).
func receiverDeployment(t *testing.T, ns, policyName string) {
	t.Helper()
	labels := v1alpha1.ReceiverSelector(policyName)
	create(t, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: deploymentName(policyName)},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "receiver", Image: "example.com/callguard:test"}}},
			},
		},
	})
}

// receiverPod creates a pod of the policy's Deployment and gives it the
// status a kubelet would: phase, IP and readiness. port is its container
// port "metrics"; 0 leaves the port out, so the default 8081 applies.
func receiverPod(t *testing.T, ns, policyName, name string, phase corev1.PodPhase, ip string, port int) {
	t.Helper()
	c := corev1.Container{Name: "receiver", Image: "example.com/callguard:test",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	if port != 0 {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: int32(port)})
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: v1alpha1.ReceiverSelector(policyName)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{c}},
	}
	create(t, pod)
	pod.Status.Phase = phase
	if phase == corev1.PodRunning {
		pod.Status.PodIP = ip
		pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	}
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatalf("update pod status: %v", err)
	}
}

// callPolicy creates a CallPolicy from a policy file's spec and sets its
// status: the policy hash and the Ready condition.
func callPolicy(t *testing.T, ns, name string, spec v1alpha1.CallPolicySpec, hash string, ready metav1.ConditionStatus) *v1alpha1.CallPolicy {
	t.Helper()
	cp := &v1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	create(t, cp)
	if hash == "" && ready == "" {
		return cp
	}
	reason, msg := "ReceiversAvailable", "2 of 2 receivers available"
	if ready != metav1.ConditionTrue {
		reason, msg = "PolicyInvalid", "spec.rules[1].match.callers.numberPatterns[0]: error parsing regexp: missing closing )"
	}
	cp.Status = v1alpha1.CallPolicyStatus{
		ObservedGeneration: cp.Generation,
		Rules:              int32(len(spec.Rules)),
		PolicyHash:         hash,
		Receiver:           v1alpha1.ReceiverStatus{Replicas: 2, ReadyReplicas: 2, Service: v1alpha1.ReceiverName(name), CallbackPath: "/api/calls"},
		Conditions: []metav1.Condition{
			{Type: "Ready", Status: ready, Reason: reason, Message: msg, ObservedGeneration: cp.Generation, LastTransitionTime: metav1.Now()},
			{Type: "Stalled", Status: metav1.ConditionFalse, Reason: "Converged", ObservedGeneration: cp.Generation, LastTransitionTime: metav1.Now()},
		},
	}
	if err := k8s.Status().Update(context.Background(), cp); err != nil {
		t.Fatalf("update CallPolicy status: %v", err)
	}
	return cp
}

// sampleSpec is the spec of the sample policy the offline tests use, and
// its robocallers list.
func sampleSpec(t *testing.T) (v1alpha1.CallPolicySpec, map[policy.ListRef]string) {
	t.Helper()
	b, err := policy.LoadFiles(sample)
	if err != nil {
		t.Fatal(err)
	}
	return b.Source.Spec, b.Source.Lists
}
