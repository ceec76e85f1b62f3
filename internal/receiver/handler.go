package receiver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

// job is an acknowledged batch: the notifications as read once, with the
// body they were read from when they may be forwarded upstream.
type job struct {
	rt      *policyVersion
	arrival time.Time
	body    []byte
	auth    string
	// tenant is the verified token's tenant claim: the tenant the batch
	// arrived in, whose app tokens act on its calls.
	tenant string
	batch  *graph.Notifications
	// announce is the answered token of the request's URL and ops the
	// prompt operations of its notifications, for announced calls
	// (readAnnounce).
	announce string
	ops      []*graph.PromptOperation
}

// ServeHTTP serves the Graph callback.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	arrival := time.Now()
	rt := s.live.Load()
	if rt == nil {
		s.refuse(w, http.StatusServiceUnavailable, "ServiceUnavailable", "no policy loaded yet")
		return
	}
	if r.URL.Path != rt.callbackPath {
		if strings.HasPrefix(r.URL.Path, strings.TrimRight(rt.callbackPath, "/")+promptsDir) {
			s.servePrompt(w, r, rt)
			return
		}
		s.refuse(w, http.StatusNotFound, "NotFound", "no such path")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refuse(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use POST")
		return
	}
	auth := r.Header.Get("Authorization")
	tenant, err := rt.verifier.VerifyTenant(r.Context(), auth)
	if err != nil {
		var ae *graph.AuthError
		if !errors.As(err, &ae) {
			ae = &graph.AuthError{Status: http.StatusUnauthorized, Reason: graph.AuthMalformed, Err: err}
		}
		s.metrics.authFailures.WithLabelValues(ae.Reason).Inc()
		if ae.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
		code := "Unauthorized"
		switch ae.Status {
		case http.StatusForbidden:
			code = "Forbidden"
		case http.StatusServiceUnavailable:
			// Too many unknown kids wait for keys already: Graph redelivers,
			// by when a new key of Graph's has been fetched.
			code = "ServiceUnavailable"
			w.Header().Set("Retry-After", "1")
		}
		s.refuse(w, ae.Status, code, ae.Error())
		return
	}
	if r.ContentLength > MaxBody {
		s.refuse(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("body over %d bytes", MaxBody))
		return
	}
	// Graph sends its body with its headers; a body that trickles in holds
	// a connection, so it gets a short budget (not the ReadTimeout).
	budget := requestBudget(r.Context())
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(budget))
	buf := getBodyBuffer()
	_, err = buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		putBodyBuffer(buf)
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			s.refuse(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("body over %d bytes", MaxBody))
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.refuse(w, http.StatusRequestTimeout, "RequestTimeout", fmt.Sprintf("body not received within %s", budget))
		default:
			s.refuse(w, http.StatusBadRequest, "BadRequest", "reading body: "+err.Error())
		}
		return
	}
	requestWhole(r.Context())
	body := buf.Bytes()
	batch, err := graph.DecodeNotifications(body)
	if err == nil {
		err = validateBatch(batch)
	}
	var announce string
	var ops []*graph.PromptOperation
	if err == nil {
		announce, ops = s.readAnnounce(r, batch)
	}
	// The decoded strings share no memory with the body; the notifications'
	// Raw bytes do, and only forwarding upstream needs them. Without an
	// upstream the buffer serves the next request. (A forwarded body is not
	// reused: the HTTP client may still read it after its request returned.)
	if err != nil || rt.upstream == "" {
		putBodyBuffer(buf)
		body = nil
		if batch != nil {
			for i := range batch.Value {
				batch.Value[i].Raw = nil
			}
		}
	}
	if errors.Is(err, graph.ErrLegacyFormat) {
		s.metrics.legacy.Inc()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	j := &job{rt: rt, arrival: arrival, body: body, auth: auth, tenant: tenant, batch: batch,
		announce: announce, ops: ops}
	select {
	case s.queue <- j:
	default:
		// Graph redelivers a refused notification; acknowledging one that
		// would never be worked on in time would lose the call's decision.
		w.Header().Set("Retry-After", "1")
		s.refuse(w, http.StatusServiceUnavailable, "ServiceUnavailable", "work queue full")
		return
	}
	for i := range batch.Value {
		s.metrics.notification(batch.Value[i].ChangeType)
	}
	s.metrics.accepted.Inc()
	w.WriteHeader(http.StatusAccepted)
}

// bodyBuffers hold request bodies while they are decoded.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest buffer kept for reuse: bodies are usually
// a few KiB, and MaxBody-sized buffers should not stay around.
const maxPooledBody = 64 << 10

func getBodyBuffer() *bytes.Buffer { return bodyBuffers.Get().(*bytes.Buffer) }

func putBodyBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBody {
		return
	}
	b.Reset()
	bodyBuffers.Put(b)
}

// validateBatch refuses bodies that parse but are not notifications.
func validateBatch(b *graph.Notifications) error {
	if len(b.Value) == 0 {
		return errors.New(`not a notification: "value" holds no notification`)
	}
	for i := range b.Value {
		n := &b.Value[i]
		if n.ChangeType == "" {
			return fmt.Errorf("not a notification: value[%d] has no changeType", i)
		}
		if n.CallID() == "" {
			return fmt.Errorf("not a notification: value[%d] names no call", i)
		}
	}
	return nil
}

// refuse answers with an error and closes the connection: net/http would
// otherwise wait, up to the read timeout, for the rest of a body it was
// promised before reusing the connection, and an unauthenticated client
// could hold connections that way without sending anything.
func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.metrics.requests.WithLabelValues(statusText(status)).Inc()
	w.Header().Set("Connection", "close")
	// What is left of the body is not read: reading it fails at once.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	writeError(w, status, code, msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(graph.ErrorBody{Error: graph.ErrorDetail{Code: code, Message: msg}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
