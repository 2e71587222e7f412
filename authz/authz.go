// Package authz is AMG's Envoy ext_authz service: it implements
// envoy.service.auth.v3.Authorization/Check for requests carrying an MCP
// JSON-RPC body, resolves the agent's token, decides every message against
// the policy, applies rate limits, audits, and answers with a signed
// decision or a denial the agent's MCP client can read.
//
// Every failure is a deny: a panic, a token-store, rate-limiter or audit
// error, a body that is truncated, malformed or does not match its MCP
// headers. The standalone front calls the same Check in-process.
package authz

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/internal/tokens"
	"github.com/amgateway/amg/mcpfilter"
)

// Headers authz sets on allowed requests. Any x-amg-* header the agent
// sent is removed or overwritten.
const (
	HeaderAgent      = "x-amg-agent"
	HeaderRole       = "x-amg-role"
	HeaderVerdict    = "x-amg-verdict"
	HeaderDecisionID = "x-amg-decision-id"
	headerPrefix     = "x-amg-"
)

// The interfaces authz consumes. Each has an in-memory and a real
// implementation elsewhere.
type (
	// Authenticator resolves a bearer token to an agent and role.
	Authenticator interface {
		Authenticate(ctx context.Context, secret string) (tokens.Token, error)
	}
	// Policies hands out the current compiled policy set, or nil when
	// none has ever compiled (everything is then denied).
	Policies interface {
		Current() *policy.Set
	}
	// Limiter counts a request's calls against their rate limits, all or
	// none: a call one limit refuses spends no other (see
	// ratelimit.Memory.AllowAll).
	Limiter interface {
		AllowAll(ctx context.Context, spends []ratelimit.Spend) (ratelimit.Result, int, error)
	}
	// Auditor records decisions; an error means the record could not be
	// accepted and the request must be denied. LogAll takes the records
	// of one request's JSON-RPC batch all or none, so that a batch refused
	// for want of room for one of them leaves no record of a call allowed.
	Auditor interface {
		Log(rec *audit.Record) error
		LogAll(recs []*audit.Record) error
	}
	// Redactor replaces sensitive argument values before they are
	// recorded; raw is the exact JSON args was parsed from.
	Redactor interface {
		RedactRaw(raw json.RawMessage, args mcpfilter.Value, rules []string) json.RawMessage
	}
	// ShadowCounter counts, per role per day, the calls decided in shadow
	// mode and their would-be denials. It is called on every request of a
	// shadow-mode role, so it should not block (shadow.Batch).
	ShadowCounter interface {
		Add(ctx context.Context, role string, day time.Time, calls, denials int64) error
	}
	// AnnotationSource tells a tool's annotations, as its server declared
	// them; nil when unknown.
	AnnotationSource interface {
		Annotations(server, tool string) *policy.Annotations
	}
)

// Deps are the collaborators a Server cannot work without.
type Deps struct {
	Tokens   Authenticator
	Policies Policies
	Limiter  Limiter
	Audit    Auditor
	Redactor Redactor
	Signer   *Signer
}

// Options tune a Server; nil means defaults.
type Options struct {
	// Shadow counts shadow-mode calls and denials; nil skips counting.
	Shadow ShadowCounter
	// Annotations supplies tool annotations for approval rules; nil means
	// every tool is treated as declaring none (and so as destructive).
	Annotations AnnotationSource
	// MaxBodyBytes bounds the body; 0 means mcpfilter.DefaultMaxBytes.
	MaxBodyBytes int
	// Namespace maps the names agents use to upstreams; the zero value
	// prefixes every name with its server.
	Namespace mcpfilter.Namespace
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Telemetry, if set, gets a span and metrics per decision; the span
	// continues the trace of the request's traceparent header.
	Telemetry *telemetry.Telemetry
	// AllowedOrigins are the Origin header values let through, web
	// origins, scheme://host[:port] (scheme and host compared without
	// case, a default port the same as none). A request with another Origin
	// header is refused (403); one with none passes. Loopback origins
	// are also allowed on requests addressed to a loopback host (see
	// checkOrigin). Nil allows no other origin.
	AllowedOrigins []string
}

