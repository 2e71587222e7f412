package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"

	"github.com/amgateway/amg/internal/diag"
)

// File is one role file's name (as reported in problems) and content.
type File struct {
	Name string
	Data []byte
}

// Options tune compilation. A nil *Options is the zero value.
type Options struct {
	// Servers are the upstream names the gateway knows. A role naming any
	// other server is a problem. Nil skips the check.
	Servers []string
	// Catalog, when set, is the tool list each grant is checked against
	// (the tool exists, each constrained argument is in its input schema,
	// each matcher fits the argument's type); a server it does not know
	// is a problem. Nil skips those checks.
	Catalog Catalog
	// Upstreams, when set and Catalog is not, is the gateway's live
	// catalogue: grants on a server it lists are checked as against
	// Catalog, and a server it cannot list now (not reached yet) is not
	// checked. What this finds is no problem: the set compiles, and
	// Set.Misfits reports it.
	Upstreams Catalog
	// Sequence is the version sequence of the compiled set; 0 means 1.
	Sequence uint64
}

// LoadDir compiles every *.yaml and *.yml file directly in dir.
func LoadDir(dir string, opts *Options) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policy directory: %w", err)
	}
	var files []File
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		name := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read role file: %w", err)
		}
		files = append(files, File{Name: name, Data: data})
	}
	if len(files) == 0 {
		return nil, Problems{{Pos: Pos{File: dir}, Msg: "no role files (*.yaml, *.yml)"}}
	}
	return Compile(files, opts)
}

// Compile compiles role files into a Set. On failure the error is Problems
// listing everything found, not only the first.
func Compile(files []File, opts *Options) (*Set, error) {
	if opts == nil {
		opts = &Options{}
	}
	c := &compiler{opts: opts}
	if opts.Servers != nil {
		c.servers = make(map[string]bool, len(opts.Servers))
		for _, s := range opts.Servers {
			c.servers[s] = true
		}
	}
	set := &Set{roles: map[string]*Role{}}
	defined := map[string]Pos{}
	for _, f := range files {
		c.File, c.data, c.lines = f.Name, f.Data, nil
		r := c.role(f.Data)
		if r == nil {
			continue
		}
		if prev, dup := defined[r.Name]; dup {
			c.Problems = append(c.Problems, Problem{Pos: r.Source, Path: "role",
				Msg: fmt.Sprintf("duplicate role %q (also defined at %s:%d:%d)", r.Name, prev.File, prev.Line, prev.Col)})
			continue
		}
		defined[r.Name] = r.Source
		set.roles[r.Name] = r
	}
	if len(c.Problems) > 0 {
		c.Problems.Sort()
		return nil, c.Problems
	}
	if len(c.misfits) > 0 {
		c.misfits.Sort()
		set.misfits = c.misfits
	}
	seq := opts.Sequence
	if seq == 0 {
		seq = 1
	}
	set.version = Version{Seq: seq, Hash: hashFiles(files)}
	set.versionString = set.version.String()
	return set, nil
}

// Version identifies a compiled set: a content hash, so equal policies
// have equal hashes on every replica, and the load sequence.
type Version struct {
	Seq  uint64
	Hash string
}

// String is SEQ-HASH with the hash cut to 12 hex digits.
func (v Version) String() string {
	h := v.Hash
	if len(h) > 12 {
		h = h[:12]
	}
	return strconv.FormatUint(v.Seq, 10) + "-" + h
}

