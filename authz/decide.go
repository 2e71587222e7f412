package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/mcpfilter"
)

// Code says why authz answered as it did. It is a metric label and an
// audit field; policy outcomes use the decision engine's codes.
type Code string

// Codes of outcomes decided outside the policy engine.
const (
	CodeLifecycle          Code = "lifecycle" // initialize, ping, notifications, list methods
	CodeUnauthenticated    Code = "unauthenticated"
	CodeTokenInvalid       Code = "token_invalid"
	CodeTokenExpired       Code = "token_expired"
	CodeTokenRevoked       Code = "token_revoked"
	CodeTokenStoreError    Code = "token_store_error"
	CodeMalformedRequest   Code = "malformed_request"
	CodeBodyTooLarge       Code = "body_too_large"
	CodeUnsupportedVersion Code = "unsupported_protocol_version"
	CodeHeaderMismatch     Code = "header_mismatch"
	CodeOriginNotAllowed   Code = "origin_not_allowed"
	CodeMethodNotAllowed   Code = "method_not_allowed"
	CodeInvalidName        Code = "invalid_name"
	CodeBatchDenied        Code = "batch_denied"
	CodeRateLimited        Code = "rate_limited"
	CodeRateLimiterError   Code = "rate_limiter_error"
	CodeAuditUnavailable   Code = "audit_unavailable"
	CodeInternalError      Code = "internal_error"
)

// outcome is the decision on one JSON-RPC message.
type outcome struct {
	msg     *mcpfilter.Message
	server  string
	name    string // tool or prompt name, or resource URI, on its server
	res     decision.Result
	code    Code
	reason  string
	verdict decision.Verdict // enforced
	retry   time.Duration    // for CodeRateLimited
	traceID string           // of the trace the decision is in, for the audit record
}

// shownName is o's name as its audit record, reason and span show it: a
// resource URI (a read's, or a completion's template) without the
// credentials it may carry, which the policy decided on but nothing that
// keeps it should (mcpfilter.RedactURI).
func (o *outcome) shownName() string {
	if o.msg.URI != "" {
		return mcpfilter.RedactURI(o.name)
	}
	return o.name
}

// wouldBeDenied reports whether o is a shadow-mode call that enforce mode
// would not run: one it would deny, or park for a human. A shadow role runs
// such a call at once, without approval; counting it as a would-be denial
// keeps a role whose calls would all wait for approval from looking ready
// to enforce.
func (o *outcome) wouldBeDenied() bool {
	return o.res.Shadow && (o.res.ShadowVerdict == decision.Deny || o.res.ShadowVerdict == decision.NeedsApproval)
}

// lifecycleMethods need a valid role and nothing more: the broker answers
// initialize itself and filters every list to what the role may use.
var lifecycleMethods = map[string]bool{
	"initialize":               true,
	"ping":                     true,
	"server/discover":          true,
	"tools/list":               true,
	"resources/list":           true,
	"resources/templates/list": true,
	"prompts/list":             true,
	// The agent's own log level on its session with the gateway.
	"logging/setLevel": true,
}

// spanNames are the decision spans' names for the methods the gateway
// knows; every other method's span is "amg.decide other". Span names
// become metric labels downstream, and the methods an agent sends are its
// own to invent.
var spanNames = func() map[string]string {
	names := map[string]string{}
	for _, m := range append(slices.Collect(maps.Keys(lifecycleMethods)), "tools/call", "prompts/get", "resources/read",
		"resources/subscribe", "resources/unsubscribe", "completion/complete", "notifications/initialized",
		"notifications/cancelled", "notifications/progress", "notifications/roots/list_changed") {
		names[m] = "amg.decide " + m
	}
	return names
}()

func spanName(method string) string {
	if name, ok := spanNames[method]; ok {
		return name
	}
	return "amg.decide other"
}

