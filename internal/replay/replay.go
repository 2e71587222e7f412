// Package replay re-evaluates the decisions recorded in an audit log
// against another policy set and reports the verdicts that would change:
// a what-if for a policy change, before it is deployed.
//
// # Which records are replayed
//
// Only decisions the policy engine took on a call: records whose method is
// tools/call, prompts/get, resources/read, resources/subscribe or
// resources/unsubscribe, that name a server, and whose code is one of the
// decision engine's codes (allowed, approval_required, not_granted,
// unknown_argument, missing_argument, constraint_failed, cel_denied,
// cel_error, unknown_role, no_policy). Everything else is skipped and only
// counted: lifecycle records, the broker's records (executed,
// upstream_error, approval_* steps, decision_invalid, ...), and authz
// outcomes the policy did not decide (rate_limited, batch_denied,
// invalid_name, authentication failures, internal_error), whose verdict a
// new policy alone cannot reproduce.
//
// # What is compared
//
// The new enforced verdict ([decision.Result.Verdict]) with the recorded
// enforced verdict ([audit.Record.Verdict]). For a role in shadow mode both
// are allow, whatever the shadow verdict; a role moved from shadow to
// enforce mode shows the denials enforcement would bring. Rate limits are
// not replayed.
//
// # Undecidable records
//
// A record is never guessed. It is counted undecidable, not evaluated, when
// the new policy's verdict depends on something the record does not hold:
//
//   - a redacted value (an [audit.HMACPrefix] string or [audit.Unencodable])
//     where the matching grant constrains the value: the grant's field at
//     that path has a matcher, an each or fields. Constraints on an
//     enclosing object or array see only its keys and length, which
//     redaction keeps, so they do not make a record undecidable; a
//     redacted value under an argument the grant does not name is denied
//     by its name, which is kept, and stays decidable too;
//   - a redacted value anywhere in the arguments when the grant has a CEL
//     condition, which may read any of them;
//   - arguments that are not a JSON object (a whole-value
//     [audit.Unencodable]), or that are not recorded (no args field) when
//     the grant names arguments or has a CEL condition: an absent args
//     field is taken as unknown rather than as a call without arguments;
//   - an approval rule on tool annotations that could decide the call,
//     when [Options.Annotations] does not know the tool's annotations and
//     the verdict differs between possible annotations.
package replay

import (
	"cmp"
	"encoding/json"
	"iter"
	"maps"
	"slices"
	"strings"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

// Options tune a replay. A nil *Options is the zero value.
type Options struct {
	// Annotations returns the annotations server declared for tool (nil:
	// it declared none), with known false when they are not known. Nil
	// means never known. They matter only for approval rules on
	// annotations.
	Annotations func(server, tool string) (ann *policy.Annotations, known bool)
}

// CatalogAnnotations is an Options.Annotations that reads the tool lists
// of cat: a tool it lists has known annotations, others do not.
func CatalogAnnotations(cat policy.Catalog) func(server, tool string) (*policy.Annotations, bool) {
	return func(server, tool string) (*policy.Annotations, bool) {
		tools, _ := cat.Tools(server)
		i := slices.IndexFunc(tools, func(t policy.Tool) bool { return t.Name == tool })
		if i < 0 {
			return nil, false
		}
		return tools[i].Annotations, true
	}
}

// Key groups counts: a role and a server__name (tool, prompt or resource
// URI).
type Key struct {
	Role string
	Tool string
}

// Counts are the outcomes of the replayed decisions of one Key.
type Counts struct {
	Unchanged       int
	AllowToDeny     int
	DenyToAllow     int
	ToApproval      int // allow or deny -> needs_approval
	ApprovalToAllow int
	ApprovalToDeny  int
	Undecidable     int
}

// Changed is how many decisions of these counts would change.
func (c *Counts) Changed() int {
	return c.AllowToDeny + c.DenyToAllow + c.ToApproval + c.ApprovalToAllow + c.ApprovalToDeny
}

// Change is one decision whose verdict would change.
type Change struct {
	Record *audit.Record
	// Old is the recorded enforced verdict, New the one the new set
	// enforces; Result says why.
	Old, New decision.Verdict
	Result   decision.Result
}

// Report is the outcome of a replay.
type Report struct {
	// Replayed counts the decisions replayed, undecidable ones included;
	// Skipped the other records.
	Replayed int
	Skipped  int
	// Changes lists the changed decisions in record order.
	Changes []Change
	Counts  map[Key]*Counts
}

// Undecidable is how many replayed decisions were undecidable.
func (r *Report) Undecidable() int {
	n := 0
	for _, c := range r.Counts {
		n += c.Undecidable
	}
	return n
}

// Keys returns the keys of Counts, sorted by role then tool.
func (r *Report) Keys() []Key {
	return slices.SortedFunc(maps.Keys(r.Counts), func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Role, b.Role), cmp.Compare(a.Tool, b.Tool))
	})
}

