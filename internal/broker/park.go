package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/mcpfilter"
)

// A call whose verdict is needs_approval is parked: the broker stores the
// exact request, keeps the agent's request open (progress notifications
// when the agent asked for progress, SSE comments otherwise), and waits
// for a human. Approved, it sends the stored bytes' call upstream once and
// answers with the real result; denied, expired or abandoned, nothing is
// sent upstream and the agent gets a JSON-RPC error saying which.

// Codes of the approval steps, as audit fields.
const (
	CodeApprovalParked    = "approval_parked"
	CodeApprovalApproved  = "approval_approved"
	CodeApprovalDenied    = "approval_denied"
	CodeApprovalExpired   = "approval_expired"
	CodeApprovalCancelled = "approval_cancelled"
	// Approved, and not run; the approval is voided.
	//   - stale: the agent's token or the policy changed while the call
	//     waited (see stillAllowed);
	//   - altered: the store holds another request than the one parked;
	//   - abandoned: the agent went away as the approval came.
	CodeApprovalStale     = "approval_stale"
	CodeApprovalAltered   = "approval_altered"
	CodeApprovalAbandoned = "approval_abandoned"
	// Pending, and gone from the store (Redis restarted without
	// persistence, say): no one can decide it any more, and its call is
	// refused.
	CodeApprovalLost = "approval_lost"
	// A call needing approval past its agent's limit of waiting calls
	// (Options.MaxPendingApprovalsPerAgent), refused unparked.
	CodeApprovalLimit = "approval_limit"
)

// defaultMaxParked is how many calls an agent may have waiting for
// approval at once, unless Options say otherwise.
const defaultMaxParked = 16

// RPCApprovalRefused is the JSON-RPC error code of a parked call that was
// denied, expired or could not be parked.
const RPCApprovalRefused = -32002