func (c *call) decide() *authv3.CheckResponse {
	c.set = c.s.deps.Policies.Current()
	c.role, _ = decision.LookupRole(c.set, c.token.Role)
	// One message is the common case: its outcome stays on the stack.
	var one [1]outcome
	outs := one[:]
	if len(c.messages) != 1 {
		outs = make([]outcome, len(c.messages))
	}
	for i := range c.messages {
		outs[i] = c.decideMessage(&c.messages[i])
	}
	// The batch rule runs before the rate limits, and again after them: a
	// batch the policy denies runs none of its calls and spends no budget,
	// and a call a limit refuses denies its batch.
	if len(outs) > 1 {
		denyBatch(outs)
	}
	if resp := c.applyRateLimits(outs); resp != nil {
		return resp
	}
	if len(outs) > 1 {
		denyBatch(outs)
	}
	c.countShadow(outs)
	// The decision's latency, in its metrics and its audit records alike.
	c.took, c.decided = c.s.now().Sub(c.start), true
	c.observe(outs)
	// A call refused here keeps the budget it spent above: its record
	// says whether a limit refused it, so it cannot be written first.
	if err := c.logRecords(outs); err != nil {
		if c.s.tel != nil {
			c.s.tel.RecordAuditFailure(c.ctx)
		}
		return c.auditFailed(err)
	}
	for i := range outs {
		if outs[i].verdict == decision.Deny {
			return c.denied(outs)
		}
	}
	verdict, timeout := verdictAllow, time.Duration(0)
	if outs[0].verdict == decision.NeedsApproval {
		verdict = verdictNeedsApproval
		if a := outs[0].res.Approval; a != nil {
			timeout = a.Timeout
		}
	}
	return c.ok(verdict, timeout)
}

// logRecords audits the decision of each message. A batch's records are
// accepted all or none: one refused fails the request, which must then
// leave no record of a call allowed.
func (c *call) logRecords(outs []outcome) error {
	switch len(outs) {
	case 0:
		return nil
	case 1:
		rec := c.messageRecord(&outs[0])
		rec.TraceID = outs[0].traceID
		return c.s.deps.Audit.Log(rec)
	}
	recs := make([]*audit.Record, len(outs))
	for i := range outs {
		recs[i] = c.messageRecord(&outs[i])
		recs[i].TraceID = outs[i].traceID
	}
	return c.s.deps.Audit.LogAll(recs)
}

var _ Auditor = (*audit.Logger)(nil)

func (c *call) decideMessage(m *mcpfilter.Message) outcome {
	o := outcome{msg: m}
	var kind decision.Kind
	switch {
	case m.Kind == mcpfilter.KindResponse, lifecycleMethods[m.Method], strings.HasPrefix(m.Method, "notifications/"):
		// Allowed to a role the policy defines. A token of a role it does
		// not define (or with no policy loaded) reaches nothing, and its
		// agent is told why from its first request.
		if c.role == nil {
			_, o.res = decision.LookupRole(c.set, c.token.Role)
			o.verdict, o.code, o.reason = o.res.Verdict, Code(o.res.Code), o.res.Reason
			return o
		}
		o.verdict, o.code = decision.Allow, CodeLifecycle
		return o
	case m.Method == "tools/call", m.Method == "prompts/get":
		server, name, err := c.s.ns.Split(m.Name)
		if err != nil {
			o.code, o.reason = CodeInvalidName, err.Error()
			return o
		}
		o.server, o.name = server, name
		kind = decision.Tool
		if m.Method == "prompts/get" {
			kind = decision.Prompt
		}
	case m.Method == "resources/read", m.Method == "resources/subscribe", m.Method == "resources/unsubscribe":
		server, uri, err := c.s.ns.SplitURI(m.URI)
		if err != nil {
			o.code, o.reason = CodeInvalidName, err.Error()
			return o
		}
		o.server, o.name, kind = server, uri, decision.Resource
	case m.Method == "completion/complete":
		return c.decideCompletion(m)
	default:
		o.code, o.reason = CodeMethodNotAllowed, "method "+quote(m.Method)+" is not allowed through the gateway"
		return o
	}
	in := decision.Input{Agent: c.token.Agent, Role: c.token.Role, Kind: kind, Server: o.server, Name: o.name, Arguments: m.Args}
	if kind == decision.Tool && c.s.ann != nil {
		in.Annotations = c.s.ann.Annotations(o.server, o.name)
	}
	o.res = decision.Evaluate(c.set, &in)
	o.verdict, o.code, o.reason = o.res.Verdict, Code(o.res.Code), o.res.Reason
	return o
}

