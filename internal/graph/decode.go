package graph

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrLegacyFormat is returned for a callback body in the older Skype format
// (a JSON object without a "value" array of Graph notifications). Graph
// expects 204 No Content for it and then resends in Graph format.
var ErrLegacyFormat = errors.New("legacy (non-Graph) notification format")

// SyntaxError reports malformed JSON with the byte offset where it broke.
type SyntaxError struct {
	Offset int64
	Err    error
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at byte offset %d: %v", e.Offset, e.Err)
}

func (e *SyntaxError) Unwrap() error { return e.Err }

// DecodeNotifications decodes a callback body. It returns ErrLegacyFormat for
// a JSON object that holds no "value" member, and a *SyntaxError naming the
// byte offset for malformed JSON.
//
// A well-formed body is parsed once: a "value" that is absent or null leaves
// the slice nil (an empty array leaves it empty, not nil), which is what
// tells the legacy format apart. Only a body that fails to decode is looked
// at again, so that the error is the one the format check reports first.
func DecodeNotifications(body []byte) (*Notifications, error) {
	if n, ok := fastDecodeNotifications(body); ok {
		if n.Value == nil {
			return nil, ErrLegacyFormat
		}
		return n, nil
	}
	var n Notifications
	if err := json.Unmarshal(body, &n); err != nil {
		return decodeNotificationsSlow(body)
	}
	if n.Value == nil {
		return nil, ErrLegacyFormat
	}
	return &n, nil
}

// decodeNotificationsSlow checks the format first, then decodes: a body
// whose "value" is absent or null is legacy whatever else it holds, and
// only a Graph body's decoding errors are reported.
func decodeNotificationsSlow(body []byte) (*Notifications, error) {
	var probe struct {
		Value json.RawMessage `json:"value"`
	}
	if err := unmarshal(body, &probe); err != nil {
		return nil, err
	}
	trimmed := bytes.TrimSpace(probe.Value)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return nil, ErrLegacyFormat
	}
	var n Notifications
	if err := unmarshal(body, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// DecodeCall decodes one call resource.
func DecodeCall(body []byte) (*Call, error) {
	var c Call
	if err := unmarshal(body, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func unmarshal(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &SyntaxError{Offset: se.Offset, Err: err}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return &SyntaxError{Offset: te.Offset, Err: fmt.Errorf("field %q: cannot use JSON %s as %s", te.Field, te.Value, te.Type)}
	}
	return err
}
