package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// fileDebounce coalesces the bursts of events one save makes (write, chmod,
// rename) into one reload, well within the 1 s reload goal.
const fileDebounce = 100 * time.Millisecond

// LoadPolicyFile compiles the policy of a standalone --policy-file and
// applies it with the Secret the policy names, or, when the file holds no
// such Secret, the credentials mounted at credentialsDir.
func (s *Server) LoadPolicyFile(path, credentialsDir string) error {
	start := time.Now()
	bundle, err := policy.LoadFiles(path)
	if err != nil {
		err = fmt.Errorf("load policy file: %w", err)
		s.refuseSource(err)
		return err
	}
	p, err := policy.Compile(bundle.Source)
	if err != nil {
		err = fmt.Errorf("compile policy file %s: %w", path, err)
		s.refuseSource(err)
		return err
	}
	var secret map[string][]byte
	if ref := p.Spec().Bot.Credentials.SecretRef; ref != nil {
		secret = bundle.Secrets[ref.Name]
	}
	if secret == nil && p.Spec().Bot.Credentials.WorkloadIdentity == nil {
		if secret, err = readCredentialsDir(credentialsDir); err != nil {
			err = fmt.Errorf("policy file holds no credential Secret: %w", err)
			s.refuseSource(err)
			return err
		}
	}
	return s.goLive(p, secret, start, policyID{bundle.Source.Namespace, bundle.Source.Name})
}

// goLive applies a policy a source began to read at start. A version that
// goes live has its load time observed, and the garbage of reading it (the
// texts and the old index: tens of MiB for a million numbers) is given back
// at once rather than kept at the reload's peak.
func (s *Server) goLive(p *policy.Policy, secret map[string][]byte, start time.Time, id policyID) error {
	err := s.apply(p, secret, id)
	if err == nil {
		s.metrics.loadSeconds.Observe(time.Since(start).Seconds())
		debug.FreeOSMemory()
	}
	return s.applied(err)
}

// LoadConfigMap compiles the policy the operator wrote to a manifest
// ConfigMap and the shards it names, which shard returns by name, and applies
// it with the credentials mounted at credentialsDir. A shard that is missing
// or does not match keeps the live version.
func (s *Server) LoadConfigMap(cm *corev1.ConfigMap, shard func(name string) ([]byte, error), credentialsDir string) error {
	start := time.Now()
	src, err := policy.DecodeConfigMaps(cm.Data, shard)
	if err != nil {
		err = fmt.Errorf("%w %s/%s: %w", errDecode, cm.Namespace, cm.Name, err)
		s.refuseSource(err)
		return err
	}
	p, err := policy.Compile(src)
	if err != nil {
		err = fmt.Errorf("compile ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		s.refuseSource(err)
		return err
	}
	var secret map[string][]byte
	if p.Spec().Bot.Credentials.WorkloadIdentity == nil {
		if secret, err = readCredentialsDir(credentialsDir); err != nil {
			s.refuseSource(err)
			return err
		}
	}
	return s.goLive(p, secret, start, policyID{src.Namespace, src.Name})
}

// errDecode marks a version that could not be read whole: a shard missing,
// not readable yet, or not matching the manifest. Unlike a policy that does
// not compile, that may mend itself.
var errDecode = errors.New("decode ConfigMap")

// shardStore reads shard ConfigMaps by name (all the receiver's Role lets
// it do) and keeps those of the live version: shards never change, so a new
// version fetches only the shards it does not share with the live one.
type shardStore struct {
	cms  corev1client.ConfigMapInterface
	have map[string][]byte
	// fetched holds what the load in progress read.
	fetched map[string][]byte
}

func newShardStore(cms corev1client.ConfigMapInterface) *shardStore {
	return &shardStore{cms: cms, have: map[string][]byte{}}
}

// getter returns the shard reader for one load.
func (st *shardStore) getter(ctx context.Context) func(string) ([]byte, error) {
	st.fetched = map[string][]byte{}
	return func(name string) ([]byte, error) {
		if b, ok := st.have[name]; ok {
			st.fetched[name] = b
			return b, nil
		}
		cm, err := st.cms.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		b, ok := cm.BinaryData[policy.ShardKey]
		if !ok {
			return nil, fmt.Errorf("no binaryData key %s", policy.ShardKey)
		}
		st.fetched[name] = b
		return b, nil
	}
}

// keep makes the shards of the load that just went live the ones kept.
func (st *shardStore) keep() { st.have, st.fetched = st.fetched, nil }

// readCredentialsDir reads the bot credential Secret as mounted in a
// directory: client-secret, or tls.crt and tls.key.
func readCredentialsDir(dir string) (map[string][]byte, error) {
	if dir == "" {
		return nil, errors.New("no credentials directory")
	}
	secret := map[string][]byte{}
	for _, k := range []string{graph.SecretKeyClientSecret, graph.SecretKeyTLSCert, graph.SecretKeyTLSKey} {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read credentials: %w", err)
		}
		secret[k] = b
	}
	if len(secret) == 0 {
		return nil, fmt.Errorf("credentials directory %s holds neither %s nor %s and %s", dir,
			graph.SecretKeyClientSecret, graph.SecretKeyTLSCert, graph.SecretKeyTLSKey)
	}
	return secret, nil
}