// decideCompletion allows completing a prompt's or a resource template's
// argument to a role granted that prompt or template: the values offered
// are the upstream's, and asking for them reveals nothing the role could
// not list. It counts against the limits a prompts/get of the prompt, or
// a read, would. A shadow-mode role is allowed either way, with what
// enforce mode would have decided kept as its shadow verdict, as
// decision.Evaluate does for calls.
func (c *call) decideCompletion(m *mcpfilter.Message) outcome {
	o := outcome{msg: m}
	var (
		server, name, what string
		granted            func(*policy.Set, string, string, string) bool
		err                error
	)
	if m.RefType == mcpfilter.RefPrompt {
		server, name, err = c.s.ns.Split(m.Name)
		what, granted = "prompt", decision.PromptGranted
	} else {
		server, name, err = c.s.ns.SplitURI(m.URI)
		what, granted = "resource", decision.ResourceGranted
	}
	if err != nil {
		o.code, o.reason = CodeInvalidName, err.Error()
		return o
	}
	o.server, o.name = server, name
	o.res = decision.Result{Verdict: decision.Allow, Code: decision.CodeAllowed, RateLimits: c.completionLimits(m.RefType, server, name)}
	if !granted(c.set, c.token.Role, server, name) {
		o.res = decision.Result{Code: decision.CodeNotGranted,
			Reason: what + " " + quote(o.shownName()) + " on server " + quote(server) + " is not granted to role " + quote(c.token.Role)}
	}
	if c.role != nil && c.role.Mode == policy.ModeShadow {
		o.res.Shadow, o.res.ShadowVerdict, o.res.Verdict = true, o.res.Verdict, decision.Allow
	}
	o.verdict, o.code, o.reason = o.res.Verdict, Code(o.res.Code), o.res.Reason
	return o
}

// completionLimits are the rate limits of completing an argument of
// server's prompt or resource template name: the prompt grant's (the
// role's and its own), or the role's.
func (c *call) completionLimits(ref, server, name string) []*policy.RateLimit {
	if c.role == nil {
		return nil
	}
	if sg := c.role.Servers[server]; ref == mcpfilter.RefPrompt && sg != nil {
		if g := sg.Prompts[name]; g != nil {
			return g.RateLimits
		}
	}
	return c.role.RateLimits
}

// applyRateLimits counts the calls that would go ahead against their
// limits, all of a request's together or none: when one limit refuses a
// call, neither that call's other limits (its role's, shared by every
// agent of the role, among them) nor those of the other calls of its batch
// are spent, since none of them runs. A limiter error fails the whole
// request closed. In shadow mode an exceeded limit is a would-be denial
// like any other, and spends nothing either.
func (c *call) applyRateLimits(outs []outcome) *authv3.CheckResponse {
	var spends []ratelimit.Spend
	for i := range outs {
		if o := &outs[i]; goesAhead(o) {
			for _, l := range o.res.RateLimits {
				key := l.State + "|" + c.token.Agent
				if l.Key == policy.PerRole {
					key = l.State + "|role"
				}
				spends = append(spends, ratelimit.Spend{Key: key, Limit: l})
			}
		}
	}
	if len(spends) == 0 {
		return nil
	}
	r, refused, err := c.s.deps.Limiter.AllowAll(c.depCtx, spends)
	if err == nil && !r.Allowed && (refused < 0 || refused >= len(spends)) {
		err = fmt.Errorf("refused spend %d of %d", refused, len(spends))
	}
	if err != nil {
		c.s.log.Error("rate limiter failed", "decision_id", c.id, "err", err)
		return c.failClosed(CodeRateLimiterError, "rate limiter unavailable")
	}
	if r.Allowed {
		return nil
	}
	for i := range outs {
		o := &outs[i]
		if !goesAhead(o) {
			continue
		}
		if refused >= len(o.res.RateLimits) {
			refused -= len(o.res.RateLimits)
			continue
		}
		l := o.res.RateLimits[refused]
		o.code, o.retry = CodeRateLimited, r.RetryAfter
		o.reason = "rate limit " + quote(l.ID) + " exceeded: " + strconv.Itoa(l.Requests) + " calls per " + l.Per.String()
		if o.res.Shadow {
			o.res.ShadowVerdict = decision.Deny
		} else {
			o.verdict = decision.Deny
		}
		break
	}
	return nil
}

