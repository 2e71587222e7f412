package decision

import (
	"strconv"
	"strings"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

// reason renders a failure for the agent and the audit log. It names
// arguments and numeric bounds but never echoes an argument's value (it may
// be a secret) nor the strings a policy allows (they are the operator's).
func (f *failure) reason(call string) string {
	if f.code == CodeUnknownArgument {
		name := f.key
		if f.field.Path != "" {
			name = f.field.Path + "." + f.key
		}
		return "argument " + quote(f.path(name)) + " is not allowed for " + quote(call)
	}
	arg := "argument " + quote(f.path(f.field.Path))
	if f.code == CodeMissingArgument {
		return arg + " is required by the policy for " + quote(call)
	}
	if f.wrong != "" {
		return arg + " must be " + f.wrong
	}
	m := f.matcher
	switch m.Op {
	case policy.OpEq:
		return arg + " is not the allowed value"
	case policy.OpNe, policy.OpNotIn:
		return arg + " is a forbidden value"
	case policy.OpIn:
		return arg + " is not one of the allowed values"
	case policy.OpLt:
		return arg + " must be < " + formatScalar(m.Value)
	case policy.OpLte:
		return arg + " must be <= " + formatScalar(m.Value)
	case policy.OpGt:
		return arg + " must be > " + formatScalar(m.Value)
	case policy.OpGte:
		return arg + " must be >= " + formatScalar(m.Value)
	case policy.OpPattern:
		return arg + " does not match the required pattern"
	case policy.OpPrefix:
		return arg + " does not have the required prefix"
	case policy.OpSuffix:
		return arg + " does not have the required suffix"
	case policy.OpPathWithin:
		return arg + " is not a path within the allowed directory"
	case policy.OpMinLen:
		return arg + " must have at least " + strconv.Itoa(m.Len) + " characters or elements"
	case policy.OpMaxLen:
		return arg + " must have at most " + strconv.Itoa(m.Len) + " characters or elements"
	}
	return arg + " fails " + m.Op.String()
}

// path puts the failing element's index into the first "[]" of an
// each-element path: "tags[]" becomes "tags[2]".
func (f *failure) path(p string) string {
	if f.index < 0 {
		return p
	}
	return strings.Replace(p, "[]", "["+strconv.Itoa(f.index)+"]", 1)
}

func formatScalar(s policy.Scalar) string {
	if s.IsInt {
		return strconv.FormatInt(s.Int, 10)
	}
	return strconv.FormatFloat(s.Num, 'g', -1, 64)
}

// quote quotes a name for a reason the agent reads.
func quote(s string) string { return mcpfilter.Quote(s, 128) }