func hashFiles(files []File) string {
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b File) int { return strings.Compare(filepath.Base(a.Name), filepath.Base(b.Name)) })
	h := sha256.New()
	for _, f := range sorted {
		// Length-prefix each part so that no two file sets hash alike.
		fmt.Fprintf(h, "%d:%s%d:", len(filepath.Base(f.Name)), filepath.Base(f.Name), len(f.Data))
		h.Write(f.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type compiler struct {
	diag.Walker
	opts    *Options
	servers map[string]bool
	data    []byte
	lines   []string // of data, split when first needed (see line)
	celEnv  *cel.Env
	misfits Problems // what the live catalogue finds (Options.Upstreams)
}

// asMisfits runs check and takes the problems it reports as misfits.
func (c *compiler) asMisfits(check func()) {
	n := len(c.Problems)
	check()
	c.misfits = append(c.misfits, c.Problems[n:]...)
	c.Problems = c.Problems[:n]
}

func (c *compiler) glob(n *yaml.Node, at string) (string, bool) {
	s, ok := c.Str(n, at)
	if !ok {
		return "", false
	}
	if _, err := pathpkg.Match(s, ""); err != nil {
		c.Errorf(n, at, "invalid glob %q", s)
		return "", false
	}
	return s, true
}

var roleKeys = []string{"role", "description", "mode", "servers", "approvals", "rate_limits", "redact"}

func (c *compiler) role(data []byte) *Role {
	root := c.Document(data, "role")
	if root == nil {
		return nil
	}
	r := &Role{Source: c.At(root), Servers: map[string]*ServerGrant{}}
	var nameNode, serversNode *yaml.Node
	c.Fields(root, "", roleKeys, func(key string, k, v *yaml.Node) {
		switch key {
		case "role":
			if name, ok := c.Str(v, key); ok {
				if err := checkName(name); err != nil {
					c.Errorf(v, key, "invalid role name %q: %v", name, err)
				}
				r.Name, r.Source, nameNode = name, c.At(v), v
			}
		case "description":
			c.Str(v, key)
		case "mode":
			if m, ok := c.Str(v, key); ok {
				switch m {
				case "enforce":
					r.Mode = ModeEnforce
				case "shadow":
					r.Mode = ModeShadow
				default:
					c.Errorf(v, key, "must be enforce or shadow, got %q", m)
				}
			}
		case "servers":
			serversNode = v
		case "approvals":
			c.List(v, key, func(i int, p string, v *yaml.Node) {
				if a := c.approval(v, p, fmt.Sprintf("approvals[%d]", i)); a != nil {
					r.Approvals = append(r.Approvals, a)
				}
			})
		case "rate_limits":
			r.RateLimits = c.rateLimits(v, key)
		case "redact":
			c.List(v, key, func(_ int, p string, v *yaml.Node) {
				if g, ok := c.glob(v, p); ok {
					r.Redact = append(r.Redact, g)
				}
			})
		}
	})
	if root.Kind != yaml.MappingNode {
		return nil
	}
	if nameNode == nil {
		c.Errorf(root, "", "missing required field \"role\"")
		return nil
	}
	// Rule IDs carry the role name, known only now.
	for _, a := range r.Approvals {
		a.ID = r.Name + "/" + a.ID
	}
	for _, l := range r.RateLimits {
		l.ID, l.State = r.Name+"/"+l.ID, r.Name+"/"+l.State
	}
	if serversNode != nil {
		c.Fields(serversNode, "servers", nil, func(server string, k, v *yaml.Node) {
			c.server(r, server, k, v)
		})
	}
	return r
}

var serverKeys = []string{"tools", "prompts", "resources"}

func (c *compiler) server(r *Role, server string, k, v *yaml.Node) {
	path := "servers." + server
	if err := checkServerName(server); err != nil {
		c.Errorf(k, path, "invalid server name %q: %v", server, err)
		return
	}
	known := c.servers == nil || c.servers[server]
	var catalog []Tool
	checked := false
	switch {
	case c.opts.Catalog != nil:
		var ok bool
		catalog, ok = c.opts.Catalog.Tools(server)
		known, checked = known && ok, true
	case c.opts.Upstreams != nil:
		catalog, checked = c.opts.Upstreams.Tools(server)
	}
	if !known {
		c.Errorf(k, path, "unknown server %q", server)
		return
	}
	sg := &ServerGrant{Tools: map[string]*Grant{}, Prompts: map[string]*Grant{}}
	r.Servers[server] = sg
	c.Fields(v, path, serverKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "tools", "prompts":
			grants := sg.Tools
			if key == "prompts" {
				grants = sg.Prompts
			}
			c.List(v, p, func(_ int, p string, v *yaml.Node) {
				g := c.grant(r, server, key == "prompts", v, p)
				if g == nil {
					return
				}
				if prev, dup := grants[g.Name]; dup {
					c.Errorf(v, p, "duplicate grant for %q (first at line %d)", g.Name, prev.Pos.Line)
					return
				}
				grants[g.Name] = g
				if key == "tools" && checked {
					check := func() { c.checkTool(g, catalog, v, p) }
					if c.opts.Catalog == nil {
						c.asMisfits(check)
					} else {
						check()
					}
				}
			})
		case "resources":
			c.List(v, p, func(i int, p string, v *yaml.Node) {
				// A URI glob (see uriGlob): any string is one, '[' and '?'
				// standing for themselves.
				if g, ok := c.Str(v, p); ok {
					sg.Resources = append(sg.Resources, &ResourceGrant{
						ID: fmt.Sprintf("%s/%s/resources[%d]", r.Name, server, i), Pattern: g})
				}
			})
		}
	})
}

