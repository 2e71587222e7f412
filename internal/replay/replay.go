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
// cel_error, unknown_role, no_policy), or, in a batch, batch_denied.
// Everything else is skipped and only counted: lifecycle records, the
// broker's records (executed, upstream_error, approval_* steps,
// decision_invalid, ...), and authz outcomes the policy did not decide
// (rate_limited, invalid_name, authentication failures, internal_error,
// and batch_denied outside a batch's records), whose verdict a new policy
// alone cannot reproduce.
//
// # Batches
//
// authz decides a JSON-RPC batch as a whole: a call that needs approval
// cannot be parked from inside a batch and is denied, and one denied
// message denies every other (code batch_denied). It writes one record
// per message, each with the request's decision id and time. Replay
// gathers them (not the broker's records of the same decision, written
// later), evaluates each call against the new set, applies the same rule,
// and compares each call's verdict with the recorded one: deny for a
// batch_denied call, whose own verdict was not recorded, or allow for one
// of a role in shadow mode (authz applies the rule to shadow verdicts too,
// and records such a call allowed, with shadow verdict deny). Of the other
// messages, a lifecycle message is allowed if the new policy defines its
// role and denied if not, and an invalid name or a method the gateway
// does not pass on is denied, whatever the policy. The
// whole batch is undecidable, each of its calls counted so, when one of
// its calls is, or when a message's verdict is one the new set alone does
// not give: a rate limit, a completion/complete (the policy decides it,
// but replay does not), an internal error.
//
// The records of concurrent requests may come between those of one
// request. They are gathered for as long as each comes within 1024
// records of the same replica (gatherWindow) of the request's latest one,
// so a batch is gathered whole however many messages it has; a record
// further on is taken as another request's. A log that begins or ends
// inside a batch holds only part of it, which replay cannot tell.
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
//     [audit.Unencodable]); arguments left out of the Redis stream's copy
//     as too large ([audit.Record.ArgsCut]), whenever the call is granted
//     (even a grant that names none denies the arguments it does not
//     name); or no args field when the grant names arguments or has a
//     CEL condition: an absent args field is taken as unknown rather than
//     as a call without arguments;
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
	"strconv"
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
	// MaxChanges bounds the changes a report keeps whole: the first in
	// record order. Report.Changed and the counts cover them all. Zero
	// or less means DefaultMaxChanges.
	MaxChanges int
	// MaxToolsPerRole bounds the tools (prompts, resources) of one role
	// counted apart: the role's others, past the first that many the
	// records name, are counted together, under the role's Key with an
	// empty Tool. The names come from agents, which may send any. Zero
	// or less means DefaultMaxToolsPerRole.
	MaxToolsPerRole int
}

// Defaults of Options.
const (
	DefaultMaxChanges      = 1000
	DefaultMaxToolsPerRole = 100
)

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
// URI), or an empty Tool for the role's tools past
// Options.MaxToolsPerRole.
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
	// Replayed counts the decisions replayed (each call of a batch is
	// one), undecidable ones included; Skipped the other records.
	Replayed int
	Skipped  int
	// Changed counts the decisions that would change. Changes lists the
	// first of them (Options.MaxChanges) in record order, those of a
	// batch where its first record is.
	Changed int
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

// Outcome says in words what the replay found: how many decisions would
// change, and how many could not be decided. It says that no decision
// would change only when every one replayed was decided.
func (r *Report) Outcome() string {
	changed, undecidable := r.Changed, r.Undecidable()
	switch {
	case changed > 0 && undecidable > 0:
		return nDecisions(changed) + " would change, and " + strconv.Itoa(undecidable) + " could not be decided"
	case changed > 0:
		return nDecisions(changed) + " would change"
	case undecidable == 0:
		return "no decision would change"
	}
	switch decided := r.Replayed - undecidable; decided {
	case 0:
		return nDecisions(undecidable) + " could not be decided, and no other was replayed"
	case 1:
		return nDecisions(undecidable) + " could not be decided; the other would not change"
	default:
		return nDecisions(undecidable) + " could not be decided; none of the " + strconv.Itoa(decided) + " others would change"
	}
}

func nDecisions(n int) string {
	if n == 1 {
		return "1 decision"
	}
	return strconv.Itoa(n) + " decisions"
}

// Keys returns the keys of Counts, sorted by role then tool, a role's
// other tools last.
func (r *Report) Keys() []Key {
	others := func(k Key) int {
		if k.Tool == "" {
			return 1
		}
		return 0
	}
	return slices.SortedFunc(maps.Keys(r.Counts), func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Role, b.Role), cmp.Compare(others(a), others(b)), cmp.Compare(a.Tool, b.Tool))
	})
}