// park serves a call that needs approval, in the agent session as (nil
// outside one); the decision d has verified.
func (b *Broker) park(w http.ResponseWriter, r *http.Request, as *agentSession, d authz.Decision, body []byte) {
	parsed, err := mcpfilter.Parse(body, &mcpfilter.Options{MaxBytes: b.maxBody, SkipArgs: true})
	if err != nil || len(parsed.Messages) != 1 || parsed.Messages[0].Method != "tools/call" {
		b.refusePark(w, d, body, "only a single tools/call can wait for approval")
		return
	}
	m := &parsed.Messages[0]
	server, tool, err := b.ns.Split(m.Name)
	if as == nil || err != nil {
		b.refusePark(w, d, body, "a call that needs approval must come in an initialized MCP session")
		return
	}
	if b.idInUse(w, as, d, m.ID) {
		return
	}
	select {
	case <-b.drained.Done():
		b.refusePark(w, d, body, "this call needs human approval, and the gateway is shutting down")
		return
	default:
	}
	n, ok := b.reservePark(d.Agent)
	if !ok {
		why := fmt.Sprintf("agent %q has %d calls waiting for approval, as many as the gateway allows it: wait for a decision on one, or cancel one", d.Agent, n)
		b.record(d, CodeApprovalLimit, why)
		// As a rate limit is answered: the agent may try again later.
		writeJSON(w, approvalError(m.ID, authz.RPCRateLimited, CodeApprovalLimit, d.ID, "", why))
		return
	}
	unpark := sync.OnceFunc(func() { b.unpark(d.Agent) })
	defer unpark()
	// The rule that parked the call may shorten the wait, not lengthen it:
	// what stands between the agent and the gateway (Envoy's route timeout)
	// is sized to the gateway's.
	ttl := b.approvalTTL
	if d.ApprovalTimeout > 0 {
		ttl = min(ttl, d.ApprovalTimeout)
	}
	a, err := approval.New(d.ID, d.Agent, d.Role, server, tool, body, b.now(), ttl)
	if err == nil {
		err = b.approvals.Create(r.Context(), a)
	}
	if err != nil {
		b.log.Error("cannot park a call for approval", "decision_id", d.ID, "err", err)
		b.record(d, CodeApprovalUnavailable, "approval store: "+err.Error())
		refuseCall(w, d, body, "this call needs human approval, and the approval store failed")
		return
	}
	if err := b.recordApproval(a, CodeApprovalParked, ""); err != nil {
		// Not parked unrecorded: the approval no one could trace is
		// cancelled at once (unrecorded too), and the call refused.
		if _, ferr := b.approvals.Finish(context.Background(), a.ID, approval.Cancelled, "amg", "the audit log could not record it", b.now()); ferr != nil {
			b.log.Warn("cannot cancel an approval the audit log could not record; it stays pending until it expires", "approval_id", a.ID, "err", ferr)
		}
		refuseCall(w, d, body, "this call needs human approval, and the audit log could not record it; try again")
		return
	}
	if b.notify != nil {
		go b.notify(a)
	}

	stream := &sseStream{w: w}
	send := stream.send
	token := progressToken(m.Params)
	waited := 0
	keepAlive := func() {
		waited++
		if token == nil {
			stream.comment("waiting for approval " + a.ID)
			return
		}
		n, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "notifications/progress", "params": map[string]any{
			"progressToken": token, "progress": waited,
			"message": "waiting for human approval " + a.ID + " (expires " + a.Expires.Format(time.RFC3339) + ")"}})
		send(n)
	}
	keepAlive()

	// The agent's notifications/cancelled for the call, or the end of its
	// session, abandons it as the agent's going away does.
	ctx, abandon := context.WithCancelCause(r.Context())
	defer abandon(nil)
	id := string(m.ID)
	as.mu.Lock()
	if as.ups == nil {
		abandon(errSessionEnded)
	} else {
		as.parked[a.ID] = parkedCall{id: id, abandon: abandon}
	}
	as.mu.Unlock()
	defer func() {
		as.mu.Lock()
		delete(as.parked, a.ID)
		as.mu.Unlock()
	}()

	outcome, err := b.waitForDecision(ctx, a, keepAlive)
	unpark()
	// The wait is over: the call holds its id until it is answered, and
	// is no longer abandoned (see parkedCall).
	as.mu.Lock()
	if _, ok := as.parked[a.ID]; ok {
		as.parked[a.ID] = parkedCall{id: id}
	}
	as.mu.Unlock()
	switch {
	case errors.Is(err, errStopped):
		b.recordApproval(a, CodeApprovalUnavailable, "the gateway shut down before a decision, and the approval store could not cancel the approval")
		send(approvalError(m.ID, RPCApprovalRefused, CodeApprovalUnavailable, d.ID, a.ID,
			"call needing approval "+a.ID+" was not run: the gateway is shutting down"))
	case errors.Is(err, errUnrecorded):
		b.void(outcome, CodeApprovalUnavailable, "the audit log could not record its approval")
		send(approvalError(m.ID, RPCApprovalRefused, CodeApprovalUnavailable, d.ID, a.ID,
			"approved call "+a.ID+" was not run: the audit log could not record its approval; send the call again to ask anew"))
	case errors.Is(err, errLost):
		send(approvalError(m.ID, RPCApprovalRefused, CodeApprovalLost, d.ID, a.ID,
			"call needing approval "+a.ID+" was not run: the approval store lost approval "+a.ID+"; send the call again to ask anew"))
	case err != nil:
		// The agent went away or cancelled the call: nothing is executed,
		// and a cancelled request is not answered.
		return
	case outcome.State == approval.Approved:
		b.executeApproved(stream, r, as, d, a, body, m, server, tool)
	default:
		send(refusal(m.ID, d.ID, outcome))
	}
}

// reservePark counts a call of agent waiting for approval, until unpark,
// or returns how many it has waiting and false if that is as many as it
// may: each holds its request in the store, and a request open.
func (b *Broker) reservePark(agent string) (int, bool) {
	b.parkedMu.Lock()
	defer b.parkedMu.Unlock()
	if n := b.parkedOf[agent]; n >= b.maxParked {
		return n, false
	}
	b.parkedOf[agent]++
	return 0, true
}

