//go:build e2e

package e2e

// Shared state and Announce on the cluster: the hotline policy (the sample)
// keeps repeat-call counts and blocks in the namespace's Redis pod (Debian's
// redis-server, hack/local-cluster/images.sh), and its withheld-numbers
// rule answers anonymous calls with the announcement of a ConfigMap, which
// the emulator fetches through the ingress with TLS.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policycli"
	"github.com/callguard/callguard/internal/telemetry"
	"github.com/callguard/callguard/test/harness"
)

// freshNumber is a number no earlier call of this run (or of an earlier
// run within the repeat window) used.
func freshNumber(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("+1646%07d", time.Now().UnixNano()/1000%10_000_000)
}

// receiverCallbacks are the callback URLs of each ready hotline receiver
// pod (pod IPs are reachable from the node), sorted by pod name.
func receiverCallbacks(t *testing.T) (pods, urls []string) {
	t.Helper()
	ctx := context.Background()
	list, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(callsv1alpha1.ReceiverSelector(hotline)).String()})
	if err != nil {
		t.Fatal(err)
	}
	cp := &callsv1alpha1.CallPolicy{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: hotline}, cp); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && ready(&p) && p.Status.PodIP != "" {
			pods = append(pods, p.Name)
			urls = append(urls, "http://"+net.JoinHostPort(p.Status.PodIP, strconv.Itoa(callsv1alpha1.ReceiverPort))+cp.Status.Receiver.CallbackPath)
		}
	}
	if len(pods) < 2 {
		t.Fatalf("want 2 ready receiver pods, have %v", pods)
	}
	return pods, urls
}

