// Package front is the standalone stand-in for Envoy. For each agent
// request it does what Envoy's ext_authz filter does with AMG's
// configuration — strip x-amg-* headers, buffer the body, send the same
// CheckRequest, then either answer with the denial or forward the request
// with the headers authz set — and nothing else. It has no policy logic of
// its own, so standalone and Envoy mode decide alike.
package front

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/mcpfilter"
)

// Checker is the ext_authz service: authz.Server in-process, or a gRPC
// client of it.
type Checker interface {
	Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)
}

// Auditor records the requests the front refuses itself; its error is
// logged, since the request is refused either way.
type Auditor interface {
	Log(rec *audit.Record) error
}

// CodeHostNotAllowed is the audit code of a request refused for its Host
// header.
const CodeHostNotAllowed = "host_not_allowed"

// Options tune a Front; nil means defaults.
type Options struct {
	// MaxBodyBytes is the largest body buffered for the check, as Envoy's
	// with_request_body.max_request_bytes; 0 means mcpfilter.DefaultMaxBytes.
	// A larger body is checked cut to this size and marked partial, as
	// Envoy does with allow_partial_message: authz refuses it (413).
	// Envoy's is a byte more than max_body_bytes, and it may mark a body
	// cut there whole; authz refuses any body over max_body_bytes, so a
	// front given max_body_bytes reaches the same verdicts.
	MaxBodyBytes int
	// Hosts, when set, are the only host names the Host header may name;
	// others are refused (403) before anything else happens. A front on
	// loopback allows only loopback names (see hostguard). The Origin
	// header is authz's to check, as it is behind Envoy.
	Hosts hostguard.Hosts
	// Audit records the requests refused for their Host; nil records
	// none.
	Audit Auditor
	// Logger receives check failures; nil discards them.
	Logger *slog.Logger
}

// Front is an http.Handler for the agent-facing MCP endpoint.
type Front struct {
	check   Checker
	next    http.Handler
	maxBody int
	hosts   hostguard.Hosts
	audit   Auditor
	log     *slog.Logger
}

// New returns a Front that asks check about every request and hands the
// allowed ones to next (the broker).
func New(check Checker, next http.Handler, opts *Options) *Front {
	f := &Front{check: check, next: next, maxBody: mcpfilter.DefaultMaxBytes, log: slog.New(slog.DiscardHandler)}
	if opts != nil {
		if opts.MaxBodyBytes > 0 {
			f.maxBody = opts.MaxBodyBytes
		}
		if opts.Logger != nil {
			f.log = opts.Logger
		}
		f.hosts, f.audit = opts.Hosts, opts.Audit
	}
	return f
}

const amgHeaderPrefix = "x-amg-"