// goesAhead reports whether o's call would run, and so counts against its
// rate limits: neither denied nor, in shadow mode, a would-be denial.
func goesAhead(o *outcome) bool {
	return o.verdict != decision.Deny && !(o.res.Shadow && o.res.ShadowVerdict == decision.Deny)
}

// Reasons of the batch rule.
const (
	reasonBatchApproval = "calls that need approval cannot be sent in a batch"
	reasonBatchDenied   = "another call in the same batch was denied"
)

// denyBatch applies the batch rule: one denied element denies the batch,
// and calls that need approval cannot be parked from inside a batch.
func denyBatch(outs []outcome) {
	denied := false
	for i := range outs {
		if outs[i].verdict == decision.NeedsApproval {
			outs[i].verdict, outs[i].code, outs[i].reason = decision.Deny, CodeBatchDenied, reasonBatchApproval
		}
		denied = denied || outs[i].verdict == decision.Deny
	}
	if denied {
		for i := range outs {
			if outs[i].verdict != decision.Deny {
				outs[i].verdict, outs[i].code, outs[i].reason = decision.Deny, CodeBatchDenied, reasonBatchDenied
			}
		}
	}
	shadowBatch(outs)
}

// shadowBatch applies the batch rule to the shadow verdicts, after the
// enforced ones: a shadow-mode role's calls are recorded and counted as
// enforce mode would decide the batch. A call the batch rule denied for
// real keeps the code and reason its agent was given.
func shadowBatch(outs []outcome) {
	denied := false
	for i := range outs {
		v := outs[i].verdict
		if outs[i].res.Shadow {
			v = outs[i].res.ShadowVerdict
		}
		denied = denied || v == decision.Deny || v == decision.NeedsApproval
	}
	if !denied {
		return
	}
	for i := range outs {
		o := &outs[i]
		if !o.res.Shadow || o.res.ShadowVerdict == decision.Deny {
			continue
		}
		if o.verdict != decision.Deny {
			o.code, o.reason = CodeBatchDenied, reasonBatchDenied
			if o.res.ShadowVerdict == decision.NeedsApproval {
				o.reason = reasonBatchApproval
			}
		}
		o.res.ShadowVerdict = decision.Deny
	}
}

func (c *call) countShadow(outs []outcome) {
	if c.s.shadow == nil {
		return
	}
	var calls, denials int64
	for i := range outs {
		if o := &outs[i]; o.res.Shadow {
			calls++
			if o.wouldBeDenied() {
				denials++
			}
		}
	}
	if calls == 0 {
		return
	}
	// The counter feeds a report; the audit record is the source of
	// truth, so a failure here is logged, not fatal.
	if err := c.s.shadow.Add(c.ctx, c.token.Role, c.start, calls, denials); err != nil {
		c.s.log.Warn("shadow counter failed", "decision_id", c.id, "err", err)
	}
}