var grantKeys = []string{"name", "description", "constraints", "cel", "require_approval", "rate_limits"}

func (c *compiler) grant(r *Role, server string, prompt bool, n *yaml.Node, path string) *Grant {
	g := &Grant{Server: server, Pos: c.At(n)}
	constraints := newNode(n)
	var celNode *yaml.Node
	var own []*RateLimit
	named := false
	c.Fields(n, path, grantKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "name":
			named = true
			if name, ok := c.Str(v, p); ok {
				if err := checkName(name); err != nil {
					c.Errorf(v, p, "invalid name %q: %v", name, err)
					return
				}
				g.Name = name
			}
		case "description":
			c.Str(v, p)
		case "constraints":
			c.Fields(v, p, nil, func(arg string, k, v *yaml.Node) {
				c.constraint(constraints, arg, k, v, p)
			})
		case "cel":
			celNode = v
		case "require_approval":
			g.RequireApproval, _ = c.Boolean(v, p)
			if prompt && g.RequireApproval {
				// The gateway parks a single tools/call, nothing else:
				// every prompts/get would be refused.
				c.Errorf(v, p, "a prompt cannot wait for approval: the gateway parks only tool calls")
			}
		case "rate_limits":
			own = c.rateLimits(v, p)
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if !named {
		c.Errorf(n, path, "missing required field \"name\"")
	}
	if g.Name == "" {
		return nil
	}
	g.ID = r.Name + "/" + server + "/" + g.Name
	for _, l := range own {
		l.ID, l.State = g.ID+"/"+l.ID, g.ID+"/"+l.State
	}
	g.RateLimits = append(slices.Clip(r.RateLimits), own...)
	g.Args = c.build(constraints, "", true)
	g.Args.Required = false
	if celNode != nil {
		g.When = c.celExpr(celNode, path+".cel")
	}
	return g
}

// node is a constraint being built: dotted paths and fields: blocks may
// name the same object from several places, so the tree is assembled first
// and turned into Fields at the end.
type node struct {
	at       *yaml.Node // where the value was first named
	def      *yaml.Node // where the value's own constraint was written; nil if only implied by a dotted path
	optional bool
	object   bool // fields: was written, even empty: the value is an object holding only the fields named
	matchers []Matcher
	types    typeSet
	each     *node
	children map[string]*node
	order    []string
}

func newNode(at *yaml.Node) *node { return &node{at: at, children: map[string]*node{}, types: anyType} }

var constraintKeys = []string{
	"eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "pattern", "prefix", "suffix",
	"path_within", "min_len", "max_len", "each", "fields", "optional",
}

// constraint compiles the constraint written for key (a name or a dotted
// path) under parent.
func (c *compiler) constraint(parent *node, key string, k, v *yaml.Node, path string) {
	segs := strings.Split(key, ".")
	for _, s := range segs {
		if s == "" {
			c.Errorf(k, diag.Join(path, key), "invalid argument path %q: empty segment", key)
			return
		}
	}
	path = diag.Join(path, key)
	n := parent
	for i, s := range segs {
		if i > 0 {
			// A dotted path makes what it passes through objects, as
			// fields: does.
			if n.types&typeObject == 0 {
				c.Errorf(k, path, "%q needs %q to be an object, but its matchers need %s", key, strings.Join(segs[:i], "."), n.types)
				return
			}
			n.types &= typeObject
		}
		child, ok := n.children[s]
		if !ok {
			child = newNode(k)
			n.children[s] = child
			n.order = append(n.order, s)
		}
		n = child
	}
	if n.def != nil {
		c.Errorf(k, path, "argument %q is constrained twice (first at line %d)", key, n.def.Line)
		return
	}
	n.def = k
	c.constraintBody(n, v, path)
}

func (c *compiler) constraintBody(n *node, v *yaml.Node, path string) {
	if n.def == nil {
		n.def = v
	}
	c.Fields(v, path, constraintKeys, func(op string, k, v *yaml.Node) {
		p := path + "." + op
		switch op {
		case "optional":
			n.optional, _ = c.Boolean(v, p)
		case "each":
			n.each = newNode(k)
			c.constraintBody(n.each, v, p)
			c.narrow(n, typeArray, k, path, op)
		case "fields":
			n.object = true
			c.Fields(v, p, nil, func(arg string, k, v *yaml.Node) {
				c.constraint(n, arg, k, v, p)
			})
			c.narrow(n, typeObject, k, path, op)
		default:
			if m, types, ok := c.matcher(op, v, p); ok {
				n.matchers = append(n.matchers, m)
				c.narrow(n, types, k, path, op)
			}
		}
	})
	c.checkLengths(n, v, path)
}

// narrow restricts the types a value may have and reports matchers that no
// value could satisfy together.
func (c *compiler) narrow(n *node, t typeSet, k *yaml.Node, path, op string) {
	if n.types&t == 0 {
		c.Errorf(k, path+"."+op, "%s needs %s, but the other matchers need %s", op, t, n.types)
		return
	}
	n.types &= t
}

func (c *compiler) checkLengths(n *node, v *yaml.Node, path string) {
	minLen, maxLen := -1, -1
	for _, m := range n.matchers {
		switch m.Op {
		case OpMinLen:
			minLen = m.Len
		case OpMaxLen:
			maxLen = m.Len
		}
	}
	if minLen >= 0 && maxLen >= 0 && minLen > maxLen {
		c.Errorf(v, path, "min_len %d is greater than max_len %d: nothing can match", minLen, maxLen)
	}
	if (minLen >= 0 || maxLen >= 0) && n.each == nil {
		// Without each to say what its elements may be, an array would
		// pass on its length alone, [{"$where": "1"}] as one element: a
		// length measures an array only beside each, else a string.
		n.types &^= typeArray
	}
}

func (c *compiler) matcher(op string, v *yaml.Node, path string) (Matcher, typeSet, bool) {
	switch op {
	case "eq", "ne":
		s, ok := c.scalar(v, path)
		if !ok {
			return Matcher{}, 0, false
		}
		m := Matcher{Op: OpEq, Value: s}
		if op == "ne" {
			// ne says nothing of the scalar's type: a number is not
			// equal to "x". An array or an object is no scalar at all.
			return Matcher{Op: OpNe, Value: s}, scalarType, true
		}
		return m, s.Kind.typeSet(), true
	case "in", "not_in":
		return c.setMatcher(op, v, path)
	case "lt", "lte", "gt", "gte":
		s, ok := c.scalar(v, path)
		if !ok {
			return Matcher{}, 0, false
		}
		if s.Kind != KindNumber {
			c.Errorf(v, path, "%s needs a number, got %s", op, s.Kind.article())
			return Matcher{}, 0, false
		}
		return Matcher{Op: map[string]Op{"lt": OpLt, "lte": OpLte, "gt": OpGt, "gte": OpGte}[op], Value: s}, typeNumber, true
	case "pattern":
		s, ok := c.Str(v, path)
		if !ok {
			return Matcher{}, 0, false
		}
		// The pattern must be a regular expression on its own before it
		// is anchored: "a)|(b" is none, but ^(?:a)|(b)$ is one, matching
		// anything that starts with a or ends with b.
		re, err := regexp.Compile(s)
		if err == nil {
			// Anchoring nests s one level deeper, which can still
			// exceed a limit s alone is within.
			re, err = regexp.Compile(`^(?:` + s + `)$`)
		}
		if err != nil {
			c.Errorf(v, path, "invalid pattern: %v", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
			return Matcher{}, 0, false
		}
		return Matcher{Op: OpPattern, Re: re, Text: s}, typeString, true
	case "prefix", "suffix":
		s, ok := c.Str(v, path)
		if !ok {
			return Matcher{}, 0, false
		}
		o := OpPrefix
		if op == "suffix" {
			o = OpSuffix
		}
		return Matcher{Op: o, Text: s}, typeString, true
	case "path_within":
		s, ok := c.Str(v, path)
		if !ok {
			return Matcher{}, 0, false
		}
		if s == "" || strings.ContainsRune(s, 0) {
			c.Errorf(v, path, "path_within needs a directory")
			return Matcher{}, 0, false
		}
		return Matcher{Op: OpPathWithin, Text: pathpkg.Clean(s)}, typeString, true
	case "min_len", "max_len":
		n, ok := c.Integer(v, path, 0)
		if !ok {
			return Matcher{}, 0, false
		}
		o := OpMinLen
		if op == "max_len" {
			o = OpMaxLen
		}
		return Matcher{Op: o, Len: n}, typeString | typeArray, true
	}
	panic("unreachable: matcher " + op)
}

func (c *compiler) setMatcher(op string, v *yaml.Node, path string) (Matcher, typeSet, bool) {
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		c.Errorf(v, path, "%s needs a non-empty list of values, got %s", op, diag.Describe(v))
		return Matcher{}, 0, false
	}
	m := Matcher{Op: OpIn}
	if op == "not_in" {
		m.Op = OpNotIn
	}
	var types typeSet
	ok := true
	for i, e := range v.Content {
		s, good := c.scalar(e, fmt.Sprintf("%s[%d]", path, i))
		if !good {
			ok = false
			continue
		}
		m.Values = append(m.Values, s)
		types |= s.Kind.typeSet()
		if s.Kind == KindString {
			if m.Strings == nil {
				m.Strings = map[string]struct{}{}
			}
			m.Strings[s.Str] = struct{}{}
		}
	}
	if m.Op == OpNotIn {
		types = scalarType
	}
	return m, types, ok
}

func (c *compiler) scalar(n *yaml.Node, path string) (Scalar, bool) {
	if n.Kind != yaml.ScalarNode {
		c.Errorf(n, path, "must be a string, number, boolean or null, got %s", diag.Describe(n))
		return Scalar{}, false
	}
	if c.LeadingZero(n, path) {
		return Scalar{}, false
	}
	switch n.Tag {
	case "!!str":
		return Scalar{Kind: KindString, Str: n.Value}, true
	case "!!bool":
		var b bool
		if n.Decode(&b) == nil {
			return Scalar{Kind: KindBool, Bool: b}, true
		}
	case "!!null":
		return Scalar{Kind: KindNull}, true
	case "!!int":
		var i int64
		if n.Decode(&i) == nil {
			return Scalar{Kind: KindNumber, Num: float64(i), Int: i, IsInt: true, Text: strconv.FormatInt(i, 10)}, true
		}
	case "!!float":
		var f float64
		if n.Decode(&f) == nil {
			return c.float(n, path, f)
		}
	}
	c.Errorf(n, path, "unsupported value %q", n.Value)
	return Scalar{}, false
}

// decimalFloat is a float written in decimal, as YAML reads one once
// underscores are removed.
var decimalFloat = regexp.MustCompile(`^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`)

// float makes a Scalar of the YAML float f. NaN and the infinities are
// refused: NaN is neither less than, equal to nor greater than anything,
// so lte: .nan would hold for every number. So is a number too close to 0
// for a float64 to tell from 0 (1e-400): exact comparison reads exponents
// only as far as numbers a float64 can hold need.
func (c *compiler) float(n *yaml.Node, path string, f float64) (Scalar, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		c.Errorf(n, path, "must be a finite number, got %s", n.Value)
		return Scalar{}, false
	}
	text := strings.TrimPrefix(strings.ReplaceAll(n.Value, "_", ""), "+")
	if !decimalFloat.MatchString(text) {
		// Only an integer tagged !!float and written in hexadecimal,
		// octal or binary gets here. Its value is f, as YAML converted
		// it, and an integral float64 formats exactly.
		if f != math.Trunc(f) {
			c.Errorf(n, path, "unsupported value %q", n.Value)
			return Scalar{}, false
		}
		text = strconv.FormatFloat(f, 'f', 0, 64)
	}
	if mant, _, _ := strings.Cut(strings.ToLower(text), "e"); f == 0 && strings.ContainsAny(mant, "123456789") {
		c.Errorf(n, path, "%s is too close to 0 for a float64: it would round to 0", n.Value)
		return Scalar{}, false
	}
	return Scalar{Kind: KindNumber, Num: f, Text: text}, true
}

