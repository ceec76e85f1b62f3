package state

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/callguard/callguard/test/harness/redisserver"
)

// TestRedisTLS: with a TLS configuration the store talks TLS and checks
// the server's certificate; without the right roots it gets no answer.
func TestRedisTLS(t *testing.T) {
	srv := redisserver.StartTLS(t)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CAPEM()) {
		t.Fatal("no CA")
	}
	ctx := context.Background()
	q := []Query{{Caller: "+14255550123", CallID: "1", At: now(), Record: true, Keep: time.Hour, KeepCalls: 2,
		Steps: []Step{{Rule: "r", Static: true, Calls: 1, Within: time.Hour}}}}
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		ok   bool
	}{
		{"trusted roots", &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, true},
		{"system roots only", &tls.Config{MinVersion: tls.VersionTLS12}, false},
		{"no TLS", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRedis(t, srv.Addr(), RedisOptions{TLS: tc.tls})
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			ans := make([]Answer, 1)
			err := r.Eval(cctx, q, ans)
			if tc.ok && (err != nil || ans[0].Step != 0) {
				t.Fatalf("%+v, %v", ans[0], err)
			}
			if !tc.ok && err == nil {
				t.Fatal("answered")
			}
		})
	}
}
