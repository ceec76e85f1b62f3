package receiver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/state"
)

// DefaultStateDir is where the operator mounts the policy's state Secret
// (the key that hashes callers) and the state store's credentials.
const DefaultStateDir = "/var/run/callguard/state"

// The state store's budget and bounds.
const (
	// stateBudget is how long a batch's calls wait for the store before
	// state.onError decides for it.
	stateBudget = 100 * time.Millisecond
	// memoryCallers bounds the callers a store in memory remembers.
	memoryCallers = 1_000_000
)

// Files of the state dir.
const (
	// stateKeyFile is the per-policy key: it hashes callers in the store
	// (HMAC-SHA256) and signs announcement steps. Replicas must share it.
	stateKeyFile      = v1alpha1.StateSecretKey
	stateUsernameFile = "redis-username"
	statePasswordFile = "redis-password"
	stateCAFile       = "redis-ca.crt"
	// minStateKey is the shortest key accepted (the operator makes 32
	// random bytes).
	minStateKey = 16
)

// stateFiles is what the state dir holds. Absent files are empty.
type stateFiles struct {
	// key is nil when the dir has no key file.
	key                []byte
	username, password string
	ca                 []byte
}

// readStateDir reads the state dir; a missing dir or file is no error
// (standalone runs have none), an unreadable or invalid one is.
func readStateDir(dir string) (stateFiles, error) {
	var f stateFiles
	if dir == "" {
		return f, nil
	}
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		return b, nil
	}
	var err error
	if f.key, err = read(stateKeyFile); err != nil {
		return f, err
	}
	if f.key != nil && len(f.key) < minStateKey {
		return f, fmt.Errorf("state dir: %s holds %d bytes, want at least %d", filepath.Join(dir, stateKeyFile), len(f.key), minStateKey)
	}
	user, err := read(stateUsernameFile)
	if err != nil {
		return f, err
	}
	pass, err := read(statePasswordFile)
	if err != nil {
		return f, err
	}
	f.username, f.password = string(user), string(pass)
	if f.ca, err = read(stateCAFile); err != nil {
		return f, err
	}
	return f, nil
}

// stateKeyOf is the key a policy hashes callers with: the state dir's, or
// this process's random key when the dir has none (a receiver alone, whose
// counts no other replica shares). A policy with state.redis needs the
// dir's: replicas sharing a store must hash alike.
func (s *Server) stateKeyOf(spec *v1alpha1.CallPolicySpec, files stateFiles) ([]byte, error) {
	if files.key != nil {
		return files.key, nil
	}
	if spec.State != nil && spec.State.Redis != nil {
		return nil, fmt.Errorf("state.redis: no key file %s: replicas sharing a store must hash callers with one key",
			filepath.Join(s.stateDir(), stateKeyFile))
	}
	s.randomKeyOnce.Do(func() {
		s.randomKey = make([]byte, 32)
		_, _ = rand.Read(s.randomKey)
		s.log.Info("no state key file: callers are hashed and announcement steps signed with a random key of this process",
			"file", filepath.Join(s.stateDir(), stateKeyFile))
	})
	return s.randomKey, nil
}

// stateDir is the configured state dir ("" when there is none).
func (s *Server) stateDir() string { return s.cfg.StateDir }

// stateKey is the live policy's state key (nil before the first policy):
// it hashes callers in the store and signs announcement steps.
func (s *Server) stateKey() []byte {
	if rt := s.live.Load(); rt != nil {
		return rt.stateKey
	}
	return nil
}

// policyID names the policy a version comes from: the store's keys carry
// it, so that policies sharing a store count apart.
type policyID struct{ namespace, name string }

// storeConfig is what a state store is made from: a version keeps its
// predecessor's store while it is the same, so counts and blocks survive
// reloads.
type storeConfig struct {
	redis     bool
	address   string
	database  int
	tls       bool
	ca        string
	username  string
	password  string
	keyPrefix string
	policy    policyID
	key       string
}

