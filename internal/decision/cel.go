package decision

import (
	"encoding/json"

	"github.com/amgateway/amg/internal/policy"
)

// evalCEL runs a grant's cel expression; ok is false when it denies, and
// res then says why.
func evalCEL(g *policy.Grant, role *policy.Role, in *Input) (res Result, ok bool) {
	out, _, err := g.When.Program.Eval(map[string]any{
		policy.CELArgs:   celValue(in.Arguments),
		policy.CELAgent:  in.Agent,
		policy.CELRole:   role.Name,
		policy.CELServer: in.Server,
		policy.CELTool:   in.Name,
	})
	if err != nil {
		return Result{Rule: g.ID, Code: CodeCELError, RateLimits: g.RateLimits,
			Reason: "the policy's condition for " + quote(displayName(in)) + " could not be evaluated: " + err.Error()}, false
	}
	if b, isBool := out.Value().(bool); !isBool || !b {
		return Result{Rule: g.ID, Code: CodeCELDenied, RateLimits: g.RateLimits,
			Reason: "the policy's condition for " + quote(displayName(in)) + " is not met"}, false
	}
	return Result{}, true
}

// celValue converts decoded JSON for CEL, which has no json.Number: an
// integer literal becomes an int, anything else a double.
func celValue(v any) any {
	switch v := v.(type) {
	case json.Number:
		if n, ok := toNumber(v); ok {
			if n.isInt {
				return n.i
			}
			return n.f
		}
		return v
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = celValue(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = celValue(e)
		}
		return out
	}
	return v
}
