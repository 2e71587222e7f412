package decision

import (
	"cmp"
	"encoding/json"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

// failure is why arguments were rejected. It is built only on the deny
// path and rendered once, so the allow path does not allocate.
type failure struct {
	code    Code
	field   *policy.Field
	key     string // the unknown key, for CodeUnknownArgument
	matcher *policy.Matcher
	index   int // array element that failed, or -1
	wrong   string
}

// checkObject checks an object (the arguments, or a nested value) whose
// keys must all be named by f. It looks up only the names the policy
// knows: keys are unique, so if every key of obj was among them, obj has
// as many members as were found, and unknown keys are detected without
// looking at each. An object with more members than f has names holds an
// unknown one and is refused before any lookup.
func checkObject(f *policy.Field, obj mcpfilter.Value) *failure {
	if obj.Len() > len(f.Names) {
		return unknownKey(f, obj)
	}
	present := 0
	for _, name := range f.Names {
		v := obj.Member(name)
		if v.Exists() {
			present++
		}
		if fl := checkValue(f.Fields[name], v); fl != nil {
			// Unknown keys are reported before any constraint.
			if u := unknownKey(f, obj); u != nil {
				return u
			}
			return fl
		}
	}
	if present != obj.Len() {
		return unknownKey(f, obj)
	}
	return nil
}

// unknownKey names the smallest key of obj that f does not know, so that
// the same input always gets the same reason whatever the order of keys.
func unknownKey(f *policy.Field, obj mcpfilter.Value) *failure {
	unknown, found := "", false
	for m := obj.First(); m.Exists(); m = m.Next() {
		k := m.Key()
		if _, ok := f.Fields[k]; !ok && (!found || k < unknown) {
			unknown, found = k, true
		}
	}
	if !found {
		return nil
	}
	return &failure{code: CodeUnknownArgument, field: f, key: unknown, index: -1}
}

func checkValue(f *policy.Field, v mcpfilter.Value) *failure {
	if !v.Exists() {
		if f.Required {
			return &failure{code: CodeMissingArgument, field: f, index: -1}
		}
		return nil
	}
	for i := range f.Matchers {
		m := &f.Matchers[i]
		if ok, wrong := match(m, v, f.Each != nil); !ok {
			return &failure{code: CodeConstraintFailed, field: f, matcher: m, index: -1, wrong: wrong}
		}
	}
	if f.Each != nil {
		if v.Kind() != mcpfilter.Array {
			return &failure{code: CodeConstraintFailed, field: f, index: -1, wrong: "an array"}
		}
		i := 0
		for e := v.First(); e.Exists(); e = e.Next() {
			if fl := checkValue(f.Each, e); fl != nil {
				if fl.index < 0 {
					fl.index = i
				}
				return fl
			}
			i++
		}
	}
	if f.Fields != nil {
		if v.Kind() != mcpfilter.Object {
			return &failure{code: CodeConstraintFailed, field: f, index: -1, wrong: "an object"}
		}
		return checkObject(f, v)
	}
	return nil
}

// match applies one matcher. elements is set when the value's field has
// each: min_len and max_len then count an array's elements, and else a
// string's characters. When the value has the wrong type for the matcher,
// wrong names the type it should have had.
func match(m *policy.Matcher, v mcpfilter.Value, elements bool) (ok bool, wrong string) {
	switch m.Op {
	case policy.OpEq:
		return equal(m.Value, v, both), ""
	case policy.OpIn:
		return in(m, v, both), ""
	case policy.OpNe, policy.OpNotIn:
		// What they exclude says nothing of an array or an object, whose
		// members no matcher here would see.
		if k := v.Kind(); k == mcpfilter.Array || k == mcpfilter.Object {
			return false, "a string, number, boolean or null"
		}
		if m.Op == policy.OpNe {
			return !equal(m.Value, v, either), ""
		}
		return !in(m, v, either), ""
	case policy.OpLt, policy.OpLte, policy.OpGt, policy.OpGte:
		n, isNum := toNumber(v)
		if !isNum {
			return false, "a number"
		}
		// The number as written, and as an upstream that reads numbers
		// as float64 (most JSON decoders) gets it: 1e-400 is above 0,
		// and reads as 0. Both must be within the bound.
		return holds(m.Op, compare(n, m.Value)) && holds(m.Op, cmp.Compare(n.f, m.Value.Num)), ""
	case policy.OpPattern, policy.OpPrefix, policy.OpSuffix, policy.OpPathWithin:
		s, isStr := v.Str()
		if !isStr {
			return false, "a string"
		}
		switch m.Op {
		case policy.OpPattern:
			return m.Re.MatchString(s), ""
		case policy.OpPrefix:
			return strings.HasPrefix(s, m.Text), ""
		case policy.OpPathWithin:
			return pathWithin(s, m.Text), ""
		default:
			return strings.HasSuffix(s, m.Text), ""
		}
	case policy.OpMinLen, policy.OpMaxLen:
		if !elements {
			s, isStr := v.Str()
			if !isStr {
				return false, "a string"
			}
			return stringLen(m, s), ""
		}
		if v.Kind() != mcpfilter.Array {
			return false, "an array"
		}
		n := v.Len()
		if m.Op == policy.OpMinLen {
			return n >= m.Len, ""
		}
		return n <= m.Len, ""
	}
	return false, ""
}

// stringLen applies min_len or max_len to s in code points, counting them
// only when the byte length cannot decide: a string has at least a quarter
// as many code points as bytes and at most as many.
func stringLen(m *policy.Matcher, s string) bool {
	if m.Op == policy.OpMaxLen {
		return len(s) <= m.Len || utf8.RuneCountInString(s) <= m.Len
	}
	return (len(s)+utf8.UTFMax-1)/utf8.UTFMax >= m.Len || utf8.RuneCountInString(s) >= m.Len
}

// pathWithin reports whether p names dir or something below it. A path
// with a ".." segment is refused outright rather than resolved: the
// upstream, not the gateway, decides what it resolves to (symlinks, its
// working directory), so only a path that cannot climb is safe to judge
// by its text. A prefix matcher is no substitute: "/srv/a/../b" has the
// prefix "/srv/a/".
func pathWithin(p, dir string) bool {
	if strings.ContainsRune(p, 0) || strings.ContainsRune(p, '\\') {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return false
		}
	}
	c := path.Clean(p)
	if dir == "/" {
		return strings.HasPrefix(c, "/")
	}
	return c == dir || strings.HasPrefix(c, dir+"/")
}