// Replay re-evaluates every decision among records against set. Records
// must not be modified while the report is in use: changes point to them.
func Replay(records iter.Seq[audit.Record], set *policy.Set, opts *Options) Report {
	if opts == nil {
		opts = &Options{}
	}
	r := replayer{set: set, opts: opts, open: map[requestKey]*request{}, replicas: map[string]*replica{},
		maxChanges: orDefault(opts.MaxChanges, DefaultMaxChanges), maxTools: orDefault(opts.MaxToolsPerRole, DefaultMaxToolsPerRole),
		tools: map[string]int{}, rep: Report{Counts: map[Key]*Counts{}}}
	n := 0
	for rec := range records {
		r.add(rec, n)
		n++
	}
	var rest []*request
	for _, q := range r.replicas {
		rest = append(rest, q.pending...)
	}
	slices.SortFunc(rest, func(a, b *request) int { return cmp.Compare(a.at, b.at) })
	for _, req := range rest {
		r.decide(req)
	}
	r.keepFirstChanges()
	for _, c := range r.changes {
		r.rep.Changes = append(r.rep.Changes, c.Change)
	}
	return r.rep
}

func orDefault(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// keepFirstChanges keeps the first maxChanges changes in record order.
// Each replica's requests are decided in its order; the changes of
// several are put back in the order of the records.
func (r *replayer) keepFirstChanges() {
	slices.SortStableFunc(r.changes, func(a, b change) int { return cmp.Compare(a.at, b.at) })
	clear(r.changes[min(len(r.changes), r.maxChanges):])
	r.changes = r.changes[:min(len(r.changes), r.maxChanges)]
}

// gatherWindow is how many records of a replica, after the latest record
// of a request, may hold its next one. authz writes them one after
// another as soon as it has decided: only the records of requests decided
// at the same moment on the same replica come between them. The window
// follows the request's latest record, not its first, since nothing
// bounds the messages of a batch below the body size.
const gatherWindow = 1024

// requestKey identifies the records authz wrote for one request: it
// stamps each with the request's decision id and its time.
type requestKey struct {
	replica, id string
	time        int64 // Unix nanoseconds
}

// request is the records of one request gathered so far.
type request struct {
	key  requestKey
	last int // the index of its latest record among its replica's
	at   int // of its first record among all records
	recs []audit.Record
}

// replica is the requests of one replica not decided yet.
type replica struct {
	n       int        // records read
	pending []*request // oldest first
}

type change struct {
	at int // request.at of its request
	Change
}

type replayer struct {
	set        *policy.Set
	opts       *Options
	open       map[requestKey]*request // pending requests that records may join
	replicas   map[string]*replica
	maxChanges int
	maxTools   int
	tools      map[string]int // role -> its keys counted apart
	changes    []change       // the first maxChanges, and up to as many more
	rep        Report
}

// add gathers rec, the at-th record, into its request, and decides the
// requests of its replica that no later record may join.
func (r *replayer) add(rec audit.Record, at int) {
	q := r.replicas[rec.Replica]
	if q == nil {
		q = &replica{}
		r.replicas[rec.Replica] = q
	}
	q.n++
	key := requestKey{replica: rec.Replica, id: rec.DecisionID, time: rec.Time.UnixNano()}
	if req := r.open[key]; req != nil {
		req.recs, req.last = append(req.recs, rec), q.n
	} else {
		req = &request{key: key, last: q.n, at: at, recs: []audit.Record{rec}}
		if rec.DecisionID != "" { // records without one cannot be told apart
			r.open[key] = req
		}
		q.pending = append(q.pending, req)
	}
	// A request waits behind the oldest until that one is decided; the
	// order of the changes is restored at the end.
	for len(q.pending) > 0 && q.n-q.pending[0].last >= gatherWindow {
		req := q.pending[0]
		q.pending[0], q.pending = nil, q.pending[1:]
		r.decide(req)
	}
}

// decide replays the decisions of one request.
func (r *replayer) decide(req *request) {
	if r.open[req.key] == req {
		delete(r.open, req.key)
	}
	if len(req.recs) > 1 {
		r.batch(req)
		return
	}
	rec := &req.recs[0]
	kind, old, ok := replayable(rec)
	if !ok {
		r.rep.Skipped++
		return
	}
	r.rep.Replayed++
	res, decidable := evaluate(rec, kind, r.set, r.opts)
	r.count(req, rec, old, res, decidable)
}

// Codes of authz outcomes the policy engine did not decide, as authz
// records them.
const (
	codeLifecycle        = "lifecycle"
	codeInvalidName      = "invalid_name"
	codeMethodNotAllowed = "method_not_allowed"
	codeBatchDenied      = "batch_denied"
)

// batch replays the decisions of a request with several messages, under
// authz's batch rule.
func (r *replayer) batch(req *request) {
	type call struct {
		rec *audit.Record
		old decision.Verdict
		res decision.Result
	}
	var calls []call
	var verdicts []decision.Verdict // of every message, before the batch rule
	decidable := true
	for i := range req.recs {
		rec := &req.recs[i]
		kind, old, ok := batchCall(rec)
		if !ok {
			r.rep.Skipped++
			v, known := otherVerdict(rec, r.set)
			decidable = decidable && known
			verdicts = append(verdicts, v)
			continue
		}
		r.rep.Replayed++
		res, ok := evaluate(rec, kind, r.set, r.opts)
		decidable = decidable && ok
		calls = append(calls, call{rec, old, res})
		verdicts = append(verdicts, res.Verdict)
	}
	denied := batchDenied(verdicts)
	for _, c := range calls {
		res := c.res
		switch {
		case !denied || res.Verdict == decision.Deny:
		case res.Verdict == decision.NeedsApproval:
			res = decision.Result{Verdict: decision.Deny, Code: codeBatchDenied, Reason: "calls that need approval cannot be sent in a batch"}
		default:
			res = decision.Result{Verdict: decision.Deny, Code: codeBatchDenied, Reason: "another call in the same batch was denied"}
		}
		r.count(req, c.rec, c.old, res, decidable)
	}
}

// batchDenied is authz's batch rule: a batch whose messages have verdicts
// is denied as a whole when one of them is denied or needs approval.
func batchDenied(verdicts []decision.Verdict) bool {
	return slices.ContainsFunc(verdicts, func(v decision.Verdict) bool {
		return v == decision.Deny || v == decision.NeedsApproval
	})
}

// batchCall reports whether rec, a message of a batch, is a call replay
// evaluates, and its kind and recorded enforced verdict: a decision of
// the engine, or a call the batch rule denied (for a role in shadow mode,
// an allowed call with shadow verdict deny).
func batchCall(rec *audit.Record) (decision.Kind, decision.Verdict, bool) {
	if kind, old, ok := replayable(rec); ok {
		return kind, old, true
	}
	kind, ok := kinds[rec.Method]
	if !ok || rec.Server == "" || rec.Code != codeBatchDenied {
		return 0, 0, false
	}
	switch {
	case rec.Verdict == decision.Deny.String():
		return kind, decision.Deny, true
	case rec.Verdict == decision.Allow.String() && rec.ShadowVerdict == decision.Deny.String():
		return kind, decision.Allow, true
	}
	return 0, 0, false
}

// otherVerdict is the verdict authz gives under set, before the batch
// rule, a message of a batch that is not a call replay evaluates, when the
// policy decides it by the role alone or not at all: for a lifecycle
// message, allow if set defines the role and deny if not (a message
// neither a call nor a completion was a lifecycle one if the batch denied
// it, or the policy did not define its role); deny for an invalid name or
// a method not passed on. known is false for anything else.
func otherVerdict(rec *audit.Record, set *policy.Set) (v decision.Verdict, known bool) {
	switch rec.Code {
	case codeLifecycle:
	case codeInvalidName, codeMethodNotAllowed:
		return decision.Deny, true
	case codeBatchDenied, string(decision.CodeUnknownRole), string(decision.CodeNoPolicy):
		if _, call := kinds[rec.Method]; call || rec.Method == "completion/complete" {
			return 0, false
		}
	default:
		return 0, false
	}
	if role, _ := decision.LookupRole(set, rec.Role); role == nil {
		return decision.Deny, true
	}
	return decision.Allow, true
}

// count adds the replay of rec, a decision of req, to the report: its
// recorded enforced verdict old, and the new one, res, unless undecidable.
func (r *replayer) count(req *request, rec *audit.Record, old decision.Verdict, res decision.Result, decidable bool) {
	key := Key{Role: rec.Role, Tool: rec.Server + "__" + rec.Tool}
	c := r.rep.Counts[key]
	if c == nil && r.tools[key.Role] >= r.maxTools {
		key.Tool = ""
		c = r.rep.Counts[key]
	}
	if c == nil {
		c = &Counts{}
		r.rep.Counts[key] = c
		if key.Tool != "" {
			r.tools[key.Role]++
		}
	}
	if !decidable {
		c.Undecidable++
		return
	}
	switch nv := res.Verdict; {
	case nv == old:
		c.Unchanged++
		return
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
	r.rep.Changed++
	// A copy, so that a change kept does not keep its request's records.
	kept := *rec
	r.changes = append(r.changes, change{at: req.at, Change: Change{Record: &kept, Old: old, New: res.Verdict, Result: res}})
	if len(r.changes) >= 2*r.maxChanges {
		r.keepFirstChanges()
	}
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
	if ok && kind == decision.Resource && mcpfilter.URIHasRedactedParts(rec.Tool) {
		// The record shows the URI without its userinfo and query values
		// (mcpfilter.RedactURI); a glob may match what they held, or
		// the REDACTED in their place, and the real one not.
		return decision.Result{}, false
	}
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
		case !ok, rec.ArgsCut > 0, len(rec.Args) == 0 && needsArgs:
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
