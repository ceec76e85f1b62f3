package receiver

import (
	"bytes"
	"net/http"
	"strings"
	"time"
)

// promptsDir is the path under the callback path where the prompts kept in
// ConfigMaps are served, for Graph to fetch: {callbackPath}/prompts/{sha256}.wav.
const promptsDir = "/prompts/"

// promptCacheControl: a prompt's name is its content's hash, so it never
// changes.
const promptCacheControl = "public, max-age=31536000, immutable"

// promptName returns the sha256 a prompt path names under callbackPath, and
// whether path is a well-formed prompt path (64 lower-case hex digits).
func promptName(path, callbackPath string) (string, bool) {
	rest, ok := strings.CutPrefix(path, strings.TrimRight(callbackPath, "/")+promptsDir)
	if !ok {
		return "", false
	}
	sha, ok := strings.CutSuffix(rest, ".wav")
	if !ok || len(sha) != 64 {
		return "", false
	}
	for i := 0; i < len(sha); i++ {
		if c := sha[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return sha, true
}

// servePrompt serves GET and HEAD of a prompt of the live policy, without
// authentication since Graph fetches it. It runs on the callback port under
// the same connection cap, and a prompt request is never marked whole
// (requestWhole): a flood of prompt fetches, or a slow reader of one, is
// closed to make room before any notification that has arrived whole.
func (s *Server) servePrompt(w http.ResponseWriter, r *http.Request, rt *policyVersion) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.refuse(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use GET or HEAD")
		return
	}
	sha, ok := promptName(r.URL.Path, rt.callbackPath)
	var wav []byte
	if ok {
		wav, ok = rt.policy.Prompt(sha)
	}
	if !ok {
		s.ann.metrics.prompts.WithLabelValues("404").Inc()
		s.refuse(w, http.StatusNotFound, "NotFound", "no such prompt")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "audio/wav")
	h.Set("ETag", `"`+sha+`"`)
	h.Set("Cache-Control", promptCacheControl)
	h.Set("X-Content-Type-Options", "nosniff")
	// ServeContent answers If-None-Match with 304, ranges with 206, and
	// HEAD without a body.
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(wav))
	s.ann.metrics.prompts.WithLabelValues(statusText(rec.status)).Inc()
}

// statusRecorder remembers the status a handler answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}
