package policycli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/wav"
)

const lintSynopsis = `Compile a CallPolicy and print its errors and warnings.

Usage:
  kubectl callpolicy lint -f POLICY.yaml [-f MORE.yaml ...] [--ca-file FILE] [--offline]

The policy is compiled as the operator compiles it. Then every Announce rule
whose prompt is a url is fetched from this machine, as Graph will fetch it,
and checked: https only (any other URL is refused without a request), an
answer within 10 s, 200 OK, and a WAV file Graph plays (RIFF/WAVE, PCM, 1
channel, 16,000 Hz, 16-bit, at most 2 MiB). The server is trusted through the
system's roots (SSL_CERT_FILE works) and --ca-file. The operator and the
receivers never fetch these URLs: lint is where they are checked. --offline
skips the fetches and says so.

Exit status: 2 when the policy has errors, a prompt URL included; 1 on other
errors (usage, a --ca-file that cannot be read), as kubectl.
`

// promptTimeout bounds the fetch of one prompt URL, the answer's body
// included.
const promptTimeout = 10 * time.Second

// promptURL is a url prompt of an Announce rule.
type promptURL struct {
	path, url string
}

func runLint(s streams, args []string) int {
	c := newCommand(s, "lint", lintSynopsis, false)
	var (
		fs      []string
		caFile  string
		offline bool
	)
	c.flags.StringArrayVarP(&fs, "filename", "f", nil, "policy file (repeatable; - is stdin)")
	c.flags.StringVar(&caFile, "ca-file", "", "PEM roots to trust for prompt URLs, besides the system's")
	c.flags.BoolVar(&offline, "offline", false, "do not fetch the prompt URLs of Announce rules")
	if code, ok := c.parseNoArgs(args); !ok {
		return code
	}
	if len(fs) == 0 {
		c.usageError("-f is required")
		return exitError
	}
	if stdinUses(fs) > 1 {
		fmt.Fprintln(s.stderr, "error: stdin (-) can be read only once")
		return exitError
	}
	var client *http.Client
	if !offline {
		var err error
		if client, err = promptClient(caFile); err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return exitError
		}
	} else if caFile != "" {
		c.usageError("--ca-file is for the fetches --offline skips")
		return exitError
	}

	b, err := policy.LoadFilesFrom(s.stdin, fs...)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(s.stderr, "error: %s\n", line)
		}
		return exitInvalid
	}
	p, err := policy.Compile(b.Source)
	var (
		ce       *policy.CompileError
		problems []policy.FieldError
	)
	switch {
	case errors.As(err, &ce):
		problems = ce.Errors
	case err != nil:
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return exitInvalid
	}
	// A prompt the compiler already refused is not fetched as well.
	var urls []promptURL
	for _, u := range promptURLs(b.Source) {
		if !anyUnder(problems, strings.TrimSuffix(u.path, ".url")) {
			urls = append(urls, u)
		}
	}
	if !offline {
		problems = append(problems, checkPrompts(s.ctx, client, urls)...)
	}
	printProblems(s.stderr, "error", b.Locate, problems)
	if p != nil {
		printProblems(s.stderr, "warning", b.Locate, p.Warnings())
	}
	if len(problems) > 0 {
		return exitInvalid
	}
	summary := fmt.Sprintf("%s: %s, %s", qualified(b.Source), plural(p.Rules(), "rule"), plural(len(p.Warnings()), "warning"))
	switch {
	case len(urls) > 0 && offline:
		summary += fmt.Sprintf(", %s not fetched (--offline)", plural(len(urls), "prompt URL"))
	case len(urls) > 0:
		summary += fmt.Sprintf(", %s fetched and checked", plural(len(urls), "prompt URL"))
	}
	if _, err := fmt.Fprintln(s.stdout, summary); err != nil {
		return exitError
	}
	return exitOK
}

// anyUnder reports whether a problem's path is at or under path.
func anyUnder(problems []policy.FieldError, path string) bool {
	for _, fe := range problems {
		if fe.Path == path || strings.HasPrefix(fe.Path, path+".") || strings.HasPrefix(fe.Path, path+"[") {
			return true
		}
	}
	return false
}

// promptURLs are the url prompts of the policy's Announce rules, in rule
// order.
func promptURLs(src *policy.Source) []promptURL {
	var urls []promptURL
	for i, r := range src.Spec.Rules {
		if r.Announce != nil && r.Announce.Prompt.URL != "" {
			urls = append(urls, promptURL{path: fmt.Sprintf("spec.rules[%d].announce.prompt.url", i), url: r.Announce.Prompt.URL})
		}
	}
	return urls
}

// promptClient fetches prompts over https only, trusting the system's roots
// and those of caFile.
func promptClient(caFile string) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{
		Transport: tr,
		Timeout:   promptTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("redirected to %s://%s: only https is fetched", req.URL.Scheme, req.URL.Host)
			}
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}, nil
}

// checkPrompts fetches the URLs at once (each distinct URL once) and
// returns a problem for each that Graph could not play, in the order given.
func checkPrompts(ctx context.Context, client *http.Client, urls []promptURL) []policy.FieldError {
	var distinct []string
	for _, u := range urls {
		if !slices.Contains(distinct, u.url) {
			distinct = append(distinct, u.url)
		}
	}
	errs := make([]error, len(distinct))
	var wg sync.WaitGroup
	for i, u := range distinct {
		wg.Go(func() { errs[i] = checkPrompt(ctx, client, u) })
	}
	wg.Wait()
	var problems []policy.FieldError
	for _, u := range urls {
		if err := errs[slices.Index(distinct, u.url)]; err != nil {
			problems = append(problems, policy.FieldError{Path: u.path, Message: err.Error()})
		}
	}
	return problems
}

// checkPrompt fetches one prompt URL and checks it is a WAV file Graph
// plays. It reads at most one byte more than the largest prompt.
func checkPrompt(ctx context.Context, client *http.Client, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("not an https URL (%q): not fetched", raw)
	}
	// The query is left out of messages: it may hold a signature.
	where := "https://" + u.Host + u.EscapedPath()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", where, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("GET %s: %w", where, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", where, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wav.MaxSize+1))
	if err != nil {
		return fmt.Errorf("GET %s: read the body: %w", where, err)
	}
	if len(body) > wav.MaxSize {
		return fmt.Errorf("GET %s: more than %d bytes (2 MiB), the most Graph plays", where, wav.MaxSize)
	}
	if _, err := wav.Check(body); err != nil {
		return fmt.Errorf("GET %s: not a prompt Graph plays: %w", where, err)
	}
	return nil
}
