package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/big"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/diag"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

func newPolicyTestCmd() *cobra.Command {
	var servers []string
	var catalog string
	cmd := &cobra.Command{
		Use:   "test DIR FILE...",
		Short: "Check that the roles in DIR decide test calls as expected",
		Long: `Compile the role files in DIR, then evaluate every case of the test FILEs
against them and print one line per failing case: file:line:col of the
case, its name, what it wanted and what the policy decided (verdict,
reason code, rule and reason). A summary follows: N passed, M failed.

A test file is a YAML list of cases:

  - name: reads pages of its workspace      # required
    role: notion_read                       # required
    tool: notion__get_pages                 # or prompt: or uri:, as agents name them
    arguments: { workspace_id: ws_abc123, limit: 10 }
    want: allow                             # allow, deny or needs_approval
  - name: deleting is parked
    role: notion_editor
    tool: notion__delete_page
    arguments: { page_id: pg_abcdef }
    annotations: { destructiveHint: true }
    want: needs_approval
    reason: need human approval             # a substring of the reason

Other keys: method (tools/call, prompts/get or resources/read; implied by
tool, prompt or uri), agent (the agent name cel conditions see), code (the
reason code, e.g. constraint_failed) and shadow_verdict (for a role in
shadow mode, what enforce mode would decide; want is then allow). Tools
and prompts are named server__name, resources amg:server:uri. arguments
is sent as the JSON object it reads as; omitted, the call has none.
annotations are the tool's hints (readOnlyHint, destructiveHint,
idempotentHint, openWorldHint) that approval rules match; without them
the tool's entry in --catalog is used, and without that the tool declared
none (so it counts as destructive). Unknown keys are errors.

A case names a role DIR defines, or says code: unknown_role; with
--servers or --catalog, a server the gateway knows; with --catalog, a
tool its server lists. Else it would be denied whatever the policy says,
and a typo would pass as a deny: it is a problem of the test file.

Rate limits are not evaluated. Exits 1 when a case fails, a test file has
a problem or the policy does not compile; --servers and --catalog are as
for "amg policy validate".`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, cat, err := compilePolicies(cmd, args[0], servers, catalog)
			if err != nil {
				return err
			}
			if !runPolicyTests(cmd.OutOrStdout(), newCaseScope(args[0], set, servers, cat), args[1:]) {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&servers, "servers", nil, "upstream server names the gateway knows (comma-separated)")
	cmd.Flags().StringVar(&catalog, "catalog", "", "JSON file with each server's tools/list tools, to check grants against and take annotations from")
	return cmd
}

// printProblems reports a policy that does not compile, as validate does.
func printProblems(w io.Writer, problems policy.Problems) {
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
	fmt.Fprintf(w, "%d problem%s\n", len(problems), plural(len(problems)))
}

// caseScope is what the cases may name: the roles of set, compiled from
// dir, and, when servers is not nil, those servers; when cat is not nil,
// the tools it lists.
type caseScope struct {
	dir     string
	set     *policy.Set
	servers []string
	cat     policy.StaticCatalog
}

// newCaseScope is the scope of the policy in dir, checked against servers
// and cat as compilePolicies checked it: a server must be in both.
func newCaseScope(dir string, set *policy.Set, servers []string, cat policy.StaticCatalog) *caseScope {
	s := &caseScope{dir: dir, set: set, servers: servers, cat: cat}
	if cat != nil {
		s.servers = nil
		for name := range cat {
			if servers == nil || slices.Contains(servers, name) {
				s.servers = append(s.servers, name)
			}
		}
		slices.Sort(s.servers)
		if s.servers == nil {
			s.servers = []string{}
		}
	}
	return s
}

// runPolicyTests evaluates the cases of every file against the policy of
// scope, prints the failures, the problems of the files and a summary, and
// reports whether all passed.
func runPolicyTests(w io.Writer, scope *caseScope, files []string) bool {
	set, cat := scope.set, scope.cat
	passed, failed, broken := 0, 0, 0
	for _, name := range files {
		cases, problems := loadPolicyTests(name, scope)
		broken += len(problems)
		type line struct {
			pos  diag.Pos
			text string
		}
		var lines []line
		for _, p := range problems {
			lines = append(lines, line{p.Pos, p.String()})
		}
		for _, tc := range cases {
			in := tc.in
			if in.Kind == decision.Tool && !tc.annotated && cat != nil {
				in.Annotations = catalogAnnotations(cat, in.Server, in.Name)
			}
			res := decision.Evaluate(set, &in)
			if msg := tc.check(&res); msg != "" {
				failed++
				lines = append(lines, line{tc.pos, fmt.Sprintf("%s:%d:%d: %s: %s", tc.pos.File, tc.pos.Line, tc.pos.Col, tc.name, msg)})
			} else {
				passed++
			}
		}
		slices.SortStableFunc(lines, func(a, b line) int {
			return cmp.Or(cmp.Compare(a.pos.Line, b.pos.Line), cmp.Compare(a.pos.Col, b.pos.Col))
		})
		for _, l := range lines {
			fmt.Fprintln(w, l.text)
		}
	}
	summary := fmt.Sprintf("%d passed, %d failed", passed, failed)
	if broken > 0 {
		summary += fmt.Sprintf(", %d problem%s in test files", broken, plural(broken))
	}
	fmt.Fprintln(w, summary)
	return failed == 0 && broken == 0
}

func catalogAnnotations(cat policy.Catalog, server, tool string) *policy.Annotations {
	tools, _ := cat.Tools(server)
	for _, t := range tools {
		if t.Name == tool {
			return t.Annotations
		}
	}
	return nil
}

// policyCase is one test case: a call and the decision it must get.
type policyCase struct {
	name string
	pos  diag.Pos
	in   decision.Input
	// annotated is set when the case gave the tool's annotations, which
	// then replace the catalogue's.
	annotated bool
	want      decision.Verdict
	shadow    *decision.Verdict
	reason    *string
	code      decision.Code
}

// check returns what is wrong with res, or "" when it is what the case
// wants.
func (tc *policyCase) check(res *decision.Result) string {
	ok := res.Verdict == tc.want
	wanted := tc.want.String()
	if tc.shadow != nil {
		wanted += ", shadow_verdict " + tc.shadow.String()
		ok = ok && res.Shadow && res.ShadowVerdict == *tc.shadow
	}
	if tc.code != "" {
		wanted += ", code " + string(tc.code)
		ok = ok && res.Code == tc.code
	}
	if tc.reason != nil {
		wanted += ", reason containing " + strconv.Quote(*tc.reason)
		ok = ok && strings.Contains(res.Reason, *tc.reason)
	}
	if ok {
		return ""
	}
	got := res.Verdict.String()
	if res.Shadow {
		got += ", shadow_verdict " + res.ShadowVerdict.String()
	} else if tc.shadow != nil {
		got += " (role " + strconv.Quote(tc.in.Role) + " is not in shadow mode)"
	}
	got += ", code " + string(res.Code)
	if res.Rule != "" {
		got += ", rule " + res.Rule
	}
	if res.Reason != "" {
		got += ": " + res.Reason
	}
	if res.EvalError != nil {
		got += " (" + res.EvalError.Error() + ")"
	}
	return "want " + wanted + "; got " + got
}

// caseLoader reads test files strictly: every problem of every case is
// reported at its file:line:col, and a case with any is not run.
type caseLoader struct {
	diag.Walker
	scope *caseScope
}

// loadPolicyTests reads the test file name, whose cases must stay within
// scope.
func loadPolicyTests(name string, scope *caseScope) ([]*policyCase, diag.Problems) {
	l := &caseLoader{Walker: diag.Walker{File: name}, scope: scope}
	data, err := os.ReadFile(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		l.Errorf(nil, "", "cannot read test file: %v", err)
		return nil, l.Problems
	}
	root := l.Document(data, "test")
	if root == nil {
		return nil, l.Problems
	}
	if root.Kind == yaml.SequenceNode && len(root.Content) == 0 {
		l.Errorf(root, "", "no test cases")
	}
	var cases []*policyCase
	l.List(root, "", func(_ int, path string, n *yaml.Node) {
		if tc := l.testCase(n, path); tc != nil {
			cases = append(cases, tc)
		}
	})
	l.Problems.Sort()
	return cases, l.Problems
}

var caseKeys = []string{"name", "role", "agent", "method", "tool", "prompt", "uri", "arguments", "annotations", "want", "code", "reason", "shadow_verdict"}

// methodTargets maps each method a case may call to the key that names
// what it calls.
var methodTargets = map[string]string{"tools/call": "tool", "prompts/get": "prompt", "resources/read": "uri"}

var verdicts = map[string]decision.Verdict{"allow": decision.Allow, "deny": decision.Deny, "needs_approval": decision.NeedsApproval}

func (l *caseLoader) testCase(n *yaml.Node, path string) *policyCase {
	before := len(l.Problems)
	tc := &policyCase{pos: l.At(n)}
	present := map[string]bool{}
	var role, target, methodNode, argsNode, annNode *yaml.Node
	var targetKey, method string
	l.Fields(n, path, caseKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		present[key] = true
		switch key {
		case "name":
			tc.name, _ = l.Str(v, p)
		case "role":
			tc.in.Role, _ = l.Str(v, p)
			role = v
		case "agent":
			tc.in.Agent, _ = l.Str(v, p)
		case "method":
			if s, ok := l.Str(v, p); ok {
				if _, known := methodTargets[s]; !known {
					l.Errorf(v, p, "must be tools/call, prompts/get or resources/read, got %q", s)
				}
				method, methodNode = s, v
			}
		case "tool", "prompt", "uri":
			if target != nil {
				l.Errorf(k, p, "a case calls one thing, but it has both %s and %s", targetKey, key)
				return
			}
			target, targetKey = v, key
		case "arguments":
			argsNode = v
		case "annotations":
			tc.annotated, annNode = true, v
			tc.in.Annotations = l.annotations(v, p)
		case "want":
			if v, ok := l.verdict(v, p); ok {
				tc.want = v
			}
		case "shadow_verdict":
			if v, ok := l.verdict(v, p); ok {
				tc.shadow = &v
			}
		case "code":
			if s, ok := l.Str(v, p); ok {
				tc.code = decision.Code(s)
			}
		case "reason":
			if s, ok := l.Str(v, p); ok {
				tc.reason = &s
			}
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for _, key := range []string{"name", "role", "want"} {
		if !present[key] {
			l.Errorf(n, path, "missing required field %q", key)
		}
	}
	if target == nil {
		l.Errorf(n, path, "missing what the case calls: tool, prompt or uri")
		return nil
	}
	if key, known := methodTargets[method]; known && key != targetKey {
		l.Errorf(methodNode, path+".method", "%s names what it calls with %s, not %s", method, key, targetKey)
	}
	l.target(tc, targetKey, target, path+"."+targetKey)
	if argsNode != nil {
		l.arguments(tc, argsNode, path+".arguments")
	}
	if tc.in.Kind != decision.Tool && annNode != nil {
		l.Errorf(annNode, path+".annotations", "only tools have annotations")
	}
	if len(l.Problems) == before {
		l.inScope(tc, role, path, target, path+"."+targetKey)
	}
	if len(l.Problems) > before {
		return nil
	}
	return tc
}

// inScope reports what tc names that the policy or the gateway does not
// know: the gateway would deny the call whatever the policy says, so that
// a case wanting deny would pass on a typo, and go on passing however the
// policy changes. A case may test an undefined role by saying so with its
// code.
func (l *caseLoader) inScope(tc *policyCase, role *yaml.Node, path string, target *yaml.Node, targetPath string) {
	s := l.scope
	if tc.code != decision.CodeUnknownRole {
		if err := roleDefined(s.set, s.dir, tc.in.Role); err != nil {
			l.Errorf(role, path+".role", "%v; a case testing an undefined role says code: %s", err, decision.CodeUnknownRole)
		}
	}
	if s.servers != nil && !slices.Contains(s.servers, tc.in.Server) {
		l.Errorf(target, targetPath, "unknown server %q (servers: %s)", tc.in.Server, strings.Join(s.servers, ", "))
		return
	}
	if s.cat != nil && tc.in.Kind == decision.Tool &&
		!slices.ContainsFunc(s.cat[tc.in.Server], func(t policy.Tool) bool { return t.Name == tc.in.Name }) {
		l.Errorf(target, targetPath, "server %q has no tool %q in the catalogue", tc.in.Server, tc.in.Name)
	}
}

func (l *caseLoader) verdict(n *yaml.Node, path string) (decision.Verdict, bool) {
	s, ok := l.Str(n, path)
	if !ok {
		return 0, false
	}
	v, ok := verdicts[s]
	if !ok {
		l.Errorf(n, path, "must be allow, deny or needs_approval, got %q", s)
	}
	return v, ok
}

// target splits the name the agent uses into server and upstream name, as
// the gateway does with its default namespacing.
func (l *caseLoader) target(tc *policyCase, key string, n *yaml.Node, path string) {
	s, ok := l.Str(n, path)
	if !ok {
		return
	}
	var ns mcpfilter.Namespace
	var err error
	switch key {
	case "tool", "prompt":
		tc.in.Kind = decision.Tool
		if key == "prompt" {
			tc.in.Kind = decision.Prompt
		}
		tc.in.Server, tc.in.Name, err = ns.Split(s)
	case "uri":
		tc.in.Kind = decision.Resource
		tc.in.Server, tc.in.Name, err = ns.SplitURI(s)
	}
	if err != nil {
		l.Errorf(n, path, "%v", err)
	}
}

var hintKeys = []string{"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}

func (l *caseLoader) annotations(n *yaml.Node, path string) *policy.Annotations {
	a := &policy.Annotations{}
	l.Fields(n, path, hintKeys, func(key string, _, v *yaml.Node) {
		b, ok := l.Boolean(v, path+"."+key)
		if !ok {
			return
		}
		switch key {
		case "readOnlyHint":
			a.ReadOnly = &b
		case "destructiveHint":
			a.Destructive = &b
		case "idempotentHint":
			a.Idempotent = &b
		case "openWorldHint":
			a.OpenWorld = &b
		}
	})
	return a
}

// arguments turns the YAML value into the JSON object an agent would send
// and parses it as the gateway does.
func (l *caseLoader) arguments(tc *policyCase, n *yaml.Node, path string) {
	if tc.in.Kind == decision.Resource {
		l.Errorf(n, path, "resources/read calls have no arguments")
		return
	}
	if n.Kind != yaml.MappingNode {
		l.Errorf(n, path, "must be a mapping, got %s", diag.Describe(n))
		return
	}
	if tc.in.Kind == decision.Prompt {
		// MCP prompt arguments are strings; the gateway refuses others.
		ok := true
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind != yaml.ScalarNode || v.Tag != "!!str" && v.Tag != "!!timestamp" {
				l.Errorf(v, diag.Join(path, k.Value), "prompt argument values must be strings, got %s", diag.Describe(v))
				ok = false
			}
		}
		if !ok {
			return
		}
	}
	var b bytes.Buffer
	if !l.json(&b, n, path) {
		return
	}
	v, err := mcpfilter.ParseArguments(b.Bytes())
	if err != nil {
		msg := err.Error()
		var fe *mcpfilter.Error
		if errors.As(err, &fe) {
			// The offset is in the JSON made from the file, not in it.
			msg = strings.Replace(msg, " at offset "+strconv.Itoa(fe.Offset), "", 1)
		}
		l.Errorf(n, path, "%s", msg)
		return
	}
	tc.in.Arguments = v
}

var (
	jsonInteger = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)
	jsonNumber  = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$`)
)

// json writes n as JSON to b. Numbers keep the digits they were written
// with where JSON allows them, so that large or exact values reach the
// policy as an agent would send them. Aliases are refused, as role files
// refuse them: one may name the value it is in (&a { x: *a }), and a few
// may stand for billions of values.
func (l *caseLoader) json(b *bytes.Buffer, n *yaml.Node, path string) bool {
	switch n.Kind {
	case yaml.AliasNode:
		l.Errorf(n, path, "aliases are not allowed in test files: write the value out")
		return false
	case yaml.MappingNode:
		ok := true
		seen := map[string]int{}
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
				l.Errorf(k, path, "keys must be strings, got %s", diag.Describe(k))
				ok = false
				continue
			}
			p := diag.Join(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				l.Errorf(k, p, "duplicate key (first at line %d)", line)
				ok = false
				continue
			}
			seen[k.Value] = k.Line
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(b, k.Value)
			b.WriteByte(':')
			ok = l.json(b, v, p) && ok
		}
		b.WriteByte('}')
		return ok
	case yaml.SequenceNode:
		ok := true
		b.WriteByte('[')
		for i, e := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			ok = l.json(b, e, fmt.Sprintf("%s[%d]", path, i)) && ok
		}
		b.WriteByte(']')
		return ok
	}
	if l.LeadingZero(n, path) {
		return false
	}
	switch n.Tag {
	case "!!str", "!!timestamp":
		// JSON has no dates: an agent sends one as a string.
		writeJSONString(b, n.Value)
		return true
	case "!!null":
		b.WriteString("null")
		return true
	case "!!bool":
		var v bool
		if n.Decode(&v) == nil {
			b.WriteString(strconv.FormatBool(v))
			return true
		}
	case "!!int":
		if jsonInteger.MatchString(n.Value) {
			b.WriteString(n.Value)
			return true
		}
		// 0x1F, 0o17, +5, 1_000: base 0 reads them as YAML does.
		if i, ok := new(big.Int).SetString(n.Value, 0); ok {
			b.WriteString(i.String())
			return true
		}
	case "!!float":
		if jsonNumber.MatchString(n.Value) {
			b.WriteString(n.Value)
			return true
		}
		var f float64
		if n.Decode(&f) == nil {
			if math.IsNaN(f) || math.IsInf(f, 0) {
				l.Errorf(n, path, "JSON has no %s: must be a finite number", n.Value)
				return false
			}
			b.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
			return true
		}
	}
	l.Errorf(n, path, "unsupported value %q (%s)", n.Value, n.Tag)
	return false
}

func writeJSONString(b *bytes.Buffer, s string) {
	enc, _ := json.Marshal(s)
	b.Write(enc)
}