// storeConfigOf is the store a policy keeps, and false when it keeps none:
// a policy with a repeat condition or a blockFor keeps one, in state.redis
// or else in memory; so does any policy with state.redis (its blocks can
// still be listed and lifted).
func storeConfigOf(p *policy.Policy, spec *v1alpha1.CallPolicySpec, id policyID, files stateFiles, key []byte) (storeConfig, bool) {
	redis := spec.State != nil && spec.State.Redis != nil
	if !redis && !p.Stateful() {
		return storeConfig{}, false
	}
	c := storeConfig{policy: id, key: string(key)}
	if redis {
		r := spec.State.Redis
		c.redis = true
		c.address = r.Address
		c.database = int(r.Database)
		c.tls = r.TLS != nil && r.TLS.Enabled
		if c.tls {
			c.ca = string(files.ca)
		}
		c.username, c.password = files.username, files.password
		c.keyPrefix = r.KeyPrefix
	}
	return c, true
}

// openStore makes the store c describes. A Redis store connects lazily:
// a server down at apply does not refuse the policy (state.onError
// applies to its calls until it answers). roundTrip counts its round trips.
func openStore(c storeConfig, log *slog.Logger, roundTrip func()) (state.Store, error) {
	if !c.redis {
		st, err := state.NewMemory([]byte(c.key), memoryCallers)
		if err != nil {
			return nil, fmt.Errorf("state store in memory: %w", err)
		}
		return st, nil
	}
	o := state.RedisOptions{
		Address:   c.address,
		Database:  c.database,
		Username:  c.username,
		Password:  c.password,
		KeyPrefix: c.keyPrefix,
		Namespace: c.policy.namespace,
		Name:      c.policy.name,
		HashKey:   []byte(c.key),
		RoundTrip: roundTrip,
	}
	if c.tls {
		host, _, err := net.SplitHostPort(c.address)
		if err != nil {
			return nil, fmt.Errorf("state.redis.address %q: %w", c.address, err)
		}
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		if c.ca != "" {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM([]byte(c.ca)) {
				return nil, fmt.Errorf("state.redis.tls: %s holds no PEM certificate", stateCAFile)
			}
			o.TLS.RootCAs = pool
		}
	}
	st, err := state.NewRedis(o)
	if err != nil {
		return nil, fmt.Errorf("state.redis: %w", err)
	}
	// Connected before the policy goes live (and the receiver ready), so
	// that its first calls find the store answering; one that does not
	// answer in time leaves them to state.onError, as later outages do.
	wctx, cancel := context.WithTimeout(context.Background(), storeWarmTimeout)
	defer cancel()
	if err := st.Warm(wctx); err != nil {
		log.Warn("the state store did not answer at apply; state.onError applies to calls until it does", "error", err)
	}
	return st, nil
}

// storeWarmTimeout bounds how long applying a policy waits for a new Redis
// store to answer.
const storeWarmTimeout = 2 * time.Second

// Results of a batch's request to the store (state_requests_total).
const (
	stateOK = iota
	stateError
	stateTimeout
)

var stateResults = [3]string{stateOK: "ok", stateError: "error", stateTimeout: "timeout"}

// evalState asks the store about a batch's calls within the budget (and
// the call's deadline, ctx's). When it cannot answer, every call is
// answered as state.onError says, counted, and the miss logged once.
func (s *Server) evalState(ctx context.Context, rt *policyVersion, qs []state.Query, ans []state.Answer) {
	sctx, cancel := context.WithTimeout(ctx, stateBudget)
	start := time.Now()
	err := rt.store.Eval(sctx, qs, ans)
	cancel()
	s.metrics.stateSeconds.Observe(time.Since(start).Seconds())
	if err == nil {
		s.metrics.stateBy[stateOK].Inc()
		return
	}
	result := stateError
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		result = stateTimeout
	}
	s.metrics.stateBy[result].Inc()
	s.metrics.stateErrors.Add(float64(len(qs)))
	for i := range qs {
		ans[i] = state.Offline(&qs[i], rt.onErrorMatch)
	}
	s.log.Warn("state store did not answer; the calls were decided as state.onError says",
		"calls", len(qs), "onError", rt.policy.OnError(), "result", stateResults[result], "error", err)
}

// retireStore closes a store no live version uses once the batches that
// may still hold it are done (each ends by its call's deadline).
func (s *Server) retireStore(st state.Store) {
	time.AfterFunc(s.cfg.Deadline, func() {
		if err := st.Close(); err != nil {
			s.log.Warn("closing the previous state store", "error", err)
		}
	})
}

// stateKind says where a version keeps its state, for the log.
func stateKind(rt *policyVersion) string {
	switch {
	case rt.store == nil:
		return "none"
	case rt.storeCfg.redis:
		return "redis " + rt.storeCfg.address
	}
	return "memory"
}