// holds applies an order matcher to c, the argument compared with its
// bound.
func holds(op policy.Op, c int) bool {
	switch op {
	case policy.OpLt:
		return c < 0
	case policy.OpLte:
		return c <= 0
	case policy.OpGt:
		return c > 0
	default:
		return c >= 0
	}
}

// readings says in which readings of an argument a number must equal a
// policy's: as written and as an upstream reading it into a float64 gets
// it (both), for eq and in; or in one of them (either), for what ne and
// not_in exclude. An upstream reading 1e-400 gets 0, which not_in [0]
// must keep out, and one reading 2^53+1 gets 2^53.
type readings bool

const (
	both   readings = false
	either readings = true
)

func equal(s policy.Scalar, v mcpfilter.Value, r readings) bool {
	switch s.Kind {
	case policy.KindString:
		str, ok := v.Str()
		return ok && str == s.Str
	case policy.KindNumber:
		n, ok := toNumber(v)
		if !ok {
			return false
		}
		exact, rounded := compare(n, s) == 0, n.f == s.Num
		if r == either {
			return exact || rounded
		}
		return exact && rounded
	case policy.KindBool:
		b, ok := v.Bool()
		return ok && b == s.Bool
	default:
		return v.Kind() == mcpfilter.Null
	}
}

func in(m *policy.Matcher, v mcpfilter.Value, r readings) bool {
	if s, ok := v.Str(); ok {
		_, found := m.Strings[s]
		return found
	}
	for _, s := range m.Values {
		if s.Kind != policy.KindString && equal(s, v, r) {
			return true
		}
	}
	return false
}

// number is an argument's numeric value, exact for integers that fit an
// int64 so that large IDs compare without rounding; lit is the literal,
// for the comparisons float64 cannot settle.
type number struct {
	f     float64
	i     int64
	isInt bool
	lit   string
}

