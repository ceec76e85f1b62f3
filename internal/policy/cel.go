package policy

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"

	"github.com/callguard/callguard/internal/graph"
)

// celCostLimit bounds one evaluation. A decision must be made in well under
// Graph's 15 s; this leaves room for loops over a call's targets and string
// functions, and stops runaway comprehensions in a fraction of a millisecond.
const celCostLimit = 100_000

// maxExpressionLen matches the CRD's MaxLength for match.expression.
const maxExpressionLen = 4096

// celEnv is built once: building an environment costs milliseconds, and an
// Env is safe for concurrent use.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("call", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("caller", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("now", cel.TimestampType),
		ext.Strings(),
	)
})

// compileExpression type-checks an expression that must yield a bool. A dyn
// result (e.g. `call.flag`) is accepted, and a non-bool at run time is an
// evaluation error like any other.
func compileExpression(expr string) (cel.Program, error) {
	if len(expr) > maxExpressionLen {
		return nil, fmt.Errorf("at most %d characters are allowed, got %d", maxExpressionLen, len(expr))
	}
	env, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	if out := ast.OutputType(); !out.IsExactType(cel.BoolType) && !out.IsExactType(cel.DynType) {
		return nil, fmt.Errorf("must evaluate to bool, got %s", out)
	}
	prg, err := env.Program(ast, cel.CostLimit(celCostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, err
	}
	return prg, nil
}

// eval evaluates the rule's expression; an error, or a result that is not a
// bool, counts as no match.
func (ev *evalState) eval(r *rule) bool {
	if ev.vars == nil {
		ev.vars = ev.celVars()
	}
	out, _, err := r.expr.Eval(ev.vars)
	if err == nil {
		if b, ok := out.Value().(bool); ok {
			return b
		}
		err = fmt.Errorf("expression evaluated to %s, not bool", out.Type().TypeName())
	}
	ev.p.celErrors.Add(1)
	if h := ev.p.celHandler; h != nil {
		h(r.name, err)
	}
	return false
}

func (ev *evalState) celVars() map[string]any {
	c := CallerOf(ev.call)
	call := ev.call
	return map[string]any{
		// Lazy: rendering the call costs more than most expressions, and many
		// look only at the caller. cel-go keeps the result for later rules.
		"call": func() any { return callMap(call) },
		"caller": types.NewStringStringMap(types.DefaultTypeAdapter, map[string]string{
			"type":        string(c.Type),
			"number":      c.Number,
			"id":          c.ID,
			"displayName": c.DisplayName,
			"tenantId":    c.TenantID,
		}),
		"now": ev.at,
	}
}

// callMap is the call resource as JSON, with the top-level fields always
// present (empty when Graph left them out) so that expressions can compare
// them without has() guards.
func callMap(call *graph.Call) map[string]any {
	m := map[string]any{}
	if call != nil {
		// Marshalling our own wire struct cannot fail, nor can reading it back.
		b, _ := json.Marshal(call)
		_ = json.Unmarshal(b, &m)
		m["state"] = call.EffectiveState()
		m["id"] = callID(call)
	}
	for _, k := range [...]string{"id", "state", "direction", "subject", "callbackUri", "callChainId",
		"correlationId", "tenantId", "myParticipantId"} {
		if _, ok := m[k]; !ok {
			m[k] = ""
		}
	}
	for _, k := range [...]string{"targets", "requestedModalities"} {
		if _, ok := m[k]; !ok {
			m[k] = []any{}
		}
	}
	if _, ok := m["source"]; !ok {
		m["source"] = map[string]any{}
	}
	return m
}