// WatchPolicyFile calls reload whenever path changes, until ctx ends. It
// watches the directory, not the file, so that atomic renames (editors,
// Kubernetes volume updates through the ..data symlink) are seen.
func WatchPolicyFile(ctx context.Context, path string, log *slog.Logger, reload func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy file: %w", err)
	}
	defer w.Close()
	dir, base := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			name := filepath.Base(ev.Name)
			if name == base || strings.HasPrefix(name, "..") {
				timer.Reset(fileDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("policy file watch", "error", err)
		case <-timer.C:
			reload()
		}
	}
}

// Retries of a version that could not be read whole: the operator writes
// shards before the manifest, but its Role update may reach the API server's
// authorizer a moment later, and a shard's name may be taken by a foreign
// object until someone deletes it.
const (
	shardRetryMin = 250 * time.Millisecond
	shardRetryMax = 10 * time.Second
)

// RunConfigMapSource keeps srv on the newest version of the policy in the
// manifest ConfigMap namespace/name and its shards until ctx ends. Loads run
// one at a time on the newest manifest: versions that arrive while a big
// policy compiles are skipped, not queued.
func RunConfigMapSource(ctx context.Context, srv *Server, client kubernetes.Interface, namespace, name, credentialsDir string, log *slog.Logger) {
	latest := make(chan *corev1.ConfigMap, 1)
	var watching sync.WaitGroup
	defer watching.Wait()
	watching.Go(func() {
		WatchConfigMap(ctx, client, namespace, name, log, func(cm *corev1.ConfigMap) {
			// The only sender: drop an unread older version, then send.
			select {
			case <-latest:
			default:
			}
			latest <- cm
		})
	})
	store := newShardStore(client.CoreV1().ConfigMaps(namespace))
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var cm *corev1.ConfigMap
	backoff := shardRetryMin
	for {
		select {
		case <-ctx.Done():
			return
		case cm = <-latest:
			retry.Stop()
			backoff = shardRetryMin
		case <-retry.C:
		}
		err := srv.LoadConfigMap(cm, store.getter(ctx), credentialsDir)
		switch {
		case err == nil:
			store.keep()
		case errors.Is(err, errDecode) && ctx.Err() == nil:
			log.Info("policy version not complete yet; retrying", "after", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, shardRetryMax)
		}
	}
}

// WatchConfigMap calls apply with the ConfigMap namespace/name each time it
// is created or changed, until ctx ends. It lists and watches that one
// object only (a field selector on its name): the receiver's ServiceAccount
// may read nothing else but the shards that object names.
func WatchConfigMap(ctx context.Context, client kubernetes.Interface, namespace, name string, log *slog.Logger, apply func(*corev1.ConfigMap)) {
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	cms := client.CoreV1().ConfigMaps(namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (k8sruntime.Object, error) {
			o.FieldSelector = selector
			return cms.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return cms.Watch(ctx, o)
		},
	}
	handle := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		// The name check guards against clients that ignore the selector.
		if !ok || cm.Name != name {
			return
		}
		apply(cm)
	}
	_, informer := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: cache.ToListWatcherWithWatchListSemantics(lw, client),
		ObjectType:    &corev1.ConfigMap{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: handle,
			UpdateFunc: func(oldObj, newObj any) {
				handle(newObj)
			},
			DeleteFunc: func(any) {
				log.Warn("policy ConfigMap deleted; the last policy stays live", "namespace", namespace, "name", name)
			},
		},
	})
	informer.RunWithContext(ctx)
}