// placeAt places a call from number straight to one receiver pod and
// returns the emulator's record and the decision that pod logged.
func placeAt(t *testing.T, url, number string) (*harness.Record, harness.Decision) {
	t.Helper()
	ctx := context.Background()
	id, err := emu.PlaceCall(ctx, url, phone(number), []string{"audio"})
	if err != nil {
		t.Fatalf("place call: %v", err)
	}
	rec, err := emu.WaitAction(ctx, id, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return rec, decisionOf(t, id)
}

func decisionOf(t *testing.T, id string) harness.Decision {
	t.Helper()
	var d harness.Decision
	waitFor(t, 10*time.Second, "the decision log line of call "+id, func() bool {
		all, err := cluster.Decisions(context.Background(), ns, hotline)
		var ok bool
		d, ok = all[id]
		return err == nil && ok
	})
	return d
}

// patchHotline applies a JSON patch to the hotline policy and waits until
// every receiver enforces the result.
func patchHotline(t *testing.T, patch string) {
	t.Helper()
	ctx := context.Background()
	cp := &callsv1alpha1.CallPolicy{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: hotline}, cp); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := cluster.Kubectl(ctx, nil, "-n", ns, "patch", "callpolicy", hotline, "--type=json", "-p", patch); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := cluster.WaitPolicyLive(ctx, ns, hotline, cp.Status.PolicyHash, start, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func ruleIndex(t *testing.T, name string) int {
	t.Helper()
	i := slices.IndexFunc(samplePolicy.Policy.Spec.Rules, func(r callsv1alpha1.Rule) bool { return r.Name == name })
	if i < 0 {
		t.Fatalf("the sample policy has no rule %s", name)
	}
	return i
}

func plugin(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "-n", ns, "--kubeconfig", cluster.Kubeconfig)
	if code := policycli.Run(args, nil, &out, &errOut); code != 0 {
		t.Fatalf("kubectl callpolicy %s: exit %d: %s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String()
}

// testRepeatCallerOverTwoPodsIsRejectedAndBlocked: a caller's first two
// calls reach two different receiver pods; the third, within the window,
// is rejected by repeat-callers (the counts are shared through Redis) and
// puts the caller under the rule's block. With the rule's repeat raised out
// of reach, the block alone still rejects the caller; `kubectl callpolicy
// unblock` lifts it and the next call is allowed.
func testRepeatCallerOverTwoPodsIsRejectedAndBlocked(t *testing.T) {
	t.Cleanup(func() { restore(t) })
	number := freshNumber(t)
	pods, urls := receiverCallbacks(t)
	steps := []struct {
		pod                  int
		action, reason, rule string
		blocked              bool
	}{
		{0, "", "", "", false},
		{1, "", "", "", false},
		{0, "reject", "busy", "repeat-callers", false},
	}
	for i, s := range steps {
		rec, d := placeAt(t, urls[s.pod], number)
		if d.Pod != pods[s.pod] || rec.Action != s.action || rec.Reason != s.reason || d.Rule != s.rule || d.Blocked != s.blocked {
			t.Fatalf("call %d at %s: Graph %q (%q), decision %+v; want %q (%q) by rule %q, blocked %v",
				i+1, pods[s.pod], rec.Action, rec.Reason, d, s.action, s.reason, s.rule, s.blocked)
		}
	}
	last4 := "****" + number[len(number)-4:]
	var blocks []struct {
		Number, Rule string
		Pods         []string
	}
	for _, line := range strings.Split(strings.TrimSpace(plugin(t, "blocks", hotline, "-o", "json")), "\n") {
		var b struct {
			Number, Rule string
			Pods         []string
		}
		if err := json.Unmarshal([]byte(line), &b); err != nil {
			t.Fatalf("blocks line %q: %v", line, err)
		}
		if b.Number == last4 {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) != 1 || blocks[0].Rule != "repeat-callers" || len(blocks[0].Pods) != 2 {
		t.Fatalf("blocks of %s = %+v, want one of repeat-callers reported by both pods (one store)", last4, blocks)
	}

	// Only the block can reject the caller now.
	patchHotline(t, fmt.Sprintf(`[{"op":"replace","path":"/spec/rules/%d/match/callers/repeat/calls","value":1000}]`, ruleIndex(t, "repeat-callers")))
	rec, d := placeAt(t, urls[1], number)
	if rec.Action != "reject" || d.Rule != "repeat-callers" || !d.Blocked {
		t.Fatalf("call under the block at %s: Graph %q, decision %+v; want reject by repeat-callers, blocked", pods[1], rec.Action, d)
	}
	out := plugin(t, "unblock", hotline, "--number", number)
	if !strings.HasPrefix(out, "1 block lifted") {
		t.Fatalf("unblock: %q, want 1 block lifted", out)
	}
	for i, url := range urls {
		if rec, d := placeAt(t, url, number); rec.Action != "" || d.Action != "Allow" || d.Blocked {
			t.Errorf("call after unblock at %s: Graph %q, decision %+v; want allowed", pods[i], rec.Action, d)
		}
	}
	writeFigure(t, fmt.Sprintf("repeat-caller %s: calls at %s, %s, %s; third rejected by repeat-callers; block held; unblock lifted it", last4, pods[0], pods[1], pods[0]))
}

// stateErrors sums callguard_receiver_state_errors_total over the ready
// hotline receivers.
func stateErrors(t *testing.T) float64 {
	t.Helper()
	list, err := cluster.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(callsv1alpha1.ReceiverSelector(hotline)).String()})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	var sum float64
	for _, p := range list.Items {
		if !ready(&p) || p.Status.PodIP == "" {
			continue
		}
		resp, err := hc.Get("http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(callsv1alpha1.ReceiverMetricsPort)) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, telemetry.Namespace+"_state_errors_total") {
				f := strings.Fields(line)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err != nil {
					t.Fatalf("metrics line %q: %v", line, err)
				}
				sum += v
			}
		}
	}
	return sum
}

func scaleRedis(t *testing.T, replicas int32) {
	t.Helper()
	ctx := context.Background()
	dep := &appsv1.Deployment{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: harness.RedisName}, dep); err != nil {
		t.Fatal(err)
	}
	dep.Spec.Replicas = ptr.To(replicas)
	if err := cluster.Client.Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	if replicas == 0 {
		waitFor(t, time.Minute, "no redis pod left", func() bool {
			pods := &corev1.PodList{}
			err := cluster.Client.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/name": harness.RedisName})
			return err == nil && len(pods.Items) == 0
		})
		return
	}
	if err := cluster.WaitRedis(ctx, ns, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// testRedisGoneCallsDecidedPerOnError deletes the Redis pod (the Deployment
// scaled to 0, so none comes back): calls are still decided in time, by
// state.onError. Ignore: a caller's third call is allowed (the repeat part
// does not hold) while robocallers are still rejected; Match: a caller's
// first call is rejected by repeat-callers. Redis back (empty), counting
// works again.
func testRedisGoneCallsDecidedPerOnError(t *testing.T) {
	t.Cleanup(func() {
		scaleRedis(t, 1)
		restore(t)
	})
	pods, urls := receiverCallbacks(t)
	errorsBefore := stateErrors(t)
	scaleRedis(t, 0)

	number := freshNumber(t)
	for i := range 3 {
		rec, d := placeAt(t, urls[i%2], number)
		if rec.Action != "" || d.Action != "Allow" || !rec.Delivered() {
			t.Errorf("onError Ignore, call %d at %s: Graph %q, decision %+v; want allowed (the repeat part does not hold)", i+1, pods[i%2], rec.Action, d)
		}
	}
	if rec, d := placeAt(t, urls[1], "+12125550143"); rec.Action != "reject" || d.Rule != "robocallers" {
		t.Errorf("onError Ignore, robocaller: Graph %q, decision %+v; want reject by robocallers", rec.Action, d)
	}
	errorsAfter := stateErrors(t)
	if errorsAfter <= errorsBefore {
		t.Errorf("%s_state_errors_total: %v before, %v after calls without a store; want it counted", telemetry.Namespace, errorsBefore, errorsAfter)
	}

	patchHotline(t, `[{"op":"replace","path":"/spec/state/onError","value":"Match"}]`)
	first := freshNumber(t)
	if rec, d := placeAt(t, urls[0], first); rec.Action != "reject" || rec.Reason != "busy" || d.Rule != "repeat-callers" {
		t.Errorf("onError Match, a first call: Graph %q (%q), decision %+v; want reject (busy) by repeat-callers", rec.Action, rec.Reason, d)
	}

	patchHotline(t, `[{"op":"replace","path":"/spec/state/onError","value":"Ignore"}]`)
	scaleRedis(t, 1)
	again := freshNumber(t)
	var last *harness.Record
	var lastD harness.Decision
	// The receivers reconnect on their own; give them a few seconds.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		last, lastD = placeAt(t, urls[i%2], again)
		if last.Action == "reject" && lastD.Rule == "repeat-callers" {
			if i < 2 {
				t.Fatalf("call %d of a fresh caller rejected by repeat-callers", i+1)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis is back but a caller's %d calls were never rejected by repeat-callers (last: %+v)", i+1, lastD)
		}
	}
	writeFigure(t, fmt.Sprintf("redis-gone state_errors_total %v -> %v; onError Ignore: 3 calls of one caller allowed, robocaller rejected; Match: a first call rejected by repeat-callers; Redis back: counting again", errorsBefore, errorsAfter))
}

// promptSHA256 is the hex sha256 of the sample's announcement.
func promptSHA256(t *testing.T) string {
	t.Helper()
	for _, cm := range samplePolicy.ConfigMaps {
		if b, ok := cm.BinaryData["withheld.wav"]; ok {
			sum := sha256.Sum256(b)
			return hex.EncodeToString(sum[:])
		}
	}
	t.Fatal("the sample has no ConfigMap with withheld.wav")
	return ""
}

// checkAnnounced waits for an announced call to end and checks the
// emulator's record: answered, the sample's prompt fetched from the public
// URL through the ingress (TLS verified against the ingress CA) and played
// to completion, then hung up by the bot.
func checkAnnounced(t *testing.T, id string) *harness.Record {
	t.Helper()
	rec, err := emu.WaitEnded(context.Background(), id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := promptSHA256(t)
	if rec.Action != "answer" || rec.EndedBy != "bot" || len(rec.Prompts) != 1 {
		t.Fatalf("announced call %s: action %q, ended by %q, prompts %+v; want answer, one prompt, ended by bot", id, rec.Action, rec.EndedBy, rec.Prompts)
	}
	p := rec.Prompts[0]
	// Served by the receivers under the public callback URL, named by its
	// sha256.
	prefix, suffix := "https://"+pub.Host(hotline)+"/", "/prompts/"+want+".wav"
	if p.SHA256 != want || p.Status != "completed" || !strings.HasPrefix(p.URI, prefix) || !strings.HasSuffix(p.URI, suffix) ||
		p.DurationMs < 900 || p.DurationMs > 1100 {
		t.Errorf("prompt %+v: want %s…%s, sha256 %s, completed, about 1000 ms", p, prefix, suffix, want)
	}
	return rec
}

// testWithheldCallerHearsTheAnnouncement: an anonymous call through the
// ingress is answered, hears the ConfigMap's prompt and is hung up.
func testWithheldCallerHearsTheAnnouncement(t *testing.T) {
	ctx := context.Background()
	id, err := emu.PlaceCall(ctx, hotlineCallback, nil, []string{"audio"})
	if err != nil {
		t.Fatal(err)
	}
	rec := checkAnnounced(t, id)
	if d := decisionOf(t, id); d.Action != "Announce" || d.Rule != "withheld-numbers" {
		t.Errorf("decision %+v, want Announce by withheld-numbers", d)
	}
	// The prompt URL serves the ConfigMap's bytes through the ingress.
	hc, err := pub.Client(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(rec.Prompts[0].URI)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || hex.EncodeToString(sum[:]) != promptSHA256(t) || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
		t.Errorf("GET %s: %s, %d bytes, Cache-Control %q", rec.Prompts[0].URI, resp.Status, len(body), resp.Header.Get("Cache-Control"))
	}
	t.Logf("announced call %s: prompt sha256 %s, %d ms, answered→ended %s, ended by %s",
		id, rec.Prompts[0].SHA256[:12], rec.Prompts[0].DurationMs, rec.EndedAt.Sub(rec.AnsweredAt).Round(time.Millisecond), rec.EndedBy)
	writeFigure(t, fmt.Sprintf("announce prompt=%s durationMs=%d answered-to-ended=%s endedBy=%s",
		rec.Prompts[0].SHA256[:12], rec.Prompts[0].DurationMs, rec.EndedAt.Sub(rec.AnsweredAt).Round(time.Millisecond), rec.EndedBy))
}

// testAnnouncementSurvivesTheAnsweringPod: the receiver pod that answered
// an announced call is killed right after the answer; the other replica
// finishes the call (plays the prompt or hangs up, whichever steps are
// left): the caller still hears it and the bot hangs up.
func testAnnouncementSurvivesTheAnsweringPod(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() {
		if _, err := cluster.WaitReady(ctx, ns, hotline, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	id, err := emu.PlaceCall(ctx, hotlineCallback, nil, []string{"audio"})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := emu.WaitAction(ctx, id, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Action != "answer" {
		t.Fatalf("anonymous call: action %q, want answer", rec.Action)
	}
	answered := decisionOf(t, id).Pod
	if err := cluster.Clientset.CoreV1().Pods(ns).Delete(ctx, answered, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	rec = checkAnnounced(t, id)
	t.Logf("answering pod %s killed; call %s ended by %s, prompt %s", answered, id, rec.EndedBy, rec.Prompts[0].Status)
	writeFigure(t, fmt.Sprintf("announce-pod-killed pod=%s endedBy=%s prompt=%s", answered, rec.EndedBy, rec.Prompts[0].Status))
}
