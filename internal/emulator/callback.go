package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// callbackIdleConns is how many idle connections to one bot host (or prompt
// server) the emulator keeps.
const callbackIdleConns = 128

// newCallbackClient is the notification client when Config.CallbackClient is
// not set: the system roots plus extraCAs for https callbacks, and the
// callback hosts pinned by resolve ("host:port" → IP address, as curl's
// --resolve) dialled at that address, so a bot's public https URL can be
// reached where no DNS names it (TLS still verifies the URL's host name).
func newCallbackClient(resolve map[string]string, extraCAs []byte) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Graph keeps its connections to a bot open between notifications; the
	// default of 2 idle per host would close most of a burst's and open
	// (and, for prompts, TLS-handshake) a new one per request.
	tr.MaxIdleConnsPerHost = callbackIdleConns
	if len(extraCAs) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(extraCAs) {
			return nil, errors.New("callback CAs: no PEM certificate found")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if len(resolve) > 0 {
		pinned := make(map[string]string, len(resolve))
		for hostPort, ip := range resolve {
			host, port, err := net.SplitHostPort(hostPort)
			if err != nil {
				return nil, errors.New("callback resolve: " + hostPort + " is not host:port")
			}
			if net.ParseIP(ip) == nil {
				return nil, errors.New("callback resolve: " + ip + " is not an IP address")
			}
			pinned[net.JoinHostPort(strings.ToLower(host), port)] = ip
		}
		dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, port, err := net.SplitHostPort(addr); err == nil {
				if ip, ok := pinned[net.JoinHostPort(strings.ToLower(host), port)]; ok {
					addr = net.JoinHostPort(ip, port)
				}
			}
			return dialer.DialContext(ctx, network, addr)
		}
	}
	return &http.Client{Timeout: deliveryTimeout, Transport: tr}, nil
}
