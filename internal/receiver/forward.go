package receiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

// forward posts the notifications marked in keep to the upstream bot with
// the original Authorization header.
func (s *Server) forward(ctx context.Context, j *job, keep []bool) error {
	body := upstreamBody(j.body, j.batch, keep)
	for attempt := 0; ; attempt++ {
		status, err := s.postUpstream(ctx, j.rt.upstream, j.auth, body)
		s.metrics.upstream.WithLabelValues(statusLabel(status, err)).Inc()
		if err == nil && status >= 200 && status < 300 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("upstream answered HTTP %d", status)
			if status < 500 && status != http.StatusTooManyRequests {
				return err
			}
		}
		delay := min(100*time.Millisecond<<attempt, 2*time.Second)
		select {
		case <-ctx.Done():
			return fmt.Errorf("forward upstream: %w", errors.Join(ctx.Err(), err))
		case <-time.After(delay):
		}
	}
}

func (s *Server) postUpstream(ctx context.Context, url, auth string, body []byte) (int, error) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build upstream request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post upstream: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// upstreamBody is the body as Graph sent it when every notification is
// kept, else the same body with only the kept members in its "value"
// array, each exactly as read: the bytes that were decided are the bytes
// forwarded.
func upstreamBody(body []byte, batch *graph.Notifications, keep []bool) []byte {
	if !slices.Contains(keep, false) {
		return body
	}
	out := make([]byte, 0, len(body))
	out = append(out, body[:batch.ValueStart]...)
	out = append(out, '[')
	first := true
	for i := range batch.Value {
		if !keep[i] {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, batch.Value[i].Raw...)
	}
	out = append(out, ']')
	return append(out, body[batch.ValueEnd:]...)
}