func (b *Broker) unpark(agent string) {
	b.parkedMu.Lock()
	defer b.parkedMu.Unlock()
	if b.parkedOf[agent]--; b.parkedOf[agent] <= 0 {
		delete(b.parkedOf, agent)
	}
}

// refusePark answers a call that needs approval and cannot wait for it,
// and audits why.
func (b *Broker) refusePark(w http.ResponseWriter, d authz.Decision, body []byte, why string) {
	b.record(d, CodeApprovalUnavailable, why)
	refuseCall(w, d, body, why)
}

// errStopped is waitForDecision's when the broker drained and the
// approval could not be cancelled in the store.
var errStopped = errors.New("stopped waiting for approvals")

// errUnrecorded is waitForDecision's when it has an approval the audit
// log could not record: a call is not run on a decision the log does not
// hold (who approved it, and when).
var errUnrecorded = errors.New("the audit log could not record the approval")

// errLost is waitForDecision's when the store no longer has the approval
// (ErrNotFound): no one can decide it, nor record its end, so waiting on
// or retrying it would last until the agent gave up. The loss is
// audited.
var errLost = errors.New("the approval store lost the approval")

// Why a parked call was abandoned, when not because its agent went away:
// the causes of its context, and the reasons its approval is cancelled
// with.
var (
	errCancelledByAgent = errors.New("the agent cancelled the call before a decision")
	errSessionEnded     = errors.New("the agent's session ended before a decision")
)

// waitForDecision waits until the approval is decided or expires, calling
// keepAlive every keep-alive interval; if ctx ends first, the approval is
// cancelled (for the reason ctx's cause gives, if it is one of park's) and
// ctx's error returned. Drain cancels it too. An approval the store lost
// ends the wait with errLost.
func (b *Broker) waitForDecision(ctx context.Context, a *approval.Approval, keepAlive func()) (*approval.Approval, error) {
	decided := make(chan *approval.Approval, 1)
	lost := make(chan struct{})
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		// A store that fails (Redis restarting) is asked again until the
		// approval expires: a decision made meanwhile must not be lost.
		for {
			got, err := b.approvals.Wait(wctx, a.ID)
			if err == nil {
				decided <- got
				return
			}
			if errors.Is(err, approval.ErrNotFound) {
				close(lost)
				return
			}
			b.log.Warn("waiting on the approval store failed; retrying", "approval_id", a.ID, "err", err)
			select {
			case <-wctx.Done():
				return
			case <-time.After(b.storeRetry):
			}
		}
	}()
	expiry := time.NewTimer(time.Until(a.Expires))
	defer expiry.Stop()
	tick := time.NewTicker(b.keepAlive)
	defer tick.Stop()
	stopping := b.drained.Done()
	for {
		select {
		case got := <-decided:
			if err := b.recordApproval(got, codeFor(got.State), got.Reason); err != nil && got.State == approval.Approved {
				return got, errUnrecorded
			}
			return got, nil
		case <-lost:
			return nil, b.lost(a)
		case <-tick.C:
			keepAlive()
		case <-expiry.C:
			got, err := b.finish(a, approval.Expired, "no decision before "+a.Expires.Format(time.RFC3339))
			if err == nil {
				return got, nil
			}
			if errors.Is(err, approval.ErrNotFound) {
				return nil, b.lost(a)
			}
			if !errors.Is(err, approval.ErrNotPending) {
				// The store failed: the approval is still pending there,
				// and expires when the store can record it.
				b.log.Warn("cannot record an approval's expiry; retrying", "approval_id", a.ID, "err", err)
				expiry.Reset(b.storeRetry)
			}
			// Decided at the last moment: that decision stands.
		case <-stopping:
			got, err := b.finish(a, approval.Cancelled, "the gateway shut down before a decision")
			if err == nil {
				return got, nil
			}
			if errors.Is(err, approval.ErrNotFound) {
				return nil, b.lost(a)
			}
			if !errors.Is(err, approval.ErrNotPending) {
				b.log.Warn("cannot cancel an approval at shutdown; it stays pending, and no one will run it", "approval_id", a.ID, "err", err)
				return nil, errStopped
			}
			// Decided at the last moment: that decision stands.
			stopping = nil
		case <-ctx.Done():
			why := "the agent went away before a decision"
			if cause := context.Cause(ctx); errors.Is(cause, errCancelledByAgent) || errors.Is(cause, errSessionEnded) {
				why = cause.Error()
			}
			_, err := b.finish(a, approval.Cancelled, why)
			switch {
			case errors.Is(err, approval.ErrNotPending):
				b.decidedTooLate(a, why)
			case errors.Is(err, approval.ErrNotFound):
				b.lost(a)
			case err != nil:
				b.cancelLater(a, why)
			}
			return nil, ctx.Err()
		}
	}
}