// toNumber reads a Number's literal; false for any other kind, or a
// literal beyond float64's range.
func toNumber(v mcpfilter.Value) (number, bool) {
	lit, ok := v.Number()
	if !ok {
		return number{}, false
	}
	return parseNumber(lit)
}

// parseNumber reads a number literal; false for one beyond float64's range.
func parseNumber(lit json.Number) (number, bool) {
	s := string(lit)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return number{f: float64(i), i: i, isInt: true, lit: s}, true
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	return number{f: f, lit: s}, err == nil
}

// compare orders an argument against a policy number exactly. Rounding to
// float64 never reverses an order, so floats that differ decide at once;
// equal floats may hide a difference the rounding erased (2^53+1 reads as
// 2^53, 1e-400 as 0), so a tie is settled on the literals.
func compare(n number, s policy.Scalar) int {
	if n.isInt && s.IsInt {
		switch {
		case n.i < s.Int:
			return -1
		case n.i > s.Int:
			return 1
		}
		return 0
	}
	switch {
	case n.f < s.Num:
		return -1
	case n.f > s.Num:
		return 1
	}
	return compareDecimal(n.lit, s.Text)
}

// decimal is a number literal read without rounding: its value is
// 0.d₁d₂d₃… × 10^exp, where the digits d are those of hi then lo, the
// first of them not 0. Zero has no digits.
type decimal struct {
	neg    bool
	hi, lo string
	exp    int64
}

// maxExp caps the exponents read from literals, so that no arithmetic on
// them overflows. A capped literal still orders correctly against 0 and
// against any number a float64 can tell from 0, which every number of a
// compiled policy is: no literal is long enough to shift it back within
// reach of them.
const maxExp = 1 << 50

// readDecimal reads a literal of the form -?d*(.d*)?([eE][+-]?d+)?, which
// holds every JSON number and every number a compiled policy keeps.
func readDecimal(s string) decimal {
	var d decimal
	if s != "" && (s[0] == '-' || s[0] == '+') {
		d.neg, s = s[0] == '-', s[1:]
	}
	mant, e := s, ""
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant, e = s[:i], s[i+1:]
	}
	expNeg := false
	if e != "" && (e[0] == '-' || e[0] == '+') {
		expNeg, e = e[0] == '-', e[1:]
	}
	for i := 0; i < len(e) && d.exp < maxExp; i++ {
		d.exp = d.exp*10 + int64(e[i]-'0')
	}
	d.exp = min(d.exp, maxExp)
	if expNeg {
		d.exp = -d.exp
	}
	ip, fp, _ := strings.Cut(mant, ".")
	ip = strings.TrimLeft(ip, "0")
	if ip == "" {
		t := strings.TrimLeft(fp, "0")
		d.exp -= int64(len(fp) - len(t))
		fp = t
	} else {
		d.exp += int64(len(ip))
	}
	d.hi, d.lo = ip, strings.TrimRight(fp, "0")
	if d.lo == "" {
		d.hi = strings.TrimRight(d.hi, "0")
	}
	if d.hi == "" && d.lo == "" {
		return decimal{}
	}
	return d
}

// sign is -1, 0 or 1.
func (d *decimal) sign() int {
	switch {
	case d.hi == "" && d.lo == "":
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// digit is the ith significant digit, '0' past the last.
func (d *decimal) digit(i int) byte {
	if i < len(d.hi) {
		return d.hi[i]
	}
	if i -= len(d.hi); i < len(d.lo) {
		return d.lo[i]
	}
	return '0'
}

// compareDecimal compares two literals exactly, without allocating.
func compareDecimal(a, b string) int {
	x, y := readDecimal(a), readDecimal(b)
	sx, sy := x.sign(), y.sign()
	if sx != sy || sx == 0 {
		return cmp.Compare(sx, sy)
	}
	// Same sign: compare magnitudes, then flip for negatives.
	c := cmp.Compare(x.exp, y.exp)
	for i, n := 0, max(len(x.hi)+len(x.lo), len(y.hi)+len(y.lo)); c == 0 && i < n; i++ {
		c = cmp.Compare(x.digit(i), y.digit(i))
	}
	return c * sx
}
