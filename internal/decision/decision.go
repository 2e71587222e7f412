// Package decision evaluates one MCP call against a compiled policy set.
//
// Evaluate is a pure function of the set and the input: no I/O, no clock,
// no logging. Rate limits, approvals, audit and tracing wrap it; they are
// not in it. Everything not explicitly allowed is denied.
package decision

import (
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

// Verdict is the outcome of a decision. The zero value is Deny, so a
// Result that was never filled in denies.
type Verdict uint8

const (
	Deny Verdict = iota
	Allow
	NeedsApproval
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case NeedsApproval:
		return "needs_approval"
	}
	return "deny"
}

// Code says why a decision came out as it did. Codes are stable: they are
// metric labels and audit fields.
type Code string

// Reason codes.
const (
	CodeAllowed          Code = "allowed"
	CodeApprovalRequired Code = "approval_required"
	CodeNoPolicy         Code = "no_policy"
	CodeUnknownRole      Code = "unknown_role"
	CodeNotGranted       Code = "not_granted"
	CodeUnknownArgument  Code = "unknown_argument"
	CodeMissingArgument  Code = "missing_argument"
	CodeConstraintFailed Code = "constraint_failed"
	CodeCELDenied        Code = "cel_denied"
	CodeCELError         Code = "cel_error"
	CodeInternalError    Code = "internal_error"
)

// Kind is what an Input asks for.
type Kind uint8

const (
	// Tool is a tools/call; Name is the tool's name on its server.
	Tool Kind = iota
	// Prompt is a prompts/get; Name is the prompt's name on its server.
	Prompt
	// Resource is a resources/read (or subscribe); Name is the URI.
	Resource
)

func (k Kind) String() string {
	return [...]string{Tool: "tool", Prompt: "prompt", Resource: "resource"}[k]
}

// Input is one call to decide. Arguments is the call's arguments object
// as mcpfilter parsed it; Absent when the call had none.
type Input struct {
	Agent     string
	Role      string
	Kind      Kind
	Server    string
	Name      string
	Arguments mcpfilter.Value
	// Annotations are the tool's hints from its server; nil when it
	// declared none, in which case the specification's defaults apply
	// (a tool is then assumed destructive).
	Annotations *policy.Annotations
}

// Result is a decision.
type Result struct {
	// Verdict is what the gateway enforces.
	Verdict Verdict
	// Shadow is set for roles in shadow mode; ShadowVerdict is then what
	// enforce mode would have decided, while Verdict is Allow.
	Shadow        bool
	ShadowVerdict Verdict
	// Rule is the ID of the grant or rule that decided; empty when no
	// rule applied (unknown role, ungranted tool).
	Rule   string
	Code   Code
	Reason string
	// Approval is the rule that parked the call, when one did.
	Approval *policy.ApprovalRule
	// RateLimits are the limits the call counts against.
	RateLimits    []*policy.RateLimit
	PolicyVersion policy.Version
	// EvalError is why a cel condition could not be evaluated
	// (CodeCELError), for the policy's author: it may quote argument
	// values, so it is never recorded, logged or sent to the agent.
	EvalError error
}

// Evaluate decides in against set. It never panics: a panic inside
// evaluation is recovered and becomes a deny with CodeInternalError, which
// shadow mode does not soften.
func Evaluate(set *policy.Set, in *Input) (res Result) {
	defer func() {
		if r := recover(); r != nil {
			res = Result{Code: CodeInternalError, Reason: "internal error while evaluating the policy"}
			if set != nil {
				res.PolicyVersion = set.Version()
			}
		}
	}()
	role, undefined := LookupRole(set, in.Role)
	if role == nil {
		return undefined
	}
	switch in.Kind {
	case Resource:
		res = evaluateResource(role, in)
	default:
		res = evaluateCall(role, in)
	}
	res.PolicyVersion = set.Version()
	if role.Mode == policy.ModeShadow {
		res.Shadow, res.ShadowVerdict, res.Verdict = true, res.Verdict, Allow
	}
	return res
}

// LookupRole returns set's role of the given name. Where set defines no
// such role, or there is no set, it returns nil and the denial that every
// request of that role gets, whatever it asks.
func LookupRole(set *policy.Set, name string) (*policy.Role, Result) {
	if set == nil {
		return nil, Result{Code: CodeNoPolicy, Reason: "no policy is loaded"}
	}
	role, ok := set.Role(name)
	if !ok {
		return nil, Result{Code: CodeUnknownRole, Reason: "role " + quote(name) + " is not defined", PolicyVersion: set.Version()}
	}
	return role, Result{}
}

// ToolVisible reports whether a role's tools/list shows server's tool. A
// role in shadow mode sees every tool, so that shadowing changes nothing
// the agent can observe.
func ToolVisible(set *policy.Set, role, server, tool string) bool {
	r, sg := roleServer(set, role, server)
	if r != nil && r.Mode == policy.ModeShadow {
		return true
	}
	if sg == nil {
		return false
	}
	_, ok := sg.Tools[tool]
	return ok
}

