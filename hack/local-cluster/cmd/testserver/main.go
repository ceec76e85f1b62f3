// Command testserver is the local cluster's smoke-test workload (see
// smoke-test.sh). It has three modes:
//
//	testserver serve [-addr :8080]   answer every request with "testserver <hostname>"
//	testserver get URL [-expect S]   GET URL (retrying for up to -timeout) and print the body
//	testserver apicheck [-get URL]   from inside a pod: reach the API server through the
//	                                 kubernetes Service with the pod's service-account token
//	                                 (GET /version, POST a SelfSubjectReview), then optionally GET URL
//
// It uses only the standard library so it packs into a tiny static image.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testserver serve|get|apicheck [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "apicheck":
		err = apicheck(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testserver %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", ":8080", "listen address")
	_ = fs.Parse(args)
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr:              *addr,
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "testserver %s\n", host)
		}),
	}
	fmt.Printf("serving on %s\n", *addr)
	return srv.ListenAndServe()
}

// fetch GETs url with client, retrying until timeout; it returns the body of
// the first 200 answer.
func fetch(client *http.Client, url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for attempt := 0; ; attempt++ {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			last = fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("GET %s: %w (after %d attempts)", url, last, attempt+1)
		}
		time.Sleep(time.Second)
	}
}

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	expect := fs.String("expect", "", "fail unless the body contains this")
	timeout := fs.Duration("timeout", 30*time.Second, "keep retrying this long")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("usage: testserver get URL")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	body, err := fetch(client, fs.Arg(0), *timeout)
	if err != nil {
		return err
	}
	fmt.Print(body)
	if !strings.Contains(body, *expect) {
		return fmt.Errorf("body does not contain %q", *expect)
	}
	return nil
}

func apicheck(args []string) error {
	fs := flag.NewFlagSet("apicheck", flag.ExitOnError)
	also := fs.String("get", "", "also GET this URL (e.g. another Service's ClusterIP)")
	expect := fs.String("expect", "", "with -get: fail unless the body contains this")
	timeout := fs.Duration("timeout", 30*time.Second, "keep retrying this long")
	_ = fs.Parse(args)

	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return errors.New("KUBERNETES_SERVICE_HOST/PORT not set: not in a pod?")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("no certificate in ca.crt")
	}
	base := "https://" + net.JoinHostPort(host, port)
	// Verify the serving certificate against kubernetes.default.svc, as
	// in-cluster clients that dial the Service IP do.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "kubernetes.default.svc"}}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &bearer{token: strings.TrimSpace(string(token)), next: tr}}

	version, err := fetch(client, base+"/version", *timeout)
	if err != nil {
		return err
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal([]byte(version), &v); err != nil {
		return fmt.Errorf("decoding /version: %w", err)
	}
	fmt.Printf("apiserver via %s: version %s\n", base, v.GitVersion)

	review := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	resp, err := client.Post(base+"/apis/authentication.k8s.io/v1/selfsubjectreviews", "application/json", bytes.NewReader(review))
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("SelfSubjectReview: status %d: %s", resp.StatusCode, body)
	}
	var ssr struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &ssr); err != nil {
		return fmt.Errorf("decoding SelfSubjectReview: %w", err)
	}
	fmt.Printf("authenticated as %s\n", ssr.Status.UserInfo.Username)

	if *also != "" {
		body, err := fetch(&http.Client{Timeout: 5 * time.Second}, *also, *timeout)
		if err != nil {
			return err
		}
		fmt.Printf("GET %s: %s", *also, body)
		if !strings.Contains(body, *expect) {
			return fmt.Errorf("body does not contain %q", *expect)
		}
	}
	return nil
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