// Server implements the ext_authz Authorization service.
type Server struct {
	authv3.UnimplementedAuthorizationServer

	deps    Deps
	shadow  ShadowCounter
	tel     *telemetry.Telemetry
	ann     AnnotationSource
	ns      mcpfilter.Namespace
	maxBody int
	origins map[string]bool // AllowedOrigins, serialised as browsers send them
	log     *slog.Logger
	now     func() time.Time
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New returns a Server. Every field of deps is required.
func New(deps Deps, opts *Options) (*Server, error) {
	var missing []string
	for name, ok := range map[string]bool{
		"Tokens": deps.Tokens != nil, "Policies": deps.Policies != nil, "Limiter": deps.Limiter != nil,
		"Audit": deps.Audit != nil, "Redactor": deps.Redactor != nil, "Signer": deps.Signer != nil,
	} {
		if !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("authz: missing dependencies: %s", strings.Join(missing, ", "))
	}
	if opts == nil {
		opts = &Options{}
	}
	origins, err := parseOrigins(opts.AllowedOrigins)
	if err != nil {
		return nil, fmt.Errorf("authz: %w", err)
	}
	s := &Server{deps: deps, shadow: opts.Shadow, ann: opts.Annotations, ns: opts.Namespace, maxBody: opts.MaxBodyBytes,
		origins: origins, log: opts.Logger, now: opts.Now, tel: opts.Telemetry}
	if s.maxBody <= 0 {
		s.maxBody = mcpfilter.DefaultMaxBytes
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Check decides one HTTP request. It never returns an error: every
// outcome, including a panic, is a CheckResponse, so Envoy always has an
// answer to send and never needs failure_mode_allow. The request's body
// must not change after Check is called: the audit record, written
// later, shares its bytes.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	c := &call{s: s, ctx: ctx, start: s.now()}
	c.id, c.spareTraceID = newIDs()
	var cancel context.CancelFunc
	c.depCtx, cancel = dependencyContext(ctx)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in Check", "decision_id", c.id, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp = c.failClosed(CodeInternalError, "internal error")
		}
	}()
	return c.check(req), nil
}

// Calls to AMG's dependencies inside a Check (the token store, the
// limiter) must end this long before the Check's deadline, at least
// minDependencyMargin and at least a fifth of the time the Check was
// given, but never more than half of it, so that a short authz_timeout
// still leaves its dependencies time: what is left is for the audit
// record and the answer, -32003
// with a decision id. A dependency that stalls until the deadline itself
// would leave Envoy to give up first, at its authz_timeout, and answer
// the agent with a bare 403 of its own, while the audit log describes an
// answer nobody got.
const minDependencyMargin = 100 * time.Millisecond

// dependencyContext returns the context of a Check's calls to its
// dependencies: ctx, ending the margin above before ctx's deadline when it
// has one. A deadline too near to leave any time fails those calls at once,
// and the Check closed.
func dependencyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return ctx, func() {}
	}
	left := time.Until(deadline)
	margin := min(max(minDependencyMargin, left/5), left/2)
	return context.WithDeadline(ctx, deadline.Add(-max(margin, 0)))
}

// call is the state of one Check.
type call struct {
	s     *Server
	ctx   context.Context
	start time.Time
	id    string
	// spareTraceID is the trace id of a decision that is in no trace
	// when spans are not recorded.
	spareTraceID string
	// depCtx is ctx for calls to dependencies (see dependencyContext).
	depCtx context.Context

	headers  headers
	method   string // the request's HTTP method
	token    tokens.Token
	set      *policy.Set
	role     *policy.Role
	body     []byte
	messages []mcpfilter.Message
	errID    json.RawMessage // the request's id, when the body did not parse but its id is known
	// took is how long the decision took, once decided is set.
	took    time.Duration
	decided bool
	version string // MCP protocol version of the request, if known
}

