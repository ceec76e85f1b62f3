package graph_test

import (
	"strings"
	"testing"

	"github.com/callguard/callguard/internal/graph"
)

func TestNewCredentialRefusesAuthoritiesNotHTTPS(t *testing.T) {
	for _, authority := range []string{"http://login.microsoftonline.com/", "login.microsoftonline.com", "https://"} {
		t.Run(authority, func(t *testing.T) {
			_, err := graph.NewCredential(graph.CredentialConfig{
				TenantID: botTenantID, ClientID: botAppID, AuthorityHost: authority,
				Secret: map[string][]byte{graph.SecretKeyClientSecret: []byte(botSecret)},
			})
			if err == nil || !strings.Contains(err.Error(), "is not an https URL") {
				t.Fatalf("NewCredential(%q) = %v, want it refused as not https", authority, err)
			}
		})
	}
}
