// Package policy compiles role files (YAML, default deny) into an immutable,
// versioned policy set that the decision engine evaluates.
//
// Compilation keeps going after an error and reports every problem it finds,
// each as file:line:col, the YAML path and a message. A set that does not
// compile is never returned.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"time"

	"cel.dev/cel-go/cel"
)

// Mode says whether a role's verdicts are enforced or only recorded.
type Mode uint8

const (
	// ModeEnforce denies what the policy denies.
	ModeEnforce Mode = iota
	// ModeShadow evaluates fully but allows every call, recording the
	// verdict enforce mode would have reached.
	ModeShadow
)

func (m Mode) String() string {
	if m == ModeShadow {
		return "shadow"
	}
	return "enforce"
}

// Set is a compiled policy: every role of one policy directory. A Set is
// immutable once returned and safe for concurrent use.
type Set struct {
	version       Version
	versionString string
	roles         map[string]*Role
	misfits       Problems
}

// Misfits is what the set names and the upstreams did not offer when it
// was compiled against them (Options.Upstreams), nil if nothing.
func (s *Set) Misfits() error {
	if len(s.misfits) == 0 {
		return nil
	}
	return s.misfits
}

// Version identifies a compiled set in every decision.
func (s *Set) Version() Version { return s.version }

// VersionString is Version().String(), computed once: every decision
// record carries it.
func (s *Set) VersionString() string { return s.versionString }

// Role returns the named role.
func (s *Set) Role(name string) (*Role, bool) {
	r, ok := s.roles[name]
	return r, ok
}