// newIDs returns a random decision id and a random trace id, both of 128
// bits in hex, from one read of the random source into one allocation:
// this runs on every request.
func newIDs() (decisionID, traceID string) {
	var b [32]byte
	rand.Read(b[:])
	h := make([]byte, hex.EncodedLen(len(b)))
	hex.Encode(h, b[:])
	s := unsafe.String(unsafe.SliceData(h), len(h)) // h is never written again
	return s[:32], s[32:]
}

func (c *call) check(req *authv3.CheckRequest) *authv3.CheckResponse {
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	if httpReq == nil {
		return c.reject(400, CodeMalformedRequest, "not an HTTP request")
	}
	c.headers, c.method = newHeaders(httpReq), httpReq.GetMethod()
	h := c.headers
	if resp := c.authenticate(h); resp != nil {
		return resp
	}
	// As every header check, after the token: the refusal's record then
	// names the agent, and a request without a valid token is refused
	// whatever its origin. Before the method, so that the stream and the
	// end of a session are checked too.
	if resp := c.checkOrigin(h, httpReq.GetHost()); resp != nil {
		return resp
	}
	switch httpReq.GetMethod() {
	case "POST":
	case "GET", "DELETE":
		// The server-to-client stream and session end carry no body to
		// decide on; the agent is authenticated, which is what they need.
		return c.allowWithoutBody(httpReq.GetMethod())
	default:
		return c.reject(405, CodeMethodNotAllowed, "HTTP method "+quote(httpReq.GetMethod())+" is not allowed")
	}
	c.body = httpReq.GetRawBody()
	if len(c.body) == 0 {
		c.body = []byte(httpReq.GetBody())
	}
	if resp := c.checkWhole(h); resp != nil {
		return resp
	}
	if resp := c.parse(h); resp != nil {
		return resp
	}
	return c.decide()
}

// authenticate resolves the bearer token; only the token decides who the
// agent is and which role it has.
func (c *call) authenticate(h headers) *authv3.CheckResponse {
	scheme, secret, ok := strings.Cut(h.get("authorization"), " ")
	if h.get("authorization") == "" {
		return c.unauthenticated(CodeUnauthenticated, "missing bearer token", "")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return c.unauthenticated(CodeUnauthenticated, "authorization header is not a bearer token", "invalid_request")
	}
	tok, err := c.s.deps.Tokens.Authenticate(c.depCtx, secret)
	switch {
	case err == nil:
		c.token = tok
		return nil
	case errors.Is(err, tokens.ErrMalformed), errors.Is(err, tokens.ErrUnknown):
		return c.unauthenticated(CodeTokenInvalid, "token is not valid", "invalid_token")
	// The store knows an expired or revoked token: the refusal is
	// recorded under its agent, role and ID.
	case errors.Is(err, tokens.ErrExpired):
		c.token = tok
		return c.unauthenticated(CodeTokenExpired, "token has expired", "invalid_token")
	case errors.Is(err, tokens.ErrRevoked):
		c.token = tok
		return c.unauthenticated(CodeTokenRevoked, "token has been revoked", "invalid_token")
	default:
		c.s.log.Error("token store failed", "decision_id", c.id, "err", err)
		return c.failClosed(CodeTokenStoreError, "token store unavailable")
	}
}

// checkWhole refuses a body that is not all the agent sent, which must
// never be decided on: one Envoy marks partial, one longer than the limit
// (Envoy sends a body over the limit cut a byte past it, but marks it
// partial only when it holds more than it sends), and one whose
// Content-Length, when the agent sent one, says otherwise.
func (c *call) checkWhole(h headers) *authv3.CheckResponse {
	if h.get("x-envoy-auth-partial-body") == "true" || len(c.body) > c.s.maxBody {
		return c.tooLarge()
	}
	cl, ok := h.lookup("content-length")
	if !ok {
		return nil
	}
	n, err := strconv.ParseUint(cl, 10, 63)
	switch {
	case err != nil:
		return c.reject(400, CodeMalformedRequest, "Content-Length "+quote(cl)+" is not a number of bytes")
	case n > uint64(c.s.maxBody):
		return c.tooLarge()
	case n != uint64(len(c.body)):
		return c.reject(400, CodeMalformedRequest, fmt.Sprintf("request body is %d bytes, not the %d its Content-Length says", len(c.body), n))
	}
	return nil
}

