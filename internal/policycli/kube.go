package policycli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// metricsAccept asks for Prometheus' text format.
const metricsAccept = "text/plain;version=0.0.4;q=1,*/*;q=0.1"

// proxyTimeout bounds one request through the pod proxy.
const proxyTimeout = 10 * time.Second

var (
	scheme       = runtime.NewScheme()
	callPolicies = v1alpha1.GroupVersion.WithResource("callpolicies")
)

func init() {
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
}

// kube holds the clients of a command that reaches a cluster.
type kube struct {
	core      kubernetes.Interface
	dyn       dynamic.Interface
	namespace string
}

// notFoundError is a CallPolicy that does not exist.
type notFoundError struct{ name, namespace string }

func (e *notFoundError) Error() string {
	return fmt.Sprintf("CallPolicy %q not found in namespace %q", e.name, e.namespace)
}

// clients builds the clients from kubectl's flags (-n, --context,
// --kubeconfig, ...), as kubectl does.
func (c *command) clients() (*kube, error) {
	cfg, err := c.kube.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	ns, _, err := c.kube.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kube{core: core, dyn: dyn, namespace: ns}, nil
}

// callPolicy reads a CallPolicy. The unstructured object is returned too,
// for status fields newer than this plugin's API types.
func (k *kube) callPolicy(ctx context.Context, name string) (*v1alpha1.CallPolicy, *unstructured.Unstructured, error) {
	u, err := k.dyn.Resource(callPolicies).Namespace(k.namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, &notFoundError{name: name, namespace: k.namespace}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("get CallPolicy %q in namespace %q: %w", name, k.namespace, err)
	}
	cp := &v1alpha1.CallPolicy{}
	if err := scheme.Convert(u, cp, nil); err != nil {
		return nil, nil, fmt.Errorf("read CallPolicy %q in namespace %q: %w", name, k.namespace, err)
	}
	return cp, u, nil
}

// compilePolicy reads a CallPolicy and the ConfigMaps its numberLists and
// announce prompts name from the cluster and compiles it as the operator does, reporting problems
// on stderr. On failure it returns the exit status: exitInvalid when the
// policy or a list does not compile, exitError when the cluster could not
// be read.
func (k *kube) compilePolicy(s streams, name string) (*policy.Policy, int) {
	cp, _, err := k.callPolicy(s.ctx, name)
	if err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return nil, exitError
	}
	src := &policy.Source{Namespace: cp.Namespace, Name: cp.Name, Spec: cp.Spec, Lists: map[policy.ListRef]string{}, Prompts: map[policy.ListRef][]byte{}}
	configMaps := map[string]*corev1.ConfigMap{}
	// configMap reads a ConfigMap once; nil when it does not exist, which
	// the compiler reports for the list or prompt that names it.
	configMap := func(name string) (*corev1.ConfigMap, bool) {
		cm, seen := configMaps[name]
		if seen {
			return cm, true
		}
		cm, err := k.core.CoreV1().ConfigMaps(cp.Namespace).Get(s.ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cm = nil
		case err != nil:
			fmt.Fprintf(s.stderr, "error: get ConfigMap %q in namespace %q: %v\n", name, cp.Namespace, err)
			return nil, false
		}
		configMaps[name] = cm
		return cm, true
	}
	for _, ref := range policy.PromptRefs(&cp.Spec) {
		cm, ok := configMap(ref.Name)
		if !ok {
			return nil, exitError
		}
		if cm == nil {
			continue
		}
		if b, found := cm.BinaryData[ref.Key]; found {
			src.Prompts[ref] = b
		}
	}
	for _, ref := range policy.ListRefs(&cp.Spec) {
		cm, ok := configMap(ref.Name)
		if !ok {
			return nil, exitError
		}
		if cm == nil {
			continue
		}
		text, found, err := policy.ListText(ref.Name, ref.Key, cm.Data, cm.BinaryData)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: namespace %q: %v\n", cp.Namespace, err)
			return nil, exitInvalid
		}
		if found {
			src.Lists[ref] = text
		}
	}
	where := "CallPolicy " + cp.Namespace + "/" + cp.Name
	locate := func(policy.FieldError) string { return where }
	p, ok := compile(src, locate, s.stderr)
	if !ok {
		return nil, exitInvalid
	}
	printProblems(s.stderr, "warning", locate, p.Warnings())
	return p, exitOK
}

