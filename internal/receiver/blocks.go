package receiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/callguard/callguard/internal/policy"
)

// The temporary blocks (blockFor) of the live policy, on the metrics port:
// GET /blocks lists them, POST /blocks/unblock lifts them (kubectl
// callpolicy blocks|unblock, through the API server's pod proxy).

const (
	// maxUnblockBody bounds an unblock request's body.
	maxUnblockBody = 4 << 10
	// blocksTimeout bounds a listing or an unblock on the store.
	blocksTimeout = 5 * time.Second
)

// unblockRequest is the body of POST /blocks/unblock: exactly one of a
// phone number, an identity id, or all.
type unblockRequest struct {
	Number string `json:"number,omitempty"`
	ID     string `json:"id,omitempty"`
	All    bool   `json:"all,omitempty"`
}

// parseUnblock reads an unblock request strictly (names matched as
// written, no unknown or repeated member) and returns the caller key whose
// blocks to lift, "" for all.
func parseUnblock(body []byte) (string, error) {
	var req unblockRequest
	if err := jsonv2.Unmarshal(body, &req, jsonv2.RejectUnknownMembers(true)); err != nil {
		return "", fmt.Errorf(`want {"number": "+E164"}, {"id": "IDENTITY"} or {"all": true}: %w`, err)
	}
	given := 0
	for _, set := range []bool{req.Number != "", req.ID != "", req.All} {
		if set {
			given++
		}
	}
	if given != 1 {
		return "", errors.New(`give exactly one of "number", "id" or "all": true`)
	}
	switch {
	case req.Number != "":
		n, ok := policy.NormalizeNumber(req.Number)
		if !ok {
			return "", fmt.Errorf("number %q is not a phone number", req.Number)
		}
		return n, nil
	case req.ID != "":
		// As the store knows it: object ids are GUIDs, in either case.
		return strings.ToLower(strings.TrimSpace(req.ID)), nil
	}
	return "", nil
}

// serveBlocks lists the live policy's blocks as JSON lines ({"number"
// masked, "rule", "since", "until"}): the store keeps no phone number.
func (s *Server) serveBlocks(w http.ResponseWriter, r *http.Request) {
	rt, ok := s.storeOrRefuse(w)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), blocksTimeout)
	defer cancel()
	blocks, err := rt.store.Blocks(ctx, time.Now())
	if err != nil {
		jsonError(w, http.StatusServiceUnavailable, fmt.Sprintf("state store: list blocks: %v", err))
		return
	}
	var out []byte
	for i := range blocks {
		b, err := json.Marshal(&blocks[i])
		if err != nil {
			jsonError(w, http.StatusInternalServerError, fmt.Sprintf("encode block: %v", err))
			return
		}
		out = append(append(out, b...), '\n')
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(out)
}

// serveUnblock lifts the blocks of one caller, or all, and answers
// {"unblocked": N}.
func (s *Server) serveUnblock(w http.ResponseWriter, r *http.Request) {
	rt, ok := s.storeOrRefuse(w)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxUnblockBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			jsonError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxUnblockBody))
			return
		}
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("read body: %v", err))
		return
	}
	caller, err := parseUnblock(body)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), blocksTimeout)
	defer cancel()
	n, err := rt.store.Unblock(ctx, caller)
	if err != nil {
		jsonError(w, http.StatusServiceUnavailable, fmt.Sprintf("state store: unblock: %v", err))
		return
	}
	s.log.Info("blocks lifted", "unblocked", n, "all", caller == "")
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, "{\"unblocked\":%d}\n", n)
}

// storeOrRefuse is the live version when it keeps state, else answers why
// there are no blocks.
func (s *Server) storeOrRefuse(w http.ResponseWriter) (*policyVersion, bool) {
	rt := s.live.Load()
	switch {
	case rt == nil:
		jsonError(w, http.StatusServiceUnavailable, "no policy loaded yet")
		return nil, false
	case rt.store == nil:
		jsonError(w, http.StatusNotFound, "the policy keeps no state: it has no callers.repeat, no blockFor and no state.redis")
		return nil, false
	}
	return rt, true
}

// jsonError answers {"error": message}.
func jsonError(w http.ResponseWriter, status int, message string) {
	b, _ := json.Marshal(map[string]string{"error": message})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