// lost audits that the store no longer has the pending approval a, and
// returns errLost.
func (b *Broker) lost(a *approval.Approval) error {
	b.log.Warn("the approval store lost a pending approval; its call is not run", "approval_id", a.ID)
	b.recordApproval(a, CodeApprovalLost, errLost.Error())
	return errLost
}

// decidedTooLate ends the approval a, decided as its agent went away
// (why), with no one left to answer: the decision is audited, and an
// approved call voided, never run.
func (b *Broker) decidedTooLate(a *approval.Approval, why string) {
	got, err := b.approvals.Get(context.Background(), a.ID)
	if err != nil {
		b.log.Warn("cannot read an approval decided as its agent went away; it is not run", "approval_id", a.ID, "err", err)
		return
	}
	b.recordApproval(got, codeFor(got.State), got.Reason)
	if got.State == approval.Approved {
		b.void(a, CodeApprovalAbandoned, "approved after it was abandoned: "+why)
	}
}

// cancelLater cancels an abandoned approval the store failed to cancel,
// trying again until the store can, the approval is decided or expires, or
// the broker drains: else it would stay pending, and a human could approve
// a call no one is left to run. A decision that comes first ends it as one
// that came as the agent went away (decidedTooLate).
func (b *Broker) cancelLater(a *approval.Approval, why string) {
	b.log.Warn("cannot cancel an abandoned approval; retrying", "approval_id", a.ID)
	b.cancelling.Go(func() {
		tick := time.NewTicker(b.storeRetry)
		defer tick.Stop()
		for b.now().Before(a.Expires) {
			select {
			case <-b.drained.Done():
				return
			case <-tick.C:
			}
			_, err := b.finish(a, approval.Cancelled, why)
			switch {
			case errors.Is(err, approval.ErrNotPending):
				b.decidedTooLate(a, why)
			case errors.Is(err, approval.ErrNotFound):
				b.lost(a)
			case err != nil:
				continue
			}
			return
		}
	})
}

// finish moves a pending approval on and audits it; ErrNotPending means a
// decision came first and the waiter will see it.
func (b *Broker) finish(a *approval.Approval, to approval.State, reason string) (*approval.Approval, error) {
	got, err := b.approvals.Finish(context.Background(), a.ID, to, "amg", reason, b.now())
	if err != nil {
		return nil, err
	}
	b.recordApproval(got, codeFor(to), reason)
	return got, nil
}