// deploymentName is the receiver Deployment the operator makes for a policy.
func deploymentName(policyName string) string { return v1alpha1.ReceiverName(policyName) }

// receiverPods lists the pods of a policy's receiver Deployment, by name.
// A missing Deployment is no error: it has no pods.
func (k *kube) receiverPods(ctx context.Context, policyName string) ([]corev1.Pod, error) {
	dep, err := k.core.AppsV1().Deployments(k.namespace).Get(ctx, deploymentName(policyName), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Deployment %q: %w", deploymentName(policyName), err)
	}
	return k.podsOf(ctx, dep)
}

func (k *kube) podsOf(ctx context.Context, dep *appsv1.Deployment) ([]corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("Deployment %q: selector: %w", dep.Name, err)
	}
	list, err := k.core.CoreV1().Pods(k.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list the pods of Deployment %q: %w", dep.Name, err)
	}
	pods := list.Items
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return pods, nil
}

// metricsPort is the port of a pod's container port named "metrics", or
// the receiver's default.
func metricsPort(pod *corev1.Pod) string {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "metrics" {
				return strconv.Itoa(int(p.ContainerPort))
			}
		}
	}
	// A pod that names no port "metrics" listens where the operator's do.
	return strconv.Itoa(v1alpha1.ReceiverMetricsPort)
}

// proxyGet GETs a path of a pod's metrics port through the API server's pod
// proxy, so that kubectl's authentication and RBAC (pods/proxy) apply.
func (k *kube) proxyGet(ctx context.Context, pod *corev1.Pod, path string, params map[string]string, accept string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, proxyTimeout)
	defer cancel()
	// What Pods().ProxyGet does, with an Accept header.
	req := k.core.CoreV1().RESTClient().Get().
		Namespace(pod.Namespace).
		Resource("pods").
		SubResource("proxy").
		Name(utilnet.JoinSchemeNamePort("http", pod.Name, metricsPort(pod))).
		Suffix(path).
		SetHeader("Accept", accept)
	for k, v := range params {
		req = req.Param(k, v)
	}
	body, err := req.DoRaw(ctx)
	if err != nil {
		return nil, proxyError(err, body)
	}
	return body, nil
}

// proxyPost POSTs a JSON body to a path of a pod's metrics port through the
// API server's pod proxy (RBAC: create on pods/proxy).
func (k *kube) proxyPost(ctx context.Context, pod *corev1.Pod, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, proxyTimeout)
	defer cancel()
	resp, err := k.core.CoreV1().RESTClient().Post().
		Namespace(pod.Namespace).
		Resource("pods").
		SubResource("proxy").
		Name(utilnet.JoinSchemeNamePort("http", pod.Name, metricsPort(pod))).
		Suffix(path).
		SetHeader("Content-Type", "application/json").
		SetHeader("Accept", "application/json").
		Body(body).
		DoRaw(ctx)
	if err != nil {
		return nil, proxyError(err, resp)
	}
	return resp, nil
}

// proxyError shortens what the API server says when it cannot reach a pod,
// and words a receiver's own {"error": …} answer as the receiver did.
func proxyError(err error, body []byte) error {
	var se *apierrors.StatusError
	var answer struct {
		// Error is a receiver's own; Kind and Message the API server's
		// Status, which client-go leaves undecoded for proxied requests
		// (its error then says only "unknown").
		Error   string `json:"error"`
		Kind    string `json:"kind"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &answer) == nil && answer.Kind == "Status" && answer.Message != "" {
		return errors.New(answer.Message)
	}
	if answer.Error != "" {
		if errors.As(err, &se) && se.ErrStatus.Code != 0 {
			return fmt.Errorf("%s (HTTP %d)", answer.Error, se.ErrStatus.Code)
		}
		return errors.New(answer.Error)
	}
	if errors.As(err, &se) && se.ErrStatus.Message != "" {
		return errors.New(strings.TrimSpace(se.ErrStatus.Message))
	}
	if len(body) > 0 && len(body) < 512 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(body)))
	}
	return err
}

// running reports whether a pod can be asked for its metrics and
// decisions; a terminating pod still can.
func running(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != ""
}

// podReady is the pod's Ready condition.
func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
