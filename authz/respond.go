package authz

import (
	"encoding/json"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/mcpfilter"
)

var nullID = json.RawMessage("null")

// answerID is the id an error answer names: the request's, when the body
// is one request whose id is known, else null, as JSON-RPC asks of an
// answer to a request whose id could not be read.
func (c *call) answerID() json.RawMessage {
	switch {
	case len(c.messages) == 1 && c.messages[0].Kind == mcpfilter.KindRequest:
		return c.messages[0].ID
	case len(c.messages) == 0 && c.errID != nil:
		return c.errID
	}
	return nullID
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func (c *call) metadata(verdict string) *structpb.Struct {
	md := new(metadata)
	md.fill(c.id, verdict)
	return &md.s
}

// metadata is the dynamic metadata of a response, allocated as one: agent
// and role travel in headers; the metadata carries what access logs and
// other filters key on.
type metadata struct {
	s        structpb.Struct
	id, vd   structpb.Value
	idS, vdS structpb.Value_StringValue
}

func (md *metadata) fill(id, verdict string) {
	md.idS.StringValue, md.vdS.StringValue = id, verdict
	md.id.Kind, md.vd.Kind = &md.idS, &md.vdS
	md.s.Fields = map[string]*structpb.Value{"decision_id": &md.id, "verdict": &md.vd}
}

// okResponse is every part of an allowed CheckResponse, allocated
// together: one allocation instead of some twenty small ones, on the path
// every allowed request takes.
type okResponse struct {
	resp    authv3.CheckResponse
	status  status.Status
	http    authv3.CheckResponse_OkResponse
	ok      authv3.OkHttpResponse
	md      metadata
	opts    [5]corev3.HeaderValueOption
	vals    [5]corev3.HeaderValue
	headers [5]*corev3.HeaderValueOption
	remove  [1]string
}

// ok lets the request through with the signed decision. The agent's own
// Authorization header and any x-amg-* header it sent are removed, so the
// broker sees only what authz vouches for.
func (c *call) ok(verdict string, approvalTimeout time.Duration) *authv3.CheckResponse {
	d := Decision{ID: c.id, Agent: c.token.Agent, Role: c.token.Role, Verdict: verdict, BodySHA256: bodyHash(c.body),
		TokenID: c.token.ID, ApprovalTimeout: approvalTimeout, Method: c.method, Session: c.headers.get("mcp-session-id")}
	if c.set != nil {
		d.PolicyVersion = c.set.VersionString()
	}
	r := new(okResponse)
	for i, kv := range [len(r.opts)][2]string{
		{HeaderDecision, c.s.deps.Signer.Sign(d)},
		{HeaderDecisionID, c.id},
		{HeaderAgent, c.token.Agent},
		{HeaderRole, c.token.Role},
		{HeaderVerdict, verdict},
	} {
		r.vals[i].Key, r.vals[i].Value = kv[0], kv[1]
		r.opts[i].Header = &r.vals[i]
		r.opts[i].AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		r.headers[i] = &r.opts[i]
	}
	r.remove[0] = "authorization"
	remove := r.remove[:]
	for _, k := range c.headers.amgHeaders() {
		switch k {
		case HeaderDecision, HeaderDecisionID, HeaderAgent, HeaderRole, HeaderVerdict:
			// overwritten above
		default:
			remove = append(remove, k)
		}
	}
	r.status.Code = int32(code.Code_OK)
	r.md.fill(c.id, verdict)
	r.ok.Headers, r.ok.HeadersToRemove = r.headers[:], remove
	r.http.OkResponse = &r.ok
	r.resp.Status, r.resp.DynamicMetadata, r.resp.HttpResponse = &r.status, &r.md.s, &r.http
	return &r.resp
}

// allowWithoutBody answers a request without a body (the stream of
// server messages, the end of a session) from an authenticated agent: as
// every request, it needs a role the policy defines, the only kind the
// broker has sessions for.
func (c *call) allowWithoutBody(method string) *authv3.CheckResponse {
	c.set = c.s.deps.Policies.Current()
	role, undefined := decision.LookupRole(c.set, c.token.Role)
	verdict, why, reason := verdictAllow, CodeLifecycle, ""
	if role == nil {
		verdict, why, reason = verdictDeny, Code(undefined.Code), undefined.Reason
	}
	rec := c.record(verdict, string(why), reason)
	rec.Method = "HTTP " + method
	if err := c.s.deps.Audit.Log(rec); err != nil {
		return c.auditFailed(err)
	}
	if role == nil {
		return c.rpcDenial(403, why, RPCDenied, reason)
	}
	return c.ok(verdictAllow, 0)
}

// denied answers a request one or more of whose messages were denied:
// HTTP 200 with a JSON-RPC error for each request, which every MCP client
// reads as the call's result.
func (c *call) denied(outs []outcome) *authv3.CheckResponse {
	var resps []rpcResponse
	var retry time.Duration
	for i := range outs {
		o := &outs[i]
		if o.msg.Kind != mcpfilter.KindRequest {
			continue
		}
		e := rpcError{Code: RPCDenied, Message: o.reason, Data: rpcErrorData{DecisionID: c.id, Code: o.code}}
		switch o.code {
		case CodeRateLimited:
			e.Code, e.Data.RetryAfterMS = RPCRateLimited, retryAfterMS(o.retry)
			retry = max(retry, o.retry)
		case CodeInvalidName:
			e.Code = mcpfilter.CodeInvalidParams
		case CodeMethodNotAllowed:
			e.Code = codeMethodNotFound
		}
		resps = append(resps, rpcResponse{JSONRPC: "2.0", ID: o.msg.ID, Error: e})
	}
	hdrs := map[string]string{}
	if retry > 0 {
		hdrs["retry-after"] = strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10)
	}
	var body any
	switch {
	case len(resps) == 0:
		// Only notifications were denied: there is no id to answer, so
		// the HTTP status carries the refusal.
		o := firstDenied(outs)
		return c.deniedResponse(403, code.Code_PERMISSION_DENIED, hdrs, rpcResponse{JSONRPC: "2.0", ID: nullID,
			Error: rpcError{Code: RPCDenied, Message: o.reason, Data: rpcErrorData{DecisionID: c.id, Code: o.code}}})
	case len(outs) > 1:
		body = resps
	default:
		body = resps[0]
	}
	return c.deniedResponse(200, code.Code_PERMISSION_DENIED, hdrs, body)
}