// executeApproved sends an approved call upstream once, and answers the
// agent on stream. body is the parked request, m its parsed message.
//
// An upstream spoken to over HTTP gets the stored request's bytes, with
// only the id and tool name replaced, as on the direct path. Any other
// gets the call through the SDK, which encodes the arguments anew: the
// same JSON value, without the spaces between its tokens.
func (b *Broker) executeApproved(stream *sseStream, r *http.Request, as *agentSession, d authz.Decision, a *approval.Approval, body []byte,
	m *mcpfilter.Message, server, tool string) {
	r = withApproval(r, a.ID)
	if err := b.stillAllowed(r.Context(), d, body, server, tool); err != nil {
		b.void(a, CodeApprovalStale, err.Error())
		stream.answer(approvalError(m.ID, RPCApprovalRefused, CodeApprovalStale, d.ID, a.ID, "approved call not executed: "+err.Error()))
		return
	}
	_, err := b.approvals.Execute(context.Background(), a.ID, body)
	code := CodeApprovalUnavailable
	switch {
	case errors.Is(err, approval.ErrAltered):
		// Someone with write access to the store changed the request a
		// human reviewed: an attack, or a bug, and either way not the
		// agent's call.
		b.log.Error("an approved call's stored request is not the one parked; it is not run", "approval_id", a.ID)
		b.void(a, CodeApprovalAltered, err.Error())
		code = CodeApprovalAltered
	case errors.Is(err, approval.ErrNotApproved) || errors.Is(err, approval.ErrNotFound):
		b.recordApproval(a, CodeApprovalUnavailable, "approved call not executed: "+err.Error())
	case err != nil:
		b.log.Error("cannot mark an approved call executed; it is not run", "approval_id", a.ID, "err", err)
		b.recordApproval(a, CodeApprovalUnavailable, "approved call not executed: the approval store failed")
		err = errors.New("the approval store failed")
	}
	if err != nil {
		stream.answer(approvalError(m.ID, RPCApprovalRefused, code, d.ID, a.ID, "approved call not executed: "+err.Error()))
		return
	}
	if b.directCall(stream, r, as, body, m) {
		return
	}
	params := &mcp.CallToolParams{Name: tool, Arguments: m.Arguments}
	var p struct {
		Meta mcp.Meta `json:"_meta"`
	}
	if json.Unmarshal(m.Params, &p) == nil {
		params.Meta = upstreamMeta(p.Meta)
	}
	ctx := context.WithoutCancel(r.Context())
	start := time.Now()
	var res *mcp.CallToolResult
	err = b.callUpstream(ctx, as.ss, server, nil, func(ctx context.Context, cs *mcp.ClientSession) (err error) {
		res, err = cs.CallTool(ctx, params)
		return err
	})
	status, reason := "ok", ""
	switch {
	case err != nil:
		status, reason = "error", b.auditedError(err, d.Role, m.Arguments)
	case res.IsError:
		status = "tool_error"
	}
	b.recordUpstream(ctx, r.Header, server, tool, time.Since(start), status, reason)
	if err != nil {
		out, _ := json.Marshal(rpcErrorResponse(m.ID, upstreamError(server, err)))
		stream.answer(out)
		return
	}
	b.agentURIs(server, res.Content...)
	out, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": res})
	stream.answer(out)
}

// refusal is the agent's answer for a call of decision decisionID whose
// approval a was not approved. The decision is the call's own, not the
// one the store's copy of a names.
func refusal(id json.RawMessage, decisionID string, a *approval.Approval) []byte {
	var msg, code string
	switch a.State {
	case approval.Denied:
		msg, code = "denied by "+a.DecidedBy, CodeApprovalDenied
		if a.Reason != "" {
			msg += ": " + a.Reason
		}
	case approval.Expired:
		msg, code = "approval expired: "+a.Reason, CodeApprovalExpired
	case approval.Cancelled:
		msg, code = "approval cancelled: "+a.Reason, CodeApprovalCancelled
	default:
		msg, code = "approval "+string(a.State), "approval_"+string(a.State)
	}
	return approvalError(id, RPCApprovalRefused, code, decisionID, a.ID, fmt.Sprintf("call needing approval %s was not run: %s", a.ID, msg))
}

// approvalError is the agent's answer to a call needing approval that was
// not run: a JSON-RPC error of code, whose data says why as the audit
// record does (reason, one of the Code* codes) and names the call's
// decision and, once the call was parked, its approval.
func approvalError(id json.RawMessage, code int, reason, decisionID, approvalID, msg string) []byte {
	var e approvalErrorObject
	e.Code, e.Message = code, msg
	e.Data.Code, e.Data.DecisionID, e.Data.ApprovalID = reason, decisionID, approvalID
	out, _ := json.Marshal(rpcErrorBody{JSONRPC: "2.0", ID: id, Error: e})
	return out
}

