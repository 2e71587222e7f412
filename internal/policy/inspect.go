package policy

import (
	"slices"
	"strconv"
	"strings"
)

// String writes the scalar as JSON would: null, true, a number as it was
// written (integers in decimal), a string quoted.
func (s Scalar) String() string {
	switch s.Kind {
	case KindBool:
		return strconv.FormatBool(s.Bool)
	case KindNumber:
		return s.Text
	case KindString:
		return strconv.Quote(s.Str)
	}
	return "null"
}

// String writes the matcher as a role file would, e.g. `lte 100`,
// `in ["a", "b"]` or `pattern "[a-z]+"`. The values of in and not_in are
// sorted, so that matchers that accept the same values read alike.
func (m Matcher) String() string {
	op := m.Op.String()
	switch m.Op {
	case OpEq, OpNe, OpLt, OpLte, OpGt, OpGte:
		return op + " " + m.Value.String()
	case OpIn, OpNotIn:
		vals := make([]string, len(m.Values))
		for i, v := range m.Values {
			vals[i] = v.String()
		}
		slices.Sort(vals)
		return op + " [" + strings.Join(slices.Compact(vals), ", ") + "]"
	case OpPattern, OpPrefix, OpSuffix, OpPathWithin:
		return op + " " + strconv.Quote(m.Text)
	case OpMinLen, OpMaxLen:
		return op + " " + strconv.Itoa(m.Len)
	}
	return op
}

// OwnRateLimits returns the limits written on the grant itself: RateLimits
// without the role's limits it starts with.
func (g *Grant) OwnRateLimits() []*RateLimit {
	prefix := g.ID + "/"
	for i, l := range g.RateLimits {
		if strings.HasPrefix(l.ID, prefix) {
			return g.RateLimits[i:]
		}
	}
	return nil
}