// Replay re-evaluates every decision among records against set. Records
// must not be modified while the report is in use: changes point to them.
func Replay(records iter.Seq[audit.Record], set *policy.Set, opts *Options) Report {
	if opts == nil {
		opts = &Options{}
	}
	rep := Report{Counts: map[Key]*Counts{}}
	for rec := range records {
		kind, old, ok := replayable(&rec)
		if !ok {
			rep.Skipped++
			continue
		}
		rep.Replayed++
		key := Key{Role: rec.Role, Tool: rec.Server + "__" + rec.Tool}
		c := rep.Counts[key]
		if c == nil {
			c = &Counts{}
			rep.Counts[key] = c
		}
		res, decidable := evaluate(&rec, kind, set, opts)
		if !decidable {
			c.Undecidable++
			continue
		}
		switch nv := res.Verdict; {
		case nv == old:
			c.Unchanged++
			continue
		case nv == decision.NeedsApproval:
			c.ToApproval++
		case old == decision.NeedsApproval && nv == decision.Allow:
			c.ApprovalToAllow++
		case old == decision.NeedsApproval:
			c.ApprovalToDeny++
		case nv == decision.Deny:
			c.AllowToDeny++
		default:
			c.DenyToAllow++
		}
		r := rec
		rep.Changes = append(rep.Changes, Change{Record: &r, Old: old, New: res.Verdict, Result: res})
	}
	return rep
}

var kinds = map[string]decision.Kind{
	"tools/call":            decision.Tool,
	"prompts/get":           decision.Prompt,
	"resources/read":        decision.Resource,
	"resources/subscribe":   decision.Resource,
	"resources/unsubscribe": decision.Resource,
}

// engineCodes are the codes of verdicts the decision engine reached.
// internal_error is left out: authz uses the same code for its own
// failures.
var engineCodes = map[string]bool{}

func init() {
	for _, c := range []decision.Code{
		decision.CodeAllowed, decision.CodeApprovalRequired, decision.CodeNoPolicy,
		decision.CodeUnknownRole, decision.CodeNotGranted, decision.CodeUnknownArgument,
		decision.CodeMissingArgument, decision.CodeConstraintFailed, decision.CodeCELDenied,
		decision.CodeCELError,
	} {
		engineCodes[string(c)] = true
	}
}

var verdicts = map[string]decision.Verdict{
	decision.Allow.String():         decision.Allow,
	decision.Deny.String():          decision.Deny,
	decision.NeedsApproval.String(): decision.NeedsApproval,
}

// replayable reports whether rec is a policy decision on a call, and its
// kind and recorded enforced verdict.
func replayable(rec *audit.Record) (decision.Kind, decision.Verdict, bool) {
	kind, ok := kinds[rec.Method]
	if !ok || rec.Server == "" || !engineCodes[rec.Code] {
		return 0, 0, false
	}
	v, ok := verdicts[rec.Verdict]
	return kind, v, ok
}