// approvalErrorObject is the error approvalError answers with.
type approvalErrorObject struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    struct {
		Code       string `json:"code"`
		DecisionID string `json:"decision_id"`
		ApprovalID string `json:"approval_id,omitempty"`
	} `json:"data"`
}

// progressToken is params._meta.progressToken, or nil.
func progressToken(params json.RawMessage) any {
	var p struct {
		Meta struct {
			ProgressToken any `json:"progressToken"`
		} `json:"_meta"`
	}
	if json.Unmarshal(params, &p) != nil {
		return nil
	}
	return progressKey(p.Meta.ProgressToken)
}

func codeFor(s approval.State) string {
	switch s {
	case approval.Approved:
		return CodeApprovalApproved
	case approval.Denied:
		return CodeApprovalDenied
	case approval.Expired:
		return CodeApprovalExpired
	default:
		return CodeApprovalCancelled
	}
}

// recordApproval audits a step of an approval; an error means the audit
// log could not take it, and what depends on the step must not happen.
func (b *Broker) recordApproval(a *approval.Approval, code, reason string) error {
	if b.audit == nil {
		return nil
	}
	rec := &audit.Record{Time: b.now(), DecisionID: a.DecisionID, Agent: a.Agent, Role: a.Role, Server: a.Server,
		Tool: a.Tool, Method: "tools/call", Verdict: "needs_approval", Code: code, Reason: reason, ApprovalID: a.ID}
	if a.DecidedBy != "" && code != CodeApprovalParked {
		rec.Reason = "by " + a.DecidedBy + ": " + reason
	}
	if err := b.audit.Log(rec); err != nil {
		b.log.Error("audit log cannot record an approval step", "approval_id", a.ID, "code", code, "err", err)
		return err
	}
	return nil
}

// void ends the approved approval a that will not run, and audits why
// under code. The agent is told by the caller; if the store cannot record
// it, the approval stays approved, and is never executed.
func (b *Broker) void(a *approval.Approval, code, why string) {
	b.recordApproval(a, code, why)
	if _, err := b.approvals.Void(context.Background(), a.ID, why); err != nil {
		b.log.Warn("cannot void an approved call that will not run; it stays approved, and no one will run it", "approval_id", a.ID, "err", err)
	}
}

// stillAllowed checks what may have changed while an approved call
// waited, before it runs: the agent's token is still valid (the session
// ends a revoked token's calls only at its next look), and the policy in
// force still parks or allows the call. A human's approval releases a
// call the policy holds for one; it does not overrule a policy that no
// longer grants it.
func (b *Broker) stillAllowed(ctx context.Context, d authz.Decision, body []byte, server, tool string) error {
	if b.liveTokens != nil && d.TokenID != "" {
		live, err := b.liveTokens(ctx, []string{d.TokenID})
		if err != nil {
			return errors.New("the agent's token could not be checked")
		}
		if !live[d.TokenID] {
			return errors.New("the agent's token was revoked or expired while the call waited")
		}
	}
	parsed, err := mcpfilter.Parse(body, &mcpfilter.Options{MaxBytes: b.maxBody})
	if err != nil || len(parsed.Messages) != 1 {
		return errors.New("the parked request cannot be read")
	}
	res := decision.Evaluate(b.policies.Current(), &decision.Input{Agent: d.Agent, Role: d.Role, Kind: decision.Tool,
		Server: server, Name: tool, Arguments: parsed.Messages[0].Args, Annotations: b.Annotations(server, tool)})
	if res.Verdict == decision.Deny {
		return errors.New("the policy in force no longer allows it: " + res.Reason)
	}
	return nil
}

type approvalKey struct{}

// withApproval marks r as the execution of the approved call id, whose
// upstream outcome is then recorded under it too.
func withApproval(r *http.Request, id string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), approvalKey{}, id))
}

// approvalOf is the approval whose execution ctx is part of, if any.
func approvalOf(ctx context.Context) string {
	id, _ := ctx.Value(approvalKey{}).(string)
	return id
}
