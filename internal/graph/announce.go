package graph

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// What an announcement reads from the notifications of the call it answered:
// the call's state (established: play the prompt; terminated: stop) and the
// completion of the playPromptOperation (hang up).

// CallState returns the state a notification reports for its call, as Graph
// sent it (compare with EnumEqual): for a notification about the call
// resource itself, not one of its operations or participants, its
// resourceData's state (or the older callState); for a deleted one that
// states none, terminated. It is "" for any other notification.
func (n *Notification) CallState() string {
	u := n.URL()
	if u == "" && n.ResourceData != nil {
		u = n.ResourceData.ODataID
	}
	if u != "" && !isCallResource(u) {
		return ""
	}
	if u == "" && n.ResourceData == nil {
		return ""
	}
	if n.ResourceData != nil {
		if s := n.ResourceData.EffectiveState(); s != "" {
			return s
		}
	}
	if EnumEqual(n.ChangeType, ChangeDeleted) {
		return StateTerminated
	}
	return ""
}

// IsCallEstablished reports whether the notification says its call is
// established (answered, media flowing): the moment to play a prompt.
func (n *Notification) IsCallEstablished() bool {
	return EnumEqual(n.CallState(), StateEstablished)
}

// IsCallTerminated reports whether the notification says its call ended.
func (n *Notification) IsCallTerminated() bool {
	return EnumEqual(n.CallState(), StateTerminated)
}

// isCallResource reports whether a resource path names a call itself
// (…/calls/{id}), not something under it.
func isCallResource(u string) bool {
	u = strings.TrimRight(u, "/")
	i := strings.LastIndex(strings.ToLower(u), "/calls/")
	if i < 0 {
		return false
	}
	rest := u[i+len("/calls/"):]
	return rest != "" && !strings.Contains(rest, "/")
}

// PromptOperation is a playPromptOperation as a notification reports it.
type PromptOperation struct {
	// CallID and ID are the call's and the operation's ids, from the
	// notification's resource (/communications/calls/{call}/operations/{id}).
	CallID string
	ID     string
	// Status is notStarted, running, completed or failed, as Graph spelt
	// it (Done and Succeeded compare it without regard to case).
	Status string
	// CompletionReason is unknown, completedSuccessfully or
	// mediaOperationCanceled, when Graph sends one.
	CompletionReason string
	// ClientContext is the playPrompt request's clientContext.
	ClientContext string
	// ResultInfo is zero when the notification carries none.
	ResultInfo ResultInfo
}

// Done reports whether the operation ended, well or not.
func (o *PromptOperation) Done() bool {
	return EnumEqual(o.Status, OperationCompleted) || EnumEqual(o.Status, OperationFailed)
}

// Succeeded reports whether the prompts were played to the end.
func (o *PromptOperation) Succeeded() bool { return EnumEqual(o.Status, OperationCompleted) }

// maxOperationRaw bounds the notification PromptOperation reads; Graph's
// are well under a kilobyte.
const maxOperationRaw = 64 << 10

