package decision

import (
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
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

// celValue converts arguments for CEL, which has no json.Number: an integer
// literal becomes an int, anything else a double. Absent arguments are an
// empty map, so that conditions on args see no members rather than fail.
func celValue(v mcpfilter.Value) any {
	switch v.Kind() {
	case mcpfilter.Absent:
		return map[string]any{}
	case mcpfilter.Number:
		if n, ok := toNumber(v); ok {
			if n.isInt {
				return n.i
			}
			return n.f
		}
		lit, _ := v.Number()
		return lit
	case mcpfilter.Object:
		out := make(map[string]any, v.Len())
		for m := v.First(); m.Exists(); m = m.Next() {
			out[m.Key()] = celValue(m)
		}
		return out
	case mcpfilter.Array:
		out := make([]any, 0, v.Len())
		for e := v.First(); e.Exists(); e = e.Next() {
			out = append(out, celValue(e))
		}
		return out
	}
	return v.Any()
}