// evaluate decides rec against set as authz would have, or reports that
// the record does not hold what the decision depends on.
func evaluate(rec *audit.Record, kind decision.Kind, set *policy.Set, opts *Options) (decision.Result, bool) {
	in := decision.Input{Agent: rec.Agent, Role: rec.Role, Kind: kind, Server: rec.Server, Name: rec.Tool}
	role, ok := set.Role(rec.Role)
	if !ok || kind == decision.Resource {
		// Unknown roles and resources are decided without arguments.
		return decision.Evaluate(set, &in), true
	}
	var grant *policy.Grant
	if sg := role.Servers[rec.Server]; sg != nil {
		if kind == decision.Prompt {
			grant = sg.Prompts[rec.Tool]
		} else {
			grant = sg.Tools[rec.Tool]
		}
	}
	if grant != nil {
		args, ok := decodeArgs(rec.Args)
		needsArgs := len(grant.Args.Names) > 0 || grant.When != nil
		switch {
		case !ok, len(rec.Args) == 0 && needsArgs:
			return decision.Result{}, false
		case grant.When != nil && anyRedacted(args):
			return decision.Result{}, false
		case hidden(args, grant.Args):
			return decision.Result{}, false
		}
		in.Arguments = args
	}
	if kind != decision.Tool || !annotationRules(role) {
		return decision.Evaluate(set, &in), true
	}
	if opts.Annotations != nil {
		if ann, known := opts.Annotations(rec.Server, rec.Tool); known {
			in.Annotations = ann
			return decision.Evaluate(set, &in), true
		}
	}
	// The verdict stands only if no annotations the tool may have had
	// change it. Every effective combination of hints is reached by
	// setting all four explicitly.
	res := decision.Evaluate(set, &in)
	for bits := range 16 {
		hint := func(i int) *bool { b := bits&(1<<i) != 0; return &b }
		in.Annotations = &policy.Annotations{ReadOnly: hint(0), Destructive: hint(1), Idempotent: hint(2), OpenWorld: hint(3)}
		if decision.Evaluate(set, &in).Verdict != res.Verdict {
			return decision.Result{}, false
		}
	}
	return res, true
}

func annotationRules(role *policy.Role) bool {
	for _, a := range role.Approvals {
		if len(a.Annotations) > 0 {
			return true
		}
	}
	return false
}

// decodeArgs parses recorded arguments as the MCP parser parsed them when
// they were sent. Absent arguments give an Absent Value and true.
func decodeArgs(raw json.RawMessage) (mcpfilter.Value, bool) {
	if len(raw) == 0 {
		return mcpfilter.Value{}, true
	}
	v, err := mcpfilter.ParseArguments(raw)
	return v, err == nil
}

func redacted(v mcpfilter.Value) bool {
	s, ok := v.Str()
	return ok && (strings.HasPrefix(s, audit.HMACPrefix) || s == audit.Unencodable)
}

// hidden reports whether a redacted value in v sits where f (nil: no
// constraint) constrains it. Arrays are walked with f's Each, objects
// with f's Fields.
func hidden(v mcpfilter.Value, f *policy.Field) bool {
	if f == nil {
		return false
	}
	switch v.Kind() {
	case mcpfilter.String:
		return redacted(v) && (len(f.Matchers) > 0 || f.Each != nil || f.Fields != nil)
	case mcpfilter.Object:
		for m := v.First(); m.Exists(); m = m.Next() {
			if hidden(m, f.Fields[m.Key()]) {
				return true
			}
		}
	case mcpfilter.Array:
		for e := v.First(); e.Exists(); e = e.Next() {
			if hidden(e, f.Each) {
				return true
			}
		}
	}
	return false
}

// anyRedacted reports whether v holds a redacted value anywhere.
func anyRedacted(v mcpfilter.Value) bool {
	if v.Kind() == mcpfilter.String {
		return redacted(v)
	}
	for e := v.First(); e.Exists(); e = e.Next() {
		if anyRedacted(e) {
			return true
		}
	}
	return false
}