// Roles returns every role, sorted by name.
func (s *Set) Roles() []*Role {
	out := make([]*Role, 0, len(s.roles))
	for _, r := range s.roles {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *Role) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Role is one compiled role file.
type Role struct {
	Name string
	Mode Mode
	// Source is where the role was defined.
	Source Pos
	// Servers holds the grants per upstream server name.
	Servers map[string]*ServerGrant
	// Approvals are checked in file order; the first that matches a call
	// parks it for a human.
	Approvals []*ApprovalRule
	// RateLimits apply to every call the role makes.
	RateLimits []*RateLimit
	// Redact lists argument path globs whose values are redacted before
	// anything is persisted, in addition to the built-in sensitive keys.
	Redact []string
}

// ServerGrant is what a role may use of one upstream server.
type ServerGrant struct {
	Tools   map[string]*Grant
	Prompts map[string]*Grant
	// Resources are URI globs in which '*' does not cross '/', '?' or '#'
	// (see ResourceGrant.Matches).
	Resources []*ResourceGrant
}

// Grant allows one tool (or prompt) and constrains its arguments.
type Grant struct {
	// ID names the rule in decisions and audit records: role/server/name.
	ID     string
	Server string
	Name   string
	Pos    Pos
	// Args constrains the arguments object. Its Fields are never nil, so an
	// argument the grant does not name is always denied.
	Args *Field
	// When is an optional CEL expression that must evaluate to true.
	When *Expr
	// RequireApproval parks every call to this tool for a human.
	RequireApproval bool
	// RateLimits holds the role's limits followed by the grant's own, so
	// a decision can hand them on without building a slice.
	RateLimits []*RateLimit
}

// ResourceGrant allows reading resources whose URI matches Pattern.
type ResourceGrant struct {
	ID      string
	Pattern string
}

// Matches reports whether uri is covered by the grant (see uriGlob). A
// URI the upstream could resolve or decode into another path matches no
// grant: one with a "." or ".." segment, raw or percent-encoded, a
// backslash, or an encoded slash or backslash. Like path_within, it
// refuses such a URI rather than resolve it: only the upstream knows what
// it names.
func (g *ResourceGrant) Matches(uri string) bool {
	return plainURI(uri) && uriGlob(g.Pattern, uri)
}

// uriGlob reports whether uri matches pattern, in which '*' is the only
// wildcard: it matches any run of characters but '/', '?' and '#', so it
// stays within one segment of a path, or a host, and never reaches into a
// query or a fragment, which the upstream cuts off before it reads the
// path or the host ("file:///docs/*.md" must not cover
// "file:///docs/key#.md", which names /docs/key). Every other character,
// '?' and '[' too, stands for itself, as it does in a URI.
func uriGlob(pattern, uri string) bool {
	p, u := 0, 0
	star, from := -1, 0 // the last '*' seen, and where in uri its match ends
	for p < len(pattern) || u < len(uri) {
		if p < len(pattern) {
			if pattern[p] == '*' {
				star, from = p, u
				p++
				continue
			}
			if u < len(uri) && uri[u] == pattern[p] {
				p++
				u++
				continue
			}
		}
		// The last '*' takes one more character, if it may: an earlier one
		// could not do better, since none reaches past a separator.
		if star < 0 || from == len(uri) || uriSeparator(uri[from]) {
			return false
		}
		from++
		p, u = star+1, from
	}
	return true
}

func uriSeparator(c byte) bool { return c == '/' || c == '?' || c == '#' }

// plainURI reports whether uri has no dot segment and no separator but
// '/'. Segments end at '/', and also at '?', '#' and ';', so that "..?x"
// and "..;" (a path parameter) count as "..".
func plainURI(uri string) bool {
	start := 0
	for i := 0; i <= len(uri); i++ {
		if i < len(uri) {
			switch c := uri[i]; {
			case c == '\\':
				return false
			case c == '%' && i+2 < len(uri) &&
				(uri[i+1] == '2' && uri[i+2]|0x20 == 'f' || uri[i+1] == '5' && uri[i+2]|0x20 == 'c'):
				return false
			case c != '/' && c != '?' && c != '#' && c != ';':
				continue
			}
		}
		if dotSegment(uri[start:i]) {
			return false
		}
		start = i + 1
	}
	return true
}

// dotSegment reports whether seg is "." or "..", each dot written as '.'
// or as "%2e".
func dotSegment(seg string) bool {
	dots := 0
	for i := 0; i < len(seg); i++ {
		switch {
		case seg[i] == '.':
		case seg[i] == '%' && i+2 < len(seg) && seg[i+1] == '2' && seg[i+2]|0x20 == 'e':
			i += 2
		default:
			return false
		}
		dots++
	}
	return dots == 1 || dots == 2
}

// Field constrains one value: an argument, a nested field or an array element.
type Field struct {
	// Path is the dotted path shown in reasons, e.g. "filter.owner" or "tags[]".
	Path string
	// Required fields must be present. A field with any constraint is
	// required unless marked optional: a missing value must not slip past a
	// bound the upstream would fill in with its own default.
	Required bool
	Matchers []Matcher
	// Each, when set, constrains every element; the value must be an array.
	Each *Field
	// Fields, when non-nil, makes the value an object whose keys must all
	// be named here. Names are sorted for a deterministic evaluation order.
	Fields map[string]*Field
	Names  []string

	pos   Pos     // where the field was named, for catalogue checks
	types typeSet // the JSON types its matchers accept
}

// Op is a matcher operator.
type Op uint8

// Matcher operators, as written in role files.
const (
	OpEq Op = iota
	OpNe
	OpIn
	OpNotIn
	OpLt
	OpLte
	OpGt
	OpGte
	OpPattern
	OpPrefix
	OpSuffix
	OpMinLen
	OpMaxLen
	OpPathWithin
)

var opNames = [...]string{
	OpEq: "eq", OpNe: "ne", OpIn: "in", OpNotIn: "not_in",
	OpLt: "lt", OpLte: "lte", OpGt: "gt", OpGte: "gte",
	OpPattern: "pattern", OpPrefix: "prefix", OpSuffix: "suffix",
	OpMinLen: "min_len", OpMaxLen: "max_len", OpPathWithin: "path_within",
}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "unknown"
}

// Matcher is one compiled comparison.
type Matcher struct {
	Op Op
	// Value is the operand of eq, ne, lt, lte, gt, gte.
	Value Scalar
	// Values is the operand of in and not_in; Strings indexes its strings.
	Values  []Scalar
	Strings map[string]struct{}
	// Text is the operand of prefix and suffix, and the cleaned directory
	// of path_within.
	Text string
	// Re is the anchored pattern.
	Re *regexp.Regexp
	// Len is the operand of min_len and max_len, in Unicode code points
	// for strings and elements for arrays.
	Len int
}