// retryAfterMS is a refusal's wait in whole milliseconds, rounded up as
// the Retry-After header rounds it to seconds, and never 0: a wait under a
// millisecond is still one, and retry_after_ms is left out only when 0.
func retryAfterMS(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond != 0 || ms == 0 {
		ms++
	}
	return ms
}

func firstDenied(outs []outcome) *outcome {
	for i := range outs {
		if outs[i].verdict == decision.Deny {
			return &outs[i]
		}
	}
	return &outs[0]
}

const codeMethodNotFound = -32601

// reject denies a request that never reached a policy decision.
func (c *call) reject(httpStatus int, why Code, reason string) *authv3.CheckResponse {
	return c.rejectRPC(httpStatus, why, mcpfilter.CodeInvalidRequest, reason)
}

func (c *call) rejectRPC(httpStatus int, why Code, rpcCode int, reason string) *authv3.CheckResponse {
	if err := c.s.deps.Audit.Log(c.record(verdictDeny, string(why), reason)); err != nil {
		return c.auditFailed(err)
	}
	return c.rpcDenial(httpStatus, why, rpcCode, reason)
}

// rpcDenial is the denial, already audited, that answers with one
// JSON-RPC error.
func (c *call) rpcDenial(httpStatus int, why Code, rpcCode int, reason string) *authv3.CheckResponse {
	return c.deniedResponse(httpStatus, code.Code_PERMISSION_DENIED, nil, rpcResponse{JSONRPC: "2.0", ID: c.answerID(),
		Error: rpcError{Code: rpcCode, Message: reason, Data: rpcErrorData{DecisionID: c.id, Code: why}}})
}

// unauthenticated answers 401 with a WWW-Authenticate challenge, as an
// OAuth resource server does, so MCP clients know to present a token.
func (c *call) unauthenticated(why Code, reason, oauthError string) *authv3.CheckResponse {
	if err := c.s.deps.Audit.Log(c.record(verdictDeny, string(why), reason)); err != nil {
		return c.auditFailed(err)
	}
	challenge := `Bearer realm="amg"`
	if oauthError != "" {
		challenge += `, error="` + oauthError + `", error_description="` + reason + `"`
	}
	return c.deniedResponse(401, code.Code_UNAUTHENTICATED, map[string]string{"www-authenticate": challenge},
		rpcResponse{JSONRPC: "2.0", ID: nullID, Error: rpcError{Code: RPCUnauthorized, Message: reason, Data: rpcErrorData{DecisionID: c.id, Code: why}}})
}

// failClosed denies when a part AMG depends on failed. The record is
// attempted but its failure cannot change the answer.
func (c *call) failClosed(why Code, reason string) *authv3.CheckResponse {
	if err := c.s.deps.Audit.Log(c.record(verdictDeny, string(why), reason)); err != nil {
		c.s.log.Error("audit failed while failing closed", "decision_id", c.id, "err", err)
	}
	return c.unavailable(why, reason)
}

func (c *call) auditFailed(err error) *authv3.CheckResponse {
	c.s.log.Error("audit log cannot record; denying", "decision_id", c.id, "err", err)
	return c.unavailable(CodeAuditUnavailable, "audit log unavailable")
}

func (c *call) unavailable(why Code, reason string) *authv3.CheckResponse {
	return c.deniedResponse(503, code.Code_UNAVAILABLE, map[string]string{"retry-after": "1"},
		rpcResponse{JSONRPC: "2.0", ID: c.answerID(), Error: rpcError{Code: RPCUnavailable, Message: "gateway unavailable: " + reason,
			Data: rpcErrorData{DecisionID: c.id, Code: why}}})
}

func (c *call) deniedResponse(httpStatus int, grpcCode code.Code, hdrs map[string]string, body any) *authv3.CheckResponse {
	b, err := json.Marshal(body)
	if err != nil {
		b = []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}`)
	}
	opts := []*corev3.HeaderValueOption{setHeader("content-type", "application/json")}
	for k, v := range hdrs {
		opts = append(opts, setHeader(k, v))
	}
	return &authv3.CheckResponse{
		Status:          &status.Status{Code: int32(grpcCode)},
		DynamicMetadata: c.metadata(verdictDeny),
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(httpStatus)},
			Headers: opts,
			Body:    string(b),
		}},
	}
}
