package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxBody bounds every JSON request body.
const maxBody = 1 << 20

// writeJSON writes v as JSON with status. A write error means the client
// went away, which nothing can be done about.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, fmt.Sprintf("encoding response: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// decodeJSON reads one JSON value of at most 1 MiB into v. strict refuses
// unknown fields (the control API, where a typo must not pass silently);
// allowEmpty accepts an empty body as {}.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, strict, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("request body exceeds %d bytes", maxBody)
		}
		return fmt.Errorf("reading request body: %w", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return errors.New("request body is empty; a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return describeJSONError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("unexpected data after the JSON object at byte offset %d", dec.InputOffset())
	}
	return nil
}

func describeJSONError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("invalid JSON at byte offset %d: %s", syntax.Offset, syntax.Error())
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("the body must be a JSON object, not %s", typ.Value)
		}
		return fmt.Errorf("field %q: cannot use JSON %s as %s", typ.Field, typ.Value, typ.Type)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("invalid JSON: unexpected end of input")
	default:
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
}

func badRequest(w http.ResponseWriter, r *http.Request, err error) {
	writeGraphError(w, r, http.StatusBadRequest, codeBadRequest, err.Error())
}

// handlePlaceCall serves POST /emulator/calls: 201 with the call resource
// once the created notification was delivered or failed.
func (s *Server) handlePlaceCall(w http.ResponseWriter, r *http.Request) {
	var body placeCallBody
	if err := decodeJSON(w, r, &body, true, false); err != nil {
		badRequest(w, r, err)
		return
	}
	res, err := s.placeCall(r.Context(), body)
	switch {
	case errors.Is(err, ErrInvalidCall):
		badRequest(w, r, err)
	case errors.Is(err, ErrCallExists):
		writeGraphError(w, r, http.StatusConflict, codeConflict, err.Error())
	case err != nil:
		writeGraphError(w, r, http.StatusInternalServerError, "generalException", err.Error())
	default:
		writeJSON(w, http.StatusCreated, res)
	}
}

func (s *Server) handleListCalls(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"value": s.Calls()})
}

func (s *Server) handleGetCall(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.Call(r.PathValue("id"))
	if !ok {
		writeGraphError(w, r, http.StatusNotFound, codeNotFound, fmt.Sprintf("Call %s was not found.", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (s *Server) handleAddFault(w http.ResponseWriter, r *http.Request) {
	var f FaultRule
	if err := decodeJSON(w, r, &f, true, false); err != nil {
		badRequest(w, r, err)
		return
	}
	if f.ID != 0 {
		badRequest(w, r, errors.New("id is assigned by the emulator"))
		return
	}
	added, err := s.AddFault(f)
	if err != nil {
		badRequest(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, added)
}

func (s *Server) handleListFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"value": s.Faults()})
}

func (s *Server) handleClearFaults(w http.ResponseWriter, _ *http.Request) {
	s.ClearFaults()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) handleResetStats(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	w.WriteHeader(http.StatusNoContent)
}

// handleRotateKeys serves POST /emulator/keys/rotate: 200 with the new
// signing kid and the kids now published.
func (s *Server) handleRotateKeys(w http.ResponseWriter, r *http.Request) {
	if err := s.RotateKeys(); err != nil {
		writeGraphError(w, r, http.StatusInternalServerError, "generalException", err.Error())
		return
	}
	kids := s.inboundKeys.kids()
	writeJSON(w, http.StatusOK, map[string]any{"kid": kids[0], "published": kids})
}