// ScalarKind is the JSON type of a Scalar.
type ScalarKind uint8

// JSON scalar kinds.
const (
	KindNull ScalarKind = iota
	KindBool
	KindNumber
	KindString
)

func (k ScalarKind) String() string {
	return [...]string{"null", "boolean", "number", "string"}[k]
}

// Scalar is a JSON scalar from a role file.
type Scalar struct {
	Kind ScalarKind
	Bool bool
	Str  string
	// Num holds every number; Int and IsInt hold integers exactly, so that
	// comparisons with large integer arguments are not rounded.
	Num   float64
	Int   int64
	IsInt bool
	// Text is the number's exact value as a decimal literal,
	// -?d*(.d*)?([eE][+-]?d+)?, for the comparisons Num would round.
	Text string
}

// Expr is a compiled CEL expression over the call: args, agent, role,
// server and tool.
type Expr struct {
	Source  string
	Program cel.Program
}

// ApprovalRule parks matching calls until a human approves them.
type ApprovalRule struct {
	ID string
	// Tool and Server are globs (path.Match syntax) on the tool name
	// and server name; empty matches everything.
	Tool   string
	Server string
	// Annotations must all equal the tool's effective annotations.
	Annotations map[Hint]bool
	// Timeout bounds how long a call waits; zero means the gateway default.
	Timeout time.Duration
}

// Matches reports whether the rule applies to a call of server/tool whose
// annotations are ann (nil: the tool declared none).
func (r *ApprovalRule) Matches(server, tool string, ann *Annotations) bool {
	if r.Tool != "" {
		if ok, _ := path.Match(r.Tool, tool); !ok {
			return false
		}
	}
	if r.Server != "" {
		if ok, _ := path.Match(r.Server, server); !ok {
			return false
		}
	}
	for h, want := range r.Annotations {
		if ann.Effective(h) != want {
			return false
		}
	}
	return true
}

// LimitKey says who shares one rate-limit budget.
type LimitKey uint8

const (
	// PerAgent gives every agent its own budget.
	PerAgent LimitKey = iota
	// PerRole shares one budget among every agent of the role.
	PerRole
)

func (k LimitKey) String() string {
	if k == PerRole {
		return "role"
	}
	return "agent"
}

// RateLimit allows a sustained Requests calls per Per, and saves up to
// Burst calls while unused: a stretch of time shorter than Per holds at
// most Burst + Requests - 1 calls, Requests only when Burst is 1.
type RateLimit struct {
	// ID names the limit where it is written: role/rate_limits[i] or
	// role/server/tool/rate_limits[i].
	ID string
	// State names the limit's budget in a limiter: where it is written
	// (its role, or its grant) and what it allows, but not its place in
	// the list, so that a limit a policy change leaves as it was keeps
	// its budget wherever it moves, and one changed starts a budget of its
	// own. Identical limits of one list are told apart by a "#n" suffix
	// from the second on. It holds no '|'.
	State    string
	Requests int
	Per      time.Duration
	Burst    int
	Key      LimitKey
}

// Emission returns l's emission interval, Per/Requests, and its burst
// window, Burst intervals: the arithmetic every limiter does, and the
// compiler checks. A limit that is no rate is an error rather than a
// panic or a wrong answer: no requests or no period, a burst of none,
// more than one request per nanosecond (an interval of 0), or a window
// beyond time.Duration.
func (l *RateLimit) Emission() (interval, window time.Duration, err error) {
	if l.Requests <= 0 || l.Per <= 0 || l.Burst <= 0 {
		return 0, 0, fmt.Errorf("%d requests per %v with a burst of %d is not a rate", l.Requests, l.Per, l.Burst)
	}
	interval = l.Per / time.Duration(l.Requests)
	if interval <= 0 {
		return 0, 0, errors.New("more than one request per nanosecond")
	}
	if time.Duration(l.Burst) > math.MaxInt64/interval {
		return 0, 0, fmt.Errorf("a burst of %d at one per %v is too long a window: limiters count it in a time.Duration, at most about 292 years", l.Burst, interval)
	}
	return interval, time.Duration(l.Burst) * interval, nil
}
