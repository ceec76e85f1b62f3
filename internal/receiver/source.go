package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
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
	return s.Apply(p, secret)
}

// LoadConfigMap compiles the policy the operator wrote to a ConfigMap and
// applies it with the credentials mounted at credentialsDir.
func (s *Server) LoadConfigMap(cm *corev1.ConfigMap, credentialsDir string) error {
	src, err := policy.DecodeConfigMap(cm.Data, cm.BinaryData)
	if err != nil {
		err = fmt.Errorf("decode ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
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
	return s.Apply(p, secret)
}

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

// WatchConfigMap calls apply with the ConfigMap namespace/name each time it
// is created or changed, until ctx ends. It lists and watches that one
// object only (a field selector on its name), which is all the receiver's
// ServiceAccount may read.
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
