package decision

import (
	"context"
	"encoding/json"
	"time"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

// celTimeout bounds one evaluation of a cel expression in time. The cost
// limit charges a comparison of lists or maps by their size at the top,
// and an agent can nest as much as its body holds under each element:
// with the default body limit, a subset check an operator might write ran
// for 260 to 400 ms. A condition on arguments takes microseconds; one
// that runs out of time denies, as one over its cost limit does. It is a
// variable for tests.
var celTimeout = 50 * time.Millisecond

// evalCEL runs a grant's cel expression; ok is false when it denies, and
// res then says why.
func evalCEL(g *policy.Grant, role *policy.Role, in *Input) (res Result, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), celTimeout)
	defer cancel()
	out, _, err := g.When.Program.ContextEval(ctx, map[string]any{
		policy.CELArgs:   celValue(in.Arguments),
		policy.CELAgent:  in.Agent,
		policy.CELRole:   role.Name,
		policy.CELServer: in.Server,
		policy.CELTool:   in.Name,
	})
	if err != nil {
		// CEL's error may quote the arguments (an invalid timestamp, a
		// missing map key, a regular expression they supply), and the
		// reason goes to the agent and the audit log unredacted.
		return Result{Rule: g.ID, Code: CodeCELError, RateLimits: g.RateLimits, EvalError: err,
			Reason: "the policy's condition for " + quote(displayName(in)) + " could not be evaluated on these arguments"}, false
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
	if !v.Exists() {
		return map[string]any{}
	}
	return v.Tree(celNumber)
}

func celNumber(lit json.Number) any {
	n, ok := parseNumber(lit)
	switch {
	case !ok:
		return lit
	case n.isInt:
		return n.i
	}
	return n.f
}