func (c *call) tooLarge() *authv3.CheckResponse {
	return c.reject(413, CodeBodyTooLarge, fmt.Sprintf("request body is larger than the gateway accepts (%d bytes)", c.s.maxBody))
}

// parse checks the protocol version and parses the body strictly.
func (c *call) parse(h headers) *authv3.CheckResponse {
	c.version = h.get("mcp-protocol-version")
	if c.version != "" && !supportedVersion(c.version) {
		return c.reject(400, CodeUnsupportedVersion, "unsupported MCP protocol version "+quote(c.version))
	}
	// The body is this call's own: nothing writes to it after Check
	// returns, so decoded strings may share it.
	body, err := mcpfilter.Parse(c.body, &mcpfilter.Options{MaxBytes: c.s.maxBody, AllowBatch: BatchesAllowed(c.version), ImmutableBody: true})
	if err != nil {
		var perr *mcpfilter.Error
		code, rpcCode := CodeMalformedRequest, mcpfilter.CodeInvalidRequest
		if errors.As(err, &perr) {
			rpcCode, c.errID = perr.JSONRPCCode(), perr.ID
			if perr.Reason == mcpfilter.ReasonTooLarge {
				code = CodeBodyTooLarge
			}
		}
		return c.rejectRPC(400, code, rpcCode, err.Error())
	}
	c.messages = body.Messages
	for i := range c.messages {
		if resp := c.checkKind(&c.messages[i]); resp != nil {
			return resp
		}
		// A batch without the header is of 2025-03-26 unless a message's
		// _meta says otherwise, and no later version has batches.
		if v := c.messages[i].MetaProtocolVersion; body.Batch && v != "" && !BatchesAllowed(v) {
			return c.rejectRPC(400, CodeMalformedRequest, mcpfilter.CodeInvalidRequest, "JSON-RPC batches are not allowed in protocol "+quote(v)+", which a message's _meta names")
		}
	}
	if len(c.messages) == 1 {
		if resp := c.checkMCPHeaders(h, &c.messages[0]); resp != nil {
			return resp
		}
	} else if h.get("mcp-method") != "" || h.get("mcp-name") != "" {
		return c.reject(400, CodeHeaderMismatch, "Mcp-Method and Mcp-Name headers cannot describe a batch")
	}
	return nil
}

// checkKind refuses a message whose id does not fit its method: MCP sends
// only notifications/* without an id. A call without one could never be
// answered, nor parked for a human and then run.
func (c *call) checkKind(m *mcpfilter.Message) *authv3.CheckResponse {
	if m.Kind == mcpfilter.KindResponse {
		return nil
	}
	switch notification := strings.HasPrefix(m.Method, "notifications/"); {
	case notification && m.Kind == mcpfilter.KindRequest:
		if len(c.messages) == 1 {
			c.errID = m.ID
		}
		return c.rejectRPC(400, CodeMalformedRequest, mcpfilter.CodeInvalidRequest, quote(m.Method)+" is a notification and takes no id")
	case !notification && m.Kind == mcpfilter.KindNotification:
		return c.rejectRPC(400, CodeMalformedRequest, mcpfilter.CodeInvalidRequest, quote(m.Method)+" is a request and needs an id")
	}
	return nil
}

