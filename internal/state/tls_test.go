package state

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/callguard/callguard/test/harness/redisserver"
)

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T) (pool *x509.CertPool, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// TestRedisTLS: with a TLS configuration the store talks TLS and checks
// the server's certificate; without the right roots it gets no answer.
func TestRedisTLS(t *testing.T) {
	pool, certPEM, keyPEM := testCA(t)
	srv := redisserver.StartTLS(t, certPEM, keyPEM)
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
