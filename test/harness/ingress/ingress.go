// Package ingress reaches callguard's receivers the way Graph does: through
// the local cluster's ingress controller (hack/local-cluster/addons.sh:
// Traefik terminating TLS on the node address for *.callguard.test) at the
// public https URL a CallPolicy's spec.receiver.expose.ingress publishes in
// status.receiver.callbackURL. `make demo` (hack/demo) and `make e2e`
// (test/e2e) share it. It is test tooling: production code never imports it.
package ingress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/test/harness"
)

// ClassName is the IngressClass of the local cluster's Traefik.
const ClassName = "traefik"

// Env is the ingress of the local cluster, as `hack/local-cluster/addons.sh
// env` prints it.
type Env struct {
	Domain   string // names under it reach the ingress (callguard.test)
	Address  string // where the ingress listens, IP:port (10.213.0.1:443)
	CAFile   string // the CA that signed the ingress certificate
	CertFile string // the certificate for *.Domain (tls.crt of the Secrets)
	KeyFile  string
}

// FromEnv reads the CALLGUARD_INGRESS_* variables.
func FromEnv() (*Env, error) {
	e := &Env{
		Domain: os.Getenv("CALLGUARD_INGRESS_DOMAIN"), Address: os.Getenv("CALLGUARD_INGRESS_ADDRESS"),
		CAFile: os.Getenv("CALLGUARD_INGRESS_CA"), CertFile: os.Getenv("CALLGUARD_INGRESS_TLS_CERT"),
		KeyFile: os.Getenv("CALLGUARD_INGRESS_TLS_KEY"),
	}
	if e.Domain == "" || e.Address == "" || e.CAFile == "" || e.CertFile == "" || e.KeyFile == "" {
		return nil, errors.New("CALLGUARD_INGRESS_* are not set: run hack/local-cluster/addons.sh up, then eval \"$(hack/local-cluster/addons.sh env)\" (make demo and make e2e do)")
	}
	if _, _, err := net.SplitHostPort(e.Address); err != nil {
		return nil, fmt.Errorf("CALLGUARD_INGRESS_ADDRESS %q: %w", e.Address, err)
	}
	return e, nil
}

// Host is name's public DNS name under the ingress domain.
func (e *Env) Host(name string) string { return name + "." + e.Domain }

// EmulatorArgs are the graph-emulator flags that make it deliver to the
// hosts' public https URLs: each host dialled at the ingress address (no DNS
// names it), and the ingress CA trusted.
func (e *Env) EmulatorArgs(hosts ...string) []string {
	ip, port, _ := net.SplitHostPort(e.Address)
	args := []string{"--callback-ca", e.CAFile}
	for _, h := range hosts {
		args = append(args, "--resolve", h+":"+port+":"+ip)
	}
	return args
}

// TLSSecret is the ingress certificate as a kubernetes.io/tls Secret.
func (e *Env) TLSSecret(ns, name string) (*corev1.Secret, error) {
	crt, err := os.ReadFile(e.CertFile)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(e.KeyFile)
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key},
	}, nil
}

// Expose publishes cp's callback at https://host through the local
// cluster's Traefik, with the certificate of the Secret tlsSecret.
func Expose(cp *callsv1alpha1.CallPolicy, host, tlsSecret string) {
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{
		ClassName: ClassName, Host: host, TLSSecretName: tlsSecret,
	}}
}

// Client is an HTTP client for the public URLs: every host is dialled at
// the ingress address (no DNS names them), and only the ingress CA is
// trusted.
func (e *Env) Client(timeout time.Duration) (*http.Client, error) {
	pem, err := os.ReadFile(e.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", e.CAFile)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, e.Address)
		},
	}}, nil
}

// WaitCallbackURL waits until the policy publishes status.receiver.callbackURL.
func WaitCallbackURL(ctx context.Context, c *harness.Cluster, ns, name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		cp := &callsv1alpha1.CallPolicy{}
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cp)
		if err == nil && cp.Status.Receiver.CallbackURL != "" {
			return cp.Status.Receiver.CallbackURL, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("CallPolicy %s/%s has no status.receiver.callbackURL after %s (%v)", ns, name, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitReachable waits until an unauthenticated POST to the public URL gets
// the receivers' 401 through the ingress: Traefik has the Ingress, its
// certificate and the receivers' endpoints.
func (e *Env) WaitReachable(ctx context.Context, url string, timeout time.Duration) error {
	hc, err := e.Client(3 * time.Second)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"value":[]}`))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("unauthenticated POST got %s (%s), want the receivers' 401", resp.Status, strings.TrimSpace(string(body)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable through the ingress (%s) after %s: %w", url, e.Address, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