func (c *call) messageRecord(o *outcome) *audit.Record {
	rec := c.record(o.verdict.String(), string(o.code), o.reason)
	rec.Method = o.msg.Method
	rec.Server = o.server
	rec.Tool = o.shownName()
	rec.Rule = o.res.Rule
	if o.res.Shadow {
		rec.ShadowVerdict = o.res.ShadowVerdict.String()
	}
	if o.msg.Args.Exists() {
		var rules []string
		if c.role != nil {
			rules = c.role.Redact
		}
		rec.Args = c.s.deps.Redactor.RedactRaw(o.msg.Arguments, o.msg.Args, rules)
	}
	return rec
}

// rpcError is a JSON-RPC error object as AMG sends it.
type rpcError struct {
	Code    int          `json:"code"`
	Message string       `json:"message"`
	Data    rpcErrorData `json:"data"`
}

type rpcErrorData struct {
	DecisionID   string `json:"decision_id"`
	Code         Code   `json:"code"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   rpcError        `json:"error"`
}

// JSON-RPC error codes AMG uses, in the range the specification leaves to
// implementations.
const (
	RPCDenied       = -32001
	RPCRateLimited  = -32002
	RPCUnavailable  = -32003
	RPCUnauthorized = -32004
)

// observe gives each decided message a span in the agent's trace, and
// counts it in the decision metrics; it notes each message's trace id for
// the audit record. Nothing of the arguments goes into either. When no one
// receives spans, none is started: the messages take the trace id of the
// trace they are in, or a new one when they are in none.
func (c *call) observe(outs []outcome) {
	t := c.s.tel
	if t == nil {
		return
	}
	ctx := c.traceContext(t)
	if !t.Tracing() {
		id := telemetry.TraceID(ctx)
		if id == "" {
			id = c.spareTraceID
		}
		for i := range outs {
			outs[i].traceID = id
		}
	}
	mode := policy.ModeEnforce.String()
	if c.role != nil {
		mode = c.role.Mode.String()
	}
	version := ""
	if c.set != nil {
		version = c.set.VersionString()
	}
	for i := range outs {
		o := &outs[i]
		shadow := ""
		if o.res.Shadow {
			shadow = o.res.ShadowVerdict.String()
		}
		if t.Tracing() {
			sctx, span := t.StartDecisionSpan(ctx, spanName(o.msg.Method))
			if span.IsRecording() { // attributes cost allocations; unsampled spans drop them
				span.SetAttributes(telemetry.DecisionAttributes(c.token.Agent, c.token.Role, o.server, o.shownName(),
					o.verdict.String(), shadow, o.res.Rule, version, c.id)...)
			}
			span.End()
			o.traceID = telemetry.TraceID(sctx)
		}
		t.RecordDecision(c.ctx, c.token.Role, o.verdict.String(), mode, string(o.code), c.took)
		if o.wouldBeDenied() {
			t.RecordShadowDeny(c.ctx, c.token.Role)
		}
		if o.code == CodeRateLimited {
			t.RecordRateLimited(c.ctx, c.token.Role)
		}
	}
}

// traceContext is where a decision's spans go. The span of the Check's own
// RPC is the better parent when it is in the agent's trace: Envoy, when it
// traces, passes its ext_authz span in the gRPC metadata, itself in the
// trace the agent's traceparent began, and the standalone front's request
// span continues that traceparent too. Otherwise (an Envoy that does not
// trace sends the agent's headers only, and the RPC began a trace of its
// own) the decision continues the request's traceparent directly.
func (c *call) traceContext(t *telemetry.Telemetry) context.Context {
	// Without tracing no stats handler started an RPC span: the RPC's
	// trace context is in its metadata.
	rpc := t.ExtractRPC(c.ctx)
	if _, ok := c.headers.lookup("traceparent"); !ok {
		return rpc // the request is in no trace of its own
	}
	agent := t.Propagator().Extract(rpc, propagation.MapCarrier(c.headers.m))
	if trace.SpanContextFromContext(agent).TraceID() == trace.SpanContextFromContext(rpc).TraceID() {
		return rpc
	}
	return agent
}
