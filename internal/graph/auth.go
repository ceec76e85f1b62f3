package graph

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Keys of the bot's credential Secret (and files of the mounted Secret).
const (
	SecretKeyClientSecret = "client-secret"
	SecretKeyTLSCert      = "tls.crt"
	SecretKeyTLSKey       = "tls.key"
)

// CredentialConfig says how to get app-only Graph tokens for a bot.
type CredentialConfig struct {
	TenantID string
	ClientID string
	// AuthorityHost is the token authority, e.g. https://login.microsoftonline.com/.
	AuthorityHost string
	// Secret holds the bot Secret's keys: client-secret, or tls.crt and tls.key.
	// It is ignored with WorkloadIdentity.
	Secret map[string][]byte
	// WorkloadIdentity uses Azure workload identity federation: the token file
	// comes from AZURE_FEDERATED_TOKEN_FILE, set by the identity webhook.
	WorkloadIdentity bool
	// Assertion, with WorkloadIdentity, supplies the federated token (a
	// ServiceAccount token) instead of the file: how the operator exchanges
	// a token of the receivers' ServiceAccount as their pods would.
	Assertion func(context.Context) (string, error)
	// HTTPClient talks to the authority; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// wellKnownAuthorities are hosts the identity library validates by itself;
// any other authority (sovereign private clouds, the emulator) must skip
// instance discovery, which would otherwise ask the public cloud about it.
var wellKnownAuthorities = map[string]bool{
	"login.microsoftonline.com": true,
	"login.microsoftonline.us":  true,
	"login.chinacloudapi.cn":    true,
}

// NewCredential returns a token credential for cfg from the Azure identity
// library, which caches tokens until near expiry.
func NewCredential(cfg CredentialConfig) (azcore.TokenCredential, error) {
	// The client secret or assertion goes there: never over plain http.
	u, err := url.Parse(cfg.AuthorityHost)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("authority host %q is not an https URL", cfg.AuthorityHost)
	}
	opts := azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: cfg.AuthorityHost}}
	if cfg.HTTPClient != nil {
		opts.Transport = cfg.HTTPClient
	}
	noDiscovery := !wellKnownAuthorities[strings.ToLower(u.Hostname())]

	if cfg.WorkloadIdentity && cfg.Assertion != nil {
		cred, err := azidentity.NewClientAssertionCredential(cfg.TenantID, cfg.ClientID, cfg.Assertion, &azidentity.ClientAssertionCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("client assertion credential: %w", err)
		}
		return cred, nil
	}
	if cfg.WorkloadIdentity {
		cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: opts, ClientID: cfg.ClientID, TenantID: cfg.TenantID, DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("workload identity credential: %w", err)
		}
		return cred, nil
	}
	if s := strings.TrimSpace(string(cfg.Secret[SecretKeyClientSecret])); s != "" {
		cred, err := azidentity.NewClientSecretCredential(cfg.TenantID, cfg.ClientID, s, &azidentity.ClientSecretCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("client secret credential: %w", err)
		}
		return cred, nil
	}
	crt, key := cfg.Secret[SecretKeyTLSCert], cfg.Secret[SecretKeyTLSKey]
	if len(crt) == 0 || len(key) == 0 {
		return nil, fmt.Errorf("credentials need %q, or %q and %q", SecretKeyClientSecret, SecretKeyTLSCert, SecretKeyTLSKey)
	}
	pemData := make([]byte, 0, len(crt)+len(key)+1)
	pemData = append(append(append(pemData, crt...), '\n'), key...)
	certs, pk, err := azidentity.ParseCertificates(pemData, nil)
	if err != nil {
		return nil, fmt.Errorf("parse %s and %s: %w", SecretKeyTLSCert, SecretKeyTLSKey, err)
	}
	cred, err := azidentity.NewClientCertificateCredential(cfg.TenantID, cfg.ClientID, certs, pk, &azidentity.ClientCertificateCredentialOptions{
		ClientOptions: opts, DisableInstanceDiscovery: noDiscovery,
	})
	if err != nil {
		return nil, fmt.Errorf("client certificate credential: %w", err)
	}
	return cred, nil
}

// NewHTTPClient returns a client for Graph, the authority and the OpenID
// configuration that trusts the system roots (SSL_CERT_FILE included) plus
// the PEM certificates in caFile, if given.
func NewHTTPClient(caFile string) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, errors.New("CA file " + caFile + " holds no PEM certificate")
		}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialCoalescing(dialer),
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}}, nil
}