// build turns the node tree into Fields.
func (c *compiler) build(n *node, path string, object bool) *Field {
	f := &Field{Path: path, Matchers: n.matchers, pos: c.At(n.at), types: n.types}
	if n.each != nil {
		f.Each = c.build(n.each, path+"[]", false)
	}
	if object || n.object || len(n.children) > 0 {
		f.types &= typeObject
		f.Fields = make(map[string]*Field, len(n.children))
		f.Names = slices.Sorted(maps.Keys(n.children))
		for _, name := range f.Names {
			f.Fields[name] = c.build(n.children[name], diag.Join(path, name), false)
		}
	}
	constrained := len(f.Matchers) > 0 || f.Each != nil
	for _, child := range f.Fields {
		constrained = constrained || child.Required
	}
	f.Required = constrained && !n.optional
	return f
}

var approvalKeys = []string{"match", "server", "annotations", "require", "timeout"}

func (c *compiler) approval(n *yaml.Node, path, id string) *ApprovalRule {
	a := &ApprovalRule{ID: id}
	hasRequire, hasCondition := false, false
	c.Fields(n, path, approvalKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "match":
			a.Tool, _ = c.glob(v, p)
			hasCondition = true
		case "server":
			a.Server, _ = c.glob(v, p)
		case "annotations":
			hasCondition = true
			a.Annotations = map[Hint]bool{}
			c.Fields(v, p, slices.Sorted(maps.Keys(hintNames)), func(hint string, k, v *yaml.Node) {
				if b, ok := c.Boolean(v, p+"."+hint); ok {
					a.Annotations[hintNames[hint]] = b
				}
			})
		case "require":
			hasRequire = true
			if s, ok := c.Str(v, p); ok && s != "human" {
				c.Errorf(v, p, "must be human, got %q", s)
			}
		case "timeout":
			a.Timeout, _ = c.Duration(v, p)
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if !hasRequire {
		c.Errorf(n, path, "missing required field \"require\"")
	}
	if !hasCondition {
		c.Errorf(n, path, "needs match or annotations: a rule without either would park every call")
	}
	return a
}

var rateLimitKeys = []string{"requests", "per", "burst", "key"}

// minInterval is the shortest time between requests a rate limit may
// allow. Limiters count Per/Requests in whole nanoseconds, so a shorter
// interval would be kept only roughly (and under 1ns not at all).
const minInterval = time.Microsecond

func (c *compiler) rateLimits(n *yaml.Node, path string) []*RateLimit {
	var out []*RateLimit
	seen := map[string]int{} // how many limits of each State so far
	c.List(n, path, func(i int, p string, v *yaml.Node) {
		l := &RateLimit{ID: fmt.Sprintf("rate_limits[%d]", i)}
		present := map[string]bool{}
		valid := true
		c.Fields(v, p, rateLimitKeys, func(key string, k, v *yaml.Node) {
			kp := p + "." + key
			present[key] = true
			ok := true
			switch key {
			case "requests":
				l.Requests, ok = c.Integer(v, kp, 1)
			case "per":
				l.Per, ok = c.Duration(v, kp)
			case "burst":
				l.Burst, ok = c.Integer(v, kp, 1)
			case "key":
				var s string
				if s, ok = c.Str(v, kp); ok {
					switch s {
					case "agent":
						l.Key = PerAgent
					case "role":
						l.Key = PerRole
					default:
						c.Errorf(v, kp, "must be agent or role, got %q", s)
						ok = false
					}
				}
			}
			valid = valid && ok
		})
		if v.Kind != yaml.MappingNode {
			return
		}
		for _, required := range []string{"requests", "per"} {
			if !present[required] {
				c.Errorf(v, p, "missing required field %q", required)
				valid = false
			}
		}
		if !valid {
			return
		}
		if l.Per/time.Duration(l.Requests) < minInterval {
			c.Errorf(v, p, "%d requests per %v is more than one per microsecond: no gateway serves that rate, "+
				"and the interval between requests, kept in whole nanoseconds, could be off by more than 0.1%%", l.Requests, l.Per)
			return
		}
		if !present["burst"] {
			l.Burst = l.Requests
		}
		if _, _, err := l.Emission(); err != nil {
			// The limiter would refuse the limit, and with it every
			// call it counts.
			c.Errorf(v, p, "%v", err)
			return
		}
		l.State = fmt.Sprintf("rate_limit(%d/%v,burst=%d,key=%v)", l.Requests, l.Per, l.Burst, l.Key)
		// Identical limits of one list each count every call, so each
		// keeps a budget of its own.
		n := seen[l.State]
		seen[l.State]++
		if n > 0 {
			l.State += "#" + strconv.Itoa(n)
		}
		out = append(out, l)
	})
	return out
}

var errBadName = errors.New("names are 1 to 128 characters of A-Z a-z 0-9 _ . -")

// checkName applies the tool naming rules to role, tool and prompt names.
func checkName(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return errBadName
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '.' || b == '-') {
			return errBadName
		}
	}
	if strings.Contains(s, "..") {
		return errors.New(`".." is not allowed`)
	}
	return nil
}

func checkServerName(s string) error {
	if err := checkName(s); err != nil {
		return err
	}
	if strings.Contains(s, "__") {
		return errors.New(`"__" separates server from tool and cannot appear in a server name`)
	}
	return nil
}