// checkMCPHeaders enforces that Mcp-Method and Mcp-Name, which let
// intermediaries route without parsing, say what the body says. They are
// required from protocol 2026-07-28 on; when an older client sends them
// they must agree too, since something downstream might route on them.
func (c *call) checkMCPHeaders(h headers, m *mcpfilter.Message) *authv3.CheckResponse {
	version := c.version
	if m.MetaProtocolVersion != "" {
		if !supportedVersion(m.MetaProtocolVersion) {
			return c.reject(400, CodeUnsupportedVersion, "unsupported MCP protocol version "+quote(m.MetaProtocolVersion))
		}
		if version != "" && version != m.MetaProtocolVersion {
			return c.reject(400, CodeHeaderMismatch, "MCP-Protocol-Version header disagrees with the request's _meta protocol version")
		}
		version = m.MetaProtocolVersion
	}
	method, hasMethod := h.lookup("mcp-method")
	name, hasName := h.lookup("mcp-name")
	wantName := m.Name
	if strings.HasPrefix(m.Method, "resources/") {
		wantName = m.URI
	}
	if version >= headerVersion && m.Kind != mcpfilter.KindResponse {
		if !hasMethod {
			return c.reject(400, CodeHeaderMismatch, "Mcp-Method header is required from protocol "+headerVersion)
		}
		if namedByHeader(m.Method) && !hasName {
			return c.reject(400, CodeHeaderMismatch, "Mcp-Name header is required for "+m.Method+" from protocol "+headerVersion)
		}
	}
	if hasMethod && method != m.Method {
		return c.reject(400, CodeHeaderMismatch, "Mcp-Method header "+quote(method)+" does not match the body's method "+quote(m.Method))
	}
	if hasName && name != wantName {
		return c.reject(400, CodeHeaderMismatch, "Mcp-Name header does not match the body")
	}
	return nil
}

// namedByHeader reports whether the protocol requires the Mcp-Name header
// of method: of the tool, prompt or resource a request names. Other
// requests that name one (a completion's reference) need not send it.
func namedByHeader(method string) bool {
	switch method {
	case "tools/call", "prompts/get", "resources/read":
		return true
	}
	return false
}

// Protocol versions.
const (
	batchVersion  = "2025-03-26" // the only version with JSON-RPC batches
	headerVersion = "2026-07-28" // the first with required Mcp-Method/Mcp-Name
)

var supportedVersions = []string{"2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"}

// ProtocolVersions are the MCP protocol versions authz accepts, oldest
// first. What serves agents behind it must negotiate no other: an agent
// granted one at initialize would have every later request refused.
func ProtocolVersions() []string { return slices.Clone(supportedVersions) }

// BatchesAllowed reports whether requests under protocol version, as
// their MCP-Protocol-Version header names it, may be JSON-RPC batches:
// what authz parses a body under, and what serves it behind authz must
// parse it the same way. A request without the header is of 2025-03-26,
// which defines none, as the protocol and the go-sdk's server take it.
func BatchesAllowed(version string) bool { return version == "" || version == batchVersion }

func supportedVersion(v string) bool { return slices.Contains(supportedVersions, v) }

// quote quotes what an agent sent for a reason it reads.
func quote(s string) string { return mcpfilter.Quote(s, 128) }

// bodyHash is the SHA-256 a decision token binds.
func bodyHash(body []byte) [32]byte { return sha256.Sum256(body) }

// record fills the fields every audit record of this call shares.
func (c *call) record(verdict, code, reason string) *audit.Record {
	rec := &audit.Record{
		Time:       c.start,
		DecisionID: c.id,
		Agent:      c.token.Agent,
		Role:       c.token.Role,
		TokenID:    c.token.ID,
		Verdict:    verdict,
		Code:       code,
		Reason:     reason,
	}
	took := c.took
	if !c.decided {
		took = c.s.now().Sub(c.start)
	}
	rec.LatencyMicros = took.Microseconds()
	if c.set != nil {
		rec.PolicyVersion = c.set.VersionString()
	}
	return rec
}

// decision verdicts as they appear in headers and audit records.
var (
	verdictAllow         = decision.Allow.String()
	verdictDeny          = decision.Deny.String()
	verdictNeedsApproval = decision.NeedsApproval.String()
)
