package receiver

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/callguard/callguard/api/v1alpha1"
)

// DefaultStateDir is where the operator mounts the policy's state Secret
// (the key that hashes callers) and the state store's credentials.
const DefaultStateDir = "/var/run/callguard/state"

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