func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The Host alone: the Origin is authz's to check, against the
	// configured origins, in both modes alike.
	if !f.hosts.AllowedHost(r.Host) {
		f.refuseHost(w, r)
		return
	}
	// Envoy's route configuration removes these before ext_authz runs;
	// only what authz sets may reach the broker.
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), amgHeaderPrefix) {
			r.Header.Del(k)
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(f.maxBody)+1))
	if err != nil {
		http.Error(w, "cannot read request body", http.StatusBadRequest)
		return
	}
	// As Envoy with allow_partial_message, a body over the limit is
	// checked as what fits, marked partial, and authz refuses it with an
	// error the agent can read, and audits it.
	partial := len(body) > f.maxBody
	req := CheckRequest(r, body[:min(len(body), f.maxBody)])
	if partial {
		req.GetAttributes().GetRequest().GetHttp().GetHeaders()[HeaderPartialBody] = "true"
	}
	resp, err := f.check.Check(r.Context(), req)
	if err != nil {
		// Envoy with failure_mode_allow false answers 403 when the
		// authorization service cannot be reached.
		f.log.Error("ext_authz check failed", "err", err)
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	if resp == nil {
		// Not an answer Envoy can get over gRPC: a failed check.
		f.log.Error("ext_authz check returned no response")
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	// Envoy decides on the response's gRPC status alone: OK lets the
	// request through, anything else denies it (with the denied response,
	// if any). The front is stricter, as it serves agents itself: it lets
	// through only an OK status with an OK response, the only allow authz
	// answers, and denies an answer whose parts disagree, which authz
	// never sends (its tests hold every denial to a status other than OK,
	// so such an answer cannot pass through Envoy unseen either).
	if resp.GetStatus().GetCode() != int32(code.Code_OK) || resp.GetOkResponse() == nil {
		writeDenied(w, resp.GetDeniedResponse())
		return
	}
	applyOK(r.Header, resp.GetOkResponse())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	f.next.ServeHTTP(w, r)
}

// refuseHost answers 403 to a request for a host the front does not
// serve, and records it: it never reaches authz, which would.
func (f *Front) refuseHost(w http.ResponseWriter, r *http.Request) {
	id := newID()
	if f.audit != nil {
		rec := &audit.Record{Time: time.Now(), DecisionID: id, Verdict: "deny", Code: CodeHostNotAllowed,
			Reason: "Host " + mcpfilter.Quote(r.Host, 128) + " is not allowed", Method: "HTTP " + truncate(r.Method)}
		if err := f.audit.Log(rec); err != nil {
			f.log.Error("audit failed while refusing a host", "decision_id", id, "err", err)
		}
	}
	http.Error(w, "host not allowed (decision "+id+")", http.StatusForbidden)
}

// newID is a random decision id, as authz's: 128 bits in hex.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// truncate bounds the HTTP method a record names (a token, so ASCII).
func truncate(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// HeaderPartialBody is the header Envoy's ext_authz filter adds to a
// check with the request body: "true" when the body was cut at the
// filter's limit.
const HeaderPartialBody = "x-envoy-auth-partial-body"

// CheckRequest builds the CheckRequest Envoy sends for r with
// with_request_body and pack_as_bytes: header names lower-case, repeated
// headers joined with ",", the pseudo-headers included, the body in
// raw_body.
func CheckRequest(r *http.Request, body []byte) *authv3.CheckRequest {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	h := make(map[string]string, len(r.Header)+4)
	for k, vs := range r.Header {
		h[strings.ToLower(k)] = strings.Join(vs, ",")
	}
	h[":method"], h[":path"], h[":authority"], h[":scheme"] = r.Method, r.URL.RequestURI(), r.Host, scheme
	h[HeaderPartialBody] = "false" // Envoy's, whatever the agent sent
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: peer(r.RemoteAddr),
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method:   r.Method,
			Path:     r.URL.RequestURI(),
			Host:     r.Host,
			Scheme:   scheme,
			Protocol: r.Proto,
			Headers:  h,
			Size:     int64(len(body)),
			RawBody:  body,
		}},
	}}
}

func peer(addr string) *authv3.AttributeContext_Peer {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}},
	}}}
}

// writeDenied sends the denial authz composed, as Envoy does: its status
// (403 when it has none), headers and body; a denial without a denied
// response is a bare 403.
func writeDenied(w http.ResponseWriter, d *authv3.DeniedHttpResponse) {
	status := int(d.GetStatus().GetCode())
	if status == 0 {
		status = http.StatusForbidden
	}
	for _, o := range d.GetHeaders() {
		setHeader(w.Header(), o)
	}
	w.WriteHeader(status)
	io.WriteString(w, d.GetBody())
}

// applyOK edits the request headers as Envoy does with an OK response.
func applyOK(h http.Header, ok *authv3.OkHttpResponse) {
	for _, k := range ok.GetHeadersToRemove() {
		h.Del(k)
	}
	for _, o := range ok.GetHeaders() {
		setHeader(h, o)
	}
}

func setHeader(h http.Header, o *corev3.HeaderValueOption) {
	k, v := o.GetHeader().GetKey(), o.GetHeader().GetValue()
	if len(o.GetHeader().GetRawValue()) > 0 {
		v = string(o.GetHeader().GetRawValue())
	}
	switch o.GetAppendAction() {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		h.Add(k, v)
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		if h.Get(k) == "" {
			h.Set(k, v)
		}
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		if h.Get(k) != "" {
			h.Set(k, v)
		}
	default:
		h.Set(k, v)
	}
}