// PromptOperation returns the playPromptOperation the notification reports
// on: one whose resource is …/calls/{id}/operations/{opId} and whose
// resourceData has @odata.type #microsoft.graph.playPromptOperation. It is
// nil, with no error, for any other notification. It reads Raw (so only a
// notification from DecodeNotifications has one), with member names matched
// exactly. resultInfo's code and subcode are numbers as Graph sends them, or
// the decimal strings its call notifications carry, or null; status and
// completionReason strings or null. Anything else is an error naming the
// member.
func (n *Notification) PromptOperation() (*PromptOperation, error) {
	if len(n.Raw) == 0 {
		return nil, nil
	}
	if len(n.Raw) > maxOperationRaw {
		return nil, fmt.Errorf("operation notification of %d bytes: more than %d", len(n.Raw), maxOperationRaw)
	}
	var raw struct {
		ResourceData jsontext.Value `json:"resourceData"`
	}
	if err := jsonv2.Unmarshal(n.Raw, &raw); err != nil {
		return nil, operationError(err)
	}
	if k := raw.ResourceData.Kind(); k != '{' {
		return nil, nil
	}
	var data struct {
		ODataType        string         `json:"@odata.type"`
		ODataID          string         `json:"@odata.id"`
		ID               string         `json:"id"`
		Status           string         `json:"status"`
		CompletionReason string         `json:"completionReason"`
		ClientContext    string         `json:"clientContext"`
		ResultInfo       jsontext.Value `json:"resultInfo"`
	}
	// The type first: another resource's members need not be shaped so.
	var typed struct {
		ODataType string `json:"@odata.type"`
	}
	if err := jsonv2.Unmarshal(raw.ResourceData, &typed); err != nil || !isPlayPromptType(typed.ODataType) {
		return nil, nil
	}
	if err := jsonv2.Unmarshal(raw.ResourceData, &data); err != nil {
		return nil, operationError(err)
	}
	u := n.URL()
	if u == "" {
		u = data.ODataID
	}
	callID, opID, ok := operationResource(u)
	if !ok {
		return nil, nil
	}
	op := &PromptOperation{
		CallID:           callID,
		ID:               opID,
		Status:           data.Status,
		CompletionReason: data.CompletionReason,
		ClientContext:    data.ClientContext,
	}
	if data.ID != "" {
		op.ID = data.ID
	}
	if k := data.ResultInfo.Kind(); k != 0 && k != 'n' {
		ri, err := readResultInfo(data.ResultInfo)
		if err != nil {
			return nil, err
		}
		op.ResultInfo = ri
	}
	return op, nil
}

func isPlayPromptType(t string) bool {
	return strings.EqualFold(strings.TrimPrefix(t, "#"), strings.TrimPrefix(ODataPlayPromptOperation, "#"))
}

// operationResource splits …/calls/{call}/operations/{op}.
func operationResource(u string) (callID, opID string, ok bool) {
	u = strings.TrimRight(u, "/")
	lower := strings.ToLower(u)
	i := strings.LastIndex(lower, "/calls/")
	if i < 0 {
		return "", "", false
	}
	callID, rest, found := strings.Cut(u[i+len("/calls/"):], "/")
	if !found || callID == "" {
		return "", "", false
	}
	kind, opID, found := strings.Cut(rest, "/")
	if !found || !strings.EqualFold(kind, "operations") || opID == "" || strings.Contains(opID, "/") {
		return "", "", false
	}
	return callID, opID, true
}

// readResultInfo reads a resultInfo whose code and subcode may be numbers,
// decimal strings or null.
func readResultInfo(v jsontext.Value) (ResultInfo, error) {
	var ri struct {
		ODataType string         `json:"@odata.type"`
		Code      jsontext.Value `json:"code"`
		Subcode   jsontext.Value `json:"subcode"`
		Message   string         `json:"message"`
	}
	if err := jsonv2.Unmarshal(v, &ri); err != nil {
		return ResultInfo{}, fmt.Errorf("resourceData.resultInfo: %w", operationError(err))
	}
	code, err := flexInt(ri.Code)
	if err != nil {
		return ResultInfo{}, fmt.Errorf("resourceData.resultInfo.code: %w", err)
	}
	sub, err := flexInt(ri.Subcode)
	if err != nil {
		return ResultInfo{}, fmt.Errorf("resourceData.resultInfo.subcode: %w", err)
	}
	return ResultInfo{ODataType: ri.ODataType, Code: code, Subcode: sub, Message: ri.Message}, nil
}

// flexInt reads an integer sent as a JSON number or a decimal string;
// absent, null and "" are 0.
func flexInt(v jsontext.Value) (int, error) {
	switch v.Kind() {
	case 0, 'n':
		return 0, nil
	case '0':
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
			return 0, fmt.Errorf("%s is not a 32-bit integer", v)
		}
		return int(f), nil
	case '"':
		var s string
		if err := jsonv2.Unmarshal(v, &s); err != nil {
			return 0, err
		}
		s = strings.TrimSpace(s)
		if s == "" {
			return 0, nil
		}
		i, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%q is not a decimal integer", s)
		}
		return int(i), nil
	}
	return 0, fmt.Errorf("want a number or a string, not %s", bytes.TrimSpace(v[:min(len(v), 16)]))
}

// operationError wraps a decoding error, whose text names the member (its
// JSON pointer).
func operationError(err error) error {
	return fmt.Errorf("operation notification: %w", err)
}
