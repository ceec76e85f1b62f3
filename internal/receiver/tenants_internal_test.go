package receiver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// fakeCredential counts token requests; each takes delay and answers err.
type fakeCredential struct {
	calls atomic.Int32
	delay time.Duration
	err   error
}

func (f *fakeCredential) GetToken(ctx context.Context, _ azpolicy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.calls.Add(1)
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return azcore.AccessToken{}, ctx.Err()
	}
	if f.err != nil {
		return azcore.AccessToken{}, f.err
	}
	return azcore.AccessToken{Token: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

var graphScope = azpolicy.TokenRequestOptions{Scopes: []string{"https://graph.microsoft.com/.default"}}

// Many calls needing one tenant's token at once make one token request,
// and the token is then served from memory.
func TestTenantCredentialOneRequestAtATime(t *testing.T) {
	fake := &fakeCredential{delay: 50 * time.Millisecond}
	c := &tenantCredential{cred: fake, slots: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if tok, err := c.GetToken(ctx, graphScope); err != nil || tok.Token != "t" {
				t.Errorf("GetToken: %v %v", tok, err)
			}
		})
	}
	wg.Wait()
	if _, err := c.GetToken(context.Background(), graphScope); err != nil {
		t.Fatal(err)
	}
	if n := fake.calls.Load(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// A token request the authority refused is remembered: the next calls fail
// at once without asking; one that may succeed later is asked again.
func TestTenantCredentialRemembersARefusal(t *testing.T) {
	refused := &azidentity.AuthenticationFailedError{RawResponse: &http.Response{StatusCode: http.StatusBadRequest}}
	fake := &fakeCredential{err: refused}
	c := &tenantCredential{cred: fake}
	for range 3 {
		if _, err := c.GetToken(context.Background(), graphScope); !refusedByAuthority(err) {
			t.Fatalf("GetToken: %v, want the refusal", err)
		}
	}
	if n := fake.calls.Load(); n != 1 {
		t.Fatalf("%d token requests for a refusing tenant, want 1", n)
	}
	unreachable := &fakeCredential{err: errors.New("dial tcp: connection refused")}
	c = &tenantCredential{cred: unreachable}
	for range 3 {
		if _, err := c.GetToken(context.Background(), graphScope); err == nil || refusedByAuthority(err) {
			t.Fatalf("GetToken: %v, want a transient error", err)
		}
	}
	if n := unreachable.calls.Load(); n != 3 {
		t.Fatalf("%d token requests to an unreachable authority, want 3", n)
	}
}

// The tenants' clients are bounded, least recently used dropped first; the
// home tenant's stays.
func TestTenantClientsBounded(t *testing.T) {
	made := 0
	home := &tenantClient{tenant: "home"}
	tc := &tenantClients{home: home, max: 3, make: func(tenant string) (*tenantClient, error) {
		made++
		return &tenantClient{tenant: tenant}, nil
	}}
	get := func(tenant string) *tenantClient {
		c, err := tc.get(tenant)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if get("") != home || get("home") != home {
		t.Fatal("the home tenant is not the home client")
	}
	for i := range 3 {
		get(fmt.Sprint("t", i))
	}
	get("t0") // t1 is now the least recently used
	get("t3")
	if tc.len() != 3 || made != 4 {
		t.Fatalf("%d clients kept, %d made; want 3 and 4", tc.len(), made)
	}
	get("t0")
	get("t2")
	if made != 4 {
		t.Fatalf("a kept tenant's client was made again (%d made)", made)
	}
	get("t1")
	if made != 5 {
		t.Fatalf("the evicted tenant's client was not made again (%d made)", made)
	}
}