// PromptVisible reports whether a role's prompts/list shows server's
// prompt; shadow-mode roles see every prompt.
func PromptVisible(set *policy.Set, role, server, prompt string) bool {
	return shadowRole(set, role) || PromptGranted(set, role, server, prompt)
}

// ResourceVisible reports whether a role's resources/list shows server's
// resource uri; shadow-mode roles see every resource.
func ResourceVisible(set *policy.Set, role, server, uri string) bool {
	return shadowRole(set, role) || ResourceGranted(set, role, server, uri)
}

// ServerVisible reports whether a role sees anything of server: it is
// granted some of its tools, prompts or resources, or is in shadow mode,
// and sees every server.
func ServerVisible(set *policy.Set, role, server string) bool {
	r, sg := roleServer(set, role, server)
	if r != nil && r.Mode == policy.ModeShadow {
		return true
	}
	return sg != nil && len(sg.Tools)+len(sg.Prompts)+len(sg.Resources) > 0
}

// PromptGranted reports whether role is granted server's prompt, whatever
// its mode: what enforce mode decides.
func PromptGranted(set *policy.Set, role, server, prompt string) bool {
	_, sg := roleServer(set, role, server)
	if sg == nil {
		return false
	}
	_, ok := sg.Prompts[prompt]
	return ok
}

// ResourceGranted reports whether role is granted server's resource uri,
// whatever its mode: what enforce mode decides.
func ResourceGranted(set *policy.Set, role, server, uri string) bool {
	_, sg := roleServer(set, role, server)
	if sg == nil {
		return false
	}
	for _, g := range sg.Resources {
		if g.Matches(uri) {
			return true
		}
	}
	return false
}

// shadowRole reports whether role is defined and in shadow mode.
func shadowRole(set *policy.Set, role string) bool {
	r, _ := roleServer(set, role, "")
	return r != nil && r.Mode == policy.ModeShadow
}

// roleServer returns a role and its grants on server, either nil when
// missing.
func roleServer(set *policy.Set, role, server string) (*policy.Role, *policy.ServerGrant) {
	if set == nil {
		return nil, nil
	}
	r, ok := set.Role(role)
	if !ok {
		return nil, nil
	}
	return r, r.Servers[server]
}

func evaluateCall(role *policy.Role, in *Input) Result {
	grant := lookupGrant(role, in)
	if grant == nil {
		return Result{Code: CodeNotGranted, Reason: in.Kind.String() + " " + quote(displayName(in)) + " is not granted to role " + quote(role.Name)}
	}
	if f := checkObject(grant.Args, in.Arguments); f != nil {
		return Result{Rule: grant.ID, Code: f.code, Reason: f.reason(displayName(in)), RateLimits: grant.RateLimits}
	}
	if grant.When != nil {
		if res, ok := evalCEL(grant, role, in); !ok {
			return res
		}
	}
	if grant.RequireApproval {
		return Result{Verdict: NeedsApproval, Rule: grant.ID, Code: CodeApprovalRequired,
			Reason: "calls to " + quote(displayName(in)) + " need human approval", RateLimits: grant.RateLimits}
	}
	if in.Kind == Tool {
		for _, a := range role.Approvals {
			if a.Matches(in.Server, in.Name, in.Annotations) {
				return Result{Verdict: NeedsApproval, Rule: a.ID, Code: CodeApprovalRequired, Approval: a,
					Reason: "calls to " + quote(displayName(in)) + " need human approval", RateLimits: grant.RateLimits}
			}
		}
	}
	return Result{Verdict: Allow, Rule: grant.ID, Code: CodeAllowed, RateLimits: grant.RateLimits}
}

func lookupGrant(role *policy.Role, in *Input) *policy.Grant {
	sg, ok := role.Servers[in.Server]
	if !ok {
		return nil
	}
	if in.Kind == Prompt {
		return sg.Prompts[in.Name]
	}
	return sg.Tools[in.Name]
}

func evaluateResource(role *policy.Role, in *Input) Result {
	if sg, ok := role.Servers[in.Server]; ok {
		for _, g := range sg.Resources {
			if g.Matches(in.Name) {
				return Result{Verdict: Allow, Rule: g.ID, Code: CodeAllowed, RateLimits: role.RateLimits}
			}
		}
	}
	return Result{Code: CodeNotGranted, Reason: "resource " + quote(displayName(in)) + " on server " + quote(in.Server) + " is not granted to role " + quote(role.Name)}
}

// displayName is the name the agent used, as a reason shows it:
// server__tool for tools and prompts, a resource's URI without the
// credentials it may carry (mcpfilter.RedactURI).
func displayName(in *Input) string {
	if in.Kind == Resource {
		return mcpfilter.RedactURI(in.Name)
	}
	return in.Server + "__" + in.Name
}
