package broker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/mcpfilter"
)

// The direct path forwards a tools/call to an upstream reached over
// Streamable HTTP without decoding it into the SDK's types and encoding it
// again on either side: the agent's bytes go upstream with only the id and
// the tool name replaced, and the upstream's answer comes back with only
// the id replaced. What the upstream sends during the call (progress, log
// messages, sampling and elicitation requests) is passed through on the
// call's stream; the agent's answers and cancellations are passed back.
//
// It serves calls on the agent session's upstream sessions, which the SDK's
// client opens and keeps, and leaves everything else to the SDK path:
// stdio and in-memory upstreams, tools whose schema binds arguments to
// HTTP headers, an upstream that cannot be reached or forgot the session.

// directUpstream is what the broker needs to speak to an agent's upstream
// session over HTTP itself.
type directUpstream struct {
	client   *http.Client
	endpoint string
	session  string // Mcp-Session-Id; empty for a stateless server
	version  string // the negotiated protocol version
	// lingerUntil is set, as nanoseconds of lingerClock, when a call's
	// stream went on past its response for longer than restWait: until
	// then, the session's streams are not read to their end.
	lingerUntil atomic.Int64
}

func newDirectUpstream(t mcp.Transport, cs *mcp.ClientSession) *directUpstream {
	st, ok := t.(*mcp.StreamableClientTransport)
	if !ok {
		return nil
	}
	client := st.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	return &directUpstream{client: client, endpoint: st.Endpoint, session: cs.ID(), version: cs.InitializeResult().ProtocolVersion}
}

// headersFrom is the first protocol version whose requests carry
// Mcp-Method and Mcp-Name headers.
const headersFrom = "2026-07-28"

// post sends one message of the session; method and name are the request's
// (empty for a response).
func (d *directUpstream) post(ctx context.Context, body []byte, method, name string) (*http.Response, error) {
	req, err := d.request(ctx, http.MethodPost, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if d.version >= headersFrom && method != "" {
		req.Header.Set("Mcp-Method", method)
		if name != "" {
			req.Header.Set("Mcp-Name", name)
		}
	}
	return d.client.Do(req)
}

// request is an HTTP request of the session.
func (d *directUpstream) request(ctx context.Context, method string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.endpoint, body)
	if err != nil {
		return nil, err
	}
	if d.session != "" {
		req.Header.Set("Mcp-Session-Id", d.session)
	}
	if d.version != "" {
		req.Header.Set("Mcp-Protocol-Version", d.version)
	}
	return req, nil
}

// resume asks for the rest of an event stream the upstream ended, after
// its event lastID (SSE polling, protocol 2025-11-25).
func (d *directUpstream) resume(ctx context.Context, lastID string) (*http.Response, error) {
	req, err := d.request(ctx, http.MethodGet, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", lastID)
	return d.client.Do(req)
}

// answerNoRoots answers the upstream's roots/list request id with an
// empty list.
func (d *directUpstream) answerNoRoots(ctx context.Context, id []byte) {
	body := append(append([]byte(`{"jsonrpc":"2.0","id":`), id...), `,"result":{"roots":[]}}`...)
	if resp, err := d.post(ctx, body, "", ""); err == nil {
		resp.Body.Close()
	}
}

// directCall is a tools/call in flight on the direct path.
type directCall struct {
	server  string
	agentID string // the id the agent sent
	upID    string // the id the upstream sees
	up      *directUpstream
	cancel  context.CancelFunc
	// rest is set when the rest of the call's stream is being read after
	// its response (readRest), which then ends the call's request.
	rest bool
}

// relayedRequest is an upstream's request relayed to the agent during a
// direct call, awaiting the agent's answer.
type relayedRequest struct {
	id     []byte // the upstream's own id
	up     *directUpstream
	server string
	stream *sseStream // the call's, on which the agent heard the request
}

// maxUpstreamMessage bounds one message from an upstream over Streamable
// HTTP, on the direct path and through the SDK's client (see tap). It is
// a variable for tests.
var maxUpstreamMessage = 64 << 20

// tooLarge is the error of an upstream answer over maxUpstreamMessage.
func tooLarge() error {
	return fmt.Errorf("its answer is larger than the gateway takes (%d MiB)", maxUpstreamMessage>>20)
}

// upstreamParse is how the direct path reads an upstream's messages: any
// well-formed JSON-RPC, however large or deep a result.
var upstreamParse = &mcpfilter.Options{MaxBytes: maxUpstreamMessage, MaxDepth: 10000}

// serveDirect serves body, which decision d allows, on the direct path if
// it can, and reports whether it did; if not, nothing has been written to
// w. A request under the id of a call the broker serves itself is refused
// here (see idInUse), whichever path it would take.
func (b *Broker) serveDirect(w http.ResponseWriter, r *http.Request, as *agentSession, d authz.Decision, body []byte) bool {
	if r.Method != http.MethodPost {
		return false
	}
	// authz decided on these arguments, and the decision token binds the
	// body: routing needs only the envelope.
	parsed, err := mcpfilter.Parse(body, &mcpfilter.Options{MaxBytes: b.maxBody, SkipArgs: true})
	if err != nil || len(parsed.Messages) != 1 {
		return false
	}
	m := &parsed.Messages[0]
	switch {
	case m.Kind == mcpfilter.KindRequest && b.idInUse(w, as, d, m.ID):
		return true
	case m.Kind == mcpfilter.KindRequest && m.Method == "tools/call":
		return b.directCall(&sseStream{w: w}, r, as, body, m)
	case m.Kind == mcpfilter.KindResponse:
		return b.directAnswer(w, r, as, body, m)
	case m.Kind == mcpfilter.KindNotification && m.Method == "notifications/cancelled":
		return b.directCancel(w, r, as, d, m)
	}
	return false
}

// idInUse refuses, and audits, a request of an agent session under the
// id of one of the session's calls on the direct path or parked for
// approval, as the SDK refuses one under the id of a request it serves:
// JSON-RPC ids are unique among a session's requests in flight, and a
// cancellation names its call by id. It reports whether it refused. The
// requests of a token's state come from clients that cannot know each
// other's ids, and are not refused.
func (b *Broker) idInUse(w http.ResponseWriter, as *agentSession, d authz.Decision, id json.RawMessage) bool {
	if as.ss == nil {
		return false
	}
	as.mu.Lock()
	held := as.holds(string(id))
	as.mu.Unlock()
	if !held {
		return false
	}
	why := fmt.Sprintf("request id %s is that of a call of this session still in flight or waiting for approval: use another id", id)
	b.record(d, CodeRequestIDInUse, why)
	writeRPCError(w, http.StatusBadRequest, id, mcpfilter.CodeInvalidRequest, why)
	return true
}

// directUpstreamFor returns the agent session's direct connection to the
// upstream of a tool the role may call, opening its upstream session if it
// has none yet; nil if there is none to be had. err is why the session
// could not be opened: the call's answer, which the SDK path would only
// have after trying again.
func (b *Broker) directUpstreamFor(ctx context.Context, as *agentSession, role, agentName string) (server, tool string, d *directUpstream, err error) {
	server, tool, err = b.ns.Split(agentName)
	if err != nil {
		return "", "", nil, nil
	}
	b.mu.Lock()
	rs := b.roles[role]
	registered := rs != nil && rs.tools[agentName] != nil
	b.mu.Unlock()
	if !registered || b.ups[server].bindsHeaders(tool) {
		return "", "", nil, nil
	}
	as.mu.Lock()
	d, opened := as.direct[server], as.ups[server] != nil
	as.mu.Unlock()
	if d == nil && !opened {
		if _, _, err := b.upstreamSession(ctx, as.ss, b.ups[server]); err != nil {
			return server, tool, nil, err
		}
		as.mu.Lock()
		d = as.direct[server]
		as.mu.Unlock()
	}
	return server, tool, d, nil
}

// directCall sends the call body upstream on the direct path, if it can,
// and answers the agent on stream; it reports whether it did. If not,
// nothing has been sent upstream or to the agent.
func (b *Broker) directCall(stream *sseStream, r *http.Request, as *agentSession, body []byte, m *mcpfilter.Message) bool {
	begin := time.Now()
	server, tool, d, err := b.directUpstreamFor(r.Context(), as, r.Header.Get(authz.HeaderRole), m.Name)
	if err != nil {
		b.finishDirect(stream, r, m, server, tool, begin, err)
		return true
	}
	if d == nil {
		return false
	}
	if b.cut.Err() != nil {
		b.finishDirect(stream, r, m, server, tool, begin, errShuttingDown)
		return true
	}
	u := b.ups[server]
	upID := `"amg-` + strconv.FormatUint(b.ids.Add(1), 10) + `"`
	name, _ := json.Marshal(tool)
	out := splice(body, edit{m.IDSpan, []byte(upID)}, edit{m.NameSpan, name}, upstreamMetaEdit(body, m))

	// An agent whose connection drops has not cancelled the call (the
	// protocol says so): the call goes on until the upstream answers, the
	// timeout, or the agent's notifications/cancelled.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), u.CallTimeout)
	defer context.AfterFunc(b.cut, cancel)()
	call := &directCall{server: server, agentID: string(m.ID), upID: upID, up: d, cancel: cancel}
	defer func() {
		if !call.rest {
			cancel()
		}
	}()
	as.mu.Lock()
	as.directCalls[upID] = call
	as.mu.Unlock()
	defer func() {
		as.mu.Lock()
		delete(as.directCalls, upID)
		as.mu.Unlock()
	}()
	// An agent without a session that goes away before its answer has
	// cancelled the call: its request is the call's whole life. The call's
	// context is not the request's all the same, since what is left of the
	// upstream's stream after the answer is read under it (readRest).
	if as.ss == nil {
		stop := context.AfterFunc(r.Context(), func() {
			if !stream.answered() {
				cancel()
			}
		})
		defer stop()
	}
	// A call that times out, whose agent without a session went away, or
	// that a shutdown cut (Cut), is over for the upstream too: it is told
	// so, as the protocol asks of a requester that stops waiting.
	answered := false
	defer func() {
		var reason string
		switch {
		case answered:
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			reason = "timeout"
		case as.ss == nil && ctx.Err() != nil && r.Context().Err() != nil:
			reason = "the agent closed its request"
		case ctx.Err() != nil && b.cut.Err() != nil:
			reason = "the gateway shut down"
		}
		if reason != "" {
			ctx, cancel := notice(r.Context())
			defer cancel()
			call.cancelUpstream(ctx, reason)
		}
	}()

	start := time.Now()
	resp, err := d.post(ctx, out, "tools/call", tool)
	if err == nil && resp.StatusCode == http.StatusNotFound {
		// The upstream forgot the session (it restarted): drop it, and let
		// the SDK path open a new one for this call.
		resp.Body.Close()
		b.dropDirect(as, server, d)
		return false
	}
	if err != nil {
		if ctx.Err() == nil {
			b.dropDirect(as, server, d)
		}
		b.finishDirect(stream, r, m, server, tool, start, err)
		return true
	}
	defer func() {
		if !call.rest {
			resp.Body.Close()
		}
	}()
	if resp.StatusCode/100 != 2 {
		b.finishDirect(stream, r, m, server, tool, start, fmt.Errorf("HTTP %d", resp.StatusCode))
		return true
	}
	if isEventStream(resp.Header) {
		answered = b.streamDirect(ctx, stream, r, as, call, resp.Body, m, tool, start)
		return true
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(maxUpstreamMessage)+1))
	if err == nil && len(data) > maxUpstreamMessage {
		err = tooLarge()
	}
	if err != nil {
		b.finishDirect(stream, r, m, server, tool, start, err)
		return true
	}
	res, err := mcpfilter.Parse(data, upstreamParse)
	if err != nil || len(res.Messages) != 1 || res.Messages[0].Kind != mcpfilter.KindResponse || string(res.Messages[0].ID) != upID {
		b.finishDirect(stream, r, m, server, tool, start, errors.New("the upstream's answer is not the call's JSON-RPC response"))
		return true
	}
	took := time.Since(start)
	answered = true
	stream.answer(agentAnswer(data, &res.Messages[0], m.ID, server, b.ns))
	b.recordDirect(r, m, server, tool, took, &res.Messages[0])
	return true
}

// agentAnswer is the upstream's response to a call as the agent gets it:
// under the agent's id, and, if it is a JSON-RPC error, with the
// upstream's name before its message, as on the SDK path. A result goes
// back byte for byte, but for the URIs of the resources its content links
// to or embeds, which are those agents read them by in ns (see
// linkedURIEdits).
func agentAnswer(data []byte, resp *mcpfilter.Message, agentID []byte, server string, ns mcpfilter.Namespace) []byte {
	if resp.Error == nil {
		return splice(data, append(linkedURIEdits(data, resp, server, ns), edit{resp.IDSpan, agentID})...)
	}
	e := upstreamRPCError(resp)
	e.Message = fmt.Sprintf("upstream %q: %s", server, e.Message)
	out, _ := json.Marshal(rpcErrorResponse(agentID, e))
	return out
}

// upstreamRPCError is the JSON-RPC error of an upstream's response.
func upstreamRPCError(resp *mcpfilter.Message) *jsonrpc.Error {
	var e jsonrpc.Error
	if err := json.Unmarshal(resp.Error, &e); err != nil {
		e = jsonrpc.Error{Code: RPCUpstreamError, Message: "its error is not a JSON-RPC error object"}
	}
	return &e
}

// linkedURIEdits are the edits that give the resource_link and embedded
// resource blocks of the content of resp, a tool result in data, the URIs
// agents read those resources by in ns, as agentURIs does on the SDK path;
// none with unprefixed names, where agents read them by the upstream's.
// Only an answer that may hold such a block (most hold none) is read for
// them, once: this is every direct call's path. The parser accepted data,
// so it is JSON whose objects have no two keys alike.
func linkedURIEdits(data []byte, resp *mcpfilter.Message, server string, ns mcpfilter.Namespace) []edit {
	if ns.Only != "" || !bytes.Contains(resp.Result, []byte(`"resource`)) {
		return nil
	}
	var edits []edit
	rename := func(uri string, span mcpfilter.Span) {
		if uri != "" {
			with, _ := json.Marshal(ns.JoinURI(server, uri))
			edits = append(edits, edit{span, with})
		}
	}
	w := &jsonWalk{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	err := w.members(func(key string) error {
		if key != "result" {
			return w.skip()
		}
		return w.members(func(key string) error {
			if key != "content" {
				return w.skip()
			}
			return w.elements(func() error {
				var typ, uri, embedded string
				var uriAt, embeddedAt mcpfilter.Span
				err := w.members(func(key string) (err error) {
					switch key {
					case "type":
						typ, _, err = w.str()
					case "uri":
						uri, uriAt, err = w.str()
					case "resource":
						err = w.members(func(key string) (err error) {
							if key != "uri" {
								return w.skip()
							}
							embedded, embeddedAt, err = w.str()
							return err
						})
					default:
						err = w.skip()
					}
					return err
				})
				switch typ {
				case "resource_link":
					rename(uri, uriAt)
				case "resource":
					rename(embedded, embeddedAt)
				}
				return err
			})
		})
	})
	if err != nil {
		return nil // not JSON after all: passed on as it came
	}
	return edits
}

// jsonWalk reads a JSON message value by value, knowing where each is.
type jsonWalk struct {
	data []byte
	dec  *json.Decoder // of data
}

// next is the offset and first byte of the next value, 0 at the end.
func (w *jsonWalk) next() (int, byte) {
	for i := int(w.dec.InputOffset()); i < len(w.data); i++ {
		switch c := w.data[i]; c {
		case ' ', '\t', '\r', '\n', ':', ',':
		default:
			return i, c
		}
	}
	return len(w.data), 0
}

// skip reads the next value.
func (w *jsonWalk) skip() error { return w.dec.Decode(new(json.RawMessage)) }

// members calls f with each key of the next value, for f to read the
// member's value, if it is an object; else it skips it.
func (w *jsonWalk) members(f func(key string) error) error {
	if _, c := w.next(); c != '{' {
		return w.skip()
	}
	return w.each(func() error {
		t, err := w.dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string)
		return f(key)
	})
}

// elements calls f for each element of the next value, for f to read it,
// if it is an array; else it skips it.
func (w *jsonWalk) elements(f func() error) error {
	if _, c := w.next(); c != '[' {
		return w.skip()
	}
	return w.each(f)
}

// each reads the delimiters of an object or array around calls of f for
// its members or elements.
func (w *jsonWalk) each(f func() error) error {
	if _, err := w.dec.Token(); err != nil {
		return err
	}
	for w.dec.More() {
		if err := f(); err != nil {
			return err
		}
	}
	_, err := w.dec.Token()
	return err
}

// str reads the next value, and returns it and where it is if it is a
// string; "" if not.
func (w *jsonWalk) str() (string, mcpfilter.Span, error) {
	at, c := w.next()
	if c != '"' {
		return "", mcpfilter.Span{}, w.skip()
	}
	var s string
	err := w.dec.Decode(&s)
	return s, mcpfilter.Span{Start: at, End: int(w.dec.InputOffset())}, err
}

// noticeTimeout bounds passing an upstream a message on the side of a
// call: a notification the broker makes itself, the agent's answer to a
// relayed request or its cancellation of a call. It is a variable for
// tests.
var noticeTimeout = 5 * time.Second

// notice returns the context to pass an upstream such a message in: with
// ctx's values, not its end, which may be the agent's going away, and
// within noticeTimeout.
func notice(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), noticeTimeout)
}

// cancelUpstream tells the upstream the call is cancelled, for reason.
func (c *directCall) cancelUpstream(ctx context.Context, reason string) {
	note, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "notifications/cancelled",
		"params": cancelledParams{RequestID: json.RawMessage(c.upID), Reason: reason}})
	if resp, err := c.up.post(ctx, note, "notifications/cancelled", ""); err == nil {
		resp.Body.Close()
	}
}

// cancelledParams are the params of notifications/cancelled.
type cancelledParams struct {
	RequestID json.RawMessage `json:"requestId"`
	Reason    string          `json:"reason,omitempty"`
}

// directNotification passes on a notification an upstream sent on a
// direct call's stream as the other path does (relayNotification): the
// call's progress on its stream, log messages at the level the agent set,
// a resource update to the role's sessions subscribed to it, under the
// URI agents see, a cancellation to the request it cancels, the end of a
// URL-mode elicitation to an agent that declared it. List changes are the
// catalogue session's; the rest stays with the broker.
func (b *Broker) directNotification(as *agentSession, server string, m *mcpfilter.Message, data []byte, send func([]byte)) {
	switch m.Method {
	case "notifications/progress":
		send(data)
	case "notifications/message":
		if as.wantsLog(m.Params) {
			send(data)
		}
	case "notifications/elicitation/complete":
		if urlElicitation(as.ss) {
			send(data)
		}
	case "notifications/cancelled", "notifications/resources/updated":
		b.relayNotification(as, server, &jsonrpc.Request{Method: m.Method, Params: m.Params})
	}
}

// writeJSON answers with one JSON-RPC message and sends it at once: what
// the handler does after, such as recording the call, is not the agent's
// wait.
func writeJSON(w http.ResponseWriter, msg []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(http.StatusOK)
	w.Write(msg)
	flush(w)
}

// flush sends what w holds to the agent now.
func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// streamDirect passes the upstream's event stream for a call to the agent,
// event by event, until the call's response, and reports whether that
// came. ctx is the call's.
func (b *Broker) streamDirect(ctx context.Context, stream *sseStream, r *http.Request, as *agentSession, call *directCall, body io.ReadCloser,
	sent *mcpfilter.Message, tool string, start time.Time) bool {
	d, upID, server := call.up, call.upID, call.server
	send := stream.send
	var done bool
	// What the upstream asked of the agent during the call cannot be
	// answered once the call is over, nor cancelled on its stream.
	var relayed []string
	defer func() {
		as.mu.Lock()
		for _, id := range relayed {
			delete(as.relayed, id)
		}
		as.mu.Unlock()
		stream.close()
	}()
	// The call's response must be seen whole, however large.
	events := &sseReader{body: body, max: maxUpstreamMessage, event: func(data []byte) {
		if done {
			return
		}
		msg, err := mcpfilter.Parse(data, upstreamParse)
		if err != nil || len(msg.Messages) != 1 {
			return // not a JSON-RPC message: nothing an agent could use
		}
		m := &msg.Messages[0]
		switch m.Kind {
		case mcpfilter.KindNotification:
			b.directNotification(as, server, m, data, send)
		case mcpfilter.KindRequest:
			if m.Method == "roots/list" {
				// Not offered (see noRoots), but asked anyway: answered
				// with none, as the SDK's client does on the other path,
				// within the call and without holding up its stream.
				go d.answerNoRoots(ctx, bytes.Clone(m.ID))
				return
			}
			if as.ss == nil {
				// An agent without a session cannot be asked: the upstream
				// is refused, within noticeTimeout and without holding up
				// the call's stream or its timeout.
				go func(id []byte, method string) {
					ctx, cancel := notice(ctx)
					defer cancel()
					d.refuseRequest(ctx, id, method)
				}(bytes.Clone(m.ID), m.Method)
				return
			}
			// Relayed under an id of the broker's, so that it cannot clash
			// with the ids of the agent session's other requests.
			id := `"amg-s-` + strconv.FormatUint(b.ids.Add(1), 10) + `"`
			as.mu.Lock()
			as.relayed[id] = relayedRequest{id: bytes.Clone(m.ID), up: d, server: server, stream: stream}
			as.mu.Unlock()
			relayed = append(relayed, id)
			send(splice(data, edit{m.IDSpan, []byte(id)}))
		case mcpfilter.KindResponse:
			if string(m.ID) == upID {
				done = true
				took := time.Since(start)
				stream.answer(agentAnswer(data, m, sent.ID, server, b.ns))
				b.recordDirect(r, sent, server, tool, took, m)
			}
		}
	}}
	defer func() {
		if done && events.err == nil && !d.lingering() {
			call.rest = true
			go d.readRest(events.body, call.cancel)
			return
		}
		events.body.Close()
	}()
	// The events are handled as they are read; what Read returns is
	// only their bytes again.
	var buf [4096]byte
	var from string  // the event id the stream was last resumed after
	tries := 0       // attempts to resume it since it last got further
	var failed error // why the last attempt failed, if it did
	for !done {
		_, err := events.Read(buf[:])
		if err == nil {
			continue
		}
		err = fmt.Errorf("stream ended before the result: %w", err)
		if events.skipped {
			err = tooLarge()
		} else if events.lastID != "" && ctx.Err() == nil {
			// An upstream may end a call's stream before the result and
			// let the client resume it after the last event id it sent
			// (SSE polling, protocol 2025-11-25); the call goes on
			// upstream meanwhile.
			if events.lastID != from {
				from, tries = events.lastID, 0
			}
			if tries < maxResumes {
				tries++
				next, again, rerr := d.resumeStream(ctx, from, events.retry)
				if failed = rerr; rerr == nil {
					events.body.Close()
					events = &sseReader{body: next, max: events.max, event: events.event, id: events.id, lastID: from, retry: events.retry}
					continue
				}
				if again {
					continue // the stream's read fails again, and so comes back here
				}
				err = fmt.Errorf("%w; resuming it: %w", err, rerr)
			} else if err = fmt.Errorf("%w; %d attempts to resume it got no further", err, maxResumes); failed != nil {
				err = fmt.Errorf("%w, the last: %w", err, failed)
			}
		}
		if ctx.Err() == nil {
			// The call may still run upstream: it is over, and the
			// upstream is told so before the agent, who may call again.
			ctx, cancel := notice(ctx)
			call.cancelUpstream(ctx, "the call's stream ended before its result")
			cancel()
		}
		b.finishDirect(stream, r, sent, server, tool, start, err)
		return false
	}
	return true
}

// restWait bounds the wait for the end of a call's stream once its
// response is in; restMax, what is read of it meanwhile.
const (
	restWait = 50 * time.Millisecond
	restMax  = 64 << 10
)

// lingerFor is how long a session whose upstream kept a stream open past
// restWait (or wrote restMax more) has its streams closed at once, before
// they are waited for again. A moment of load can keep the broker from
// reading a stream's end in time, and that should not cost the session
// its connection reuse for the rest of its life; an upstream that always
// keeps its streams open costs one wait of restWait per lingerFor.
var lingerFor = 30 * time.Second

// lingerClock is the monotonic origin of lingerUntil.
var lingerClock = time.Now()

// linger marks the session's upstream as keeping its streams open, for
// lingerFor from now.
func (d *directUpstream) linger() {
	d.lingerUntil.Store(int64(time.Since(lingerClock) + lingerFor))
}

// lingering reports whether the session's streams are closed at once
// rather than read to their end (see linger).
func (d *directUpstream) lingering() bool {
	return int64(time.Since(lingerClock)) < d.lingerUntil.Load()
}

// readRest reads what is left of a call's stream after its response, then
// closes it and ends the call's request (cancel). A response body closed
// before its end closes its connection, and the next call would dial, and
// handshake, anew; read to its end, the connection serves the session's
// next request. The upstream ends the stream right after the response
// (the protocol says it should), often before the broker has read the
// response, sometimes just after: the agent, who has its answer, does not
// wait for that. A session whose upstream kept a stream open past
// restWait, or wrote restMax more, is not waited for again for lingerFor:
// its streams are closed at once, as they end the call.
func (d *directUpstream) readRest(body io.ReadCloser, cancel context.CancelFunc) {
	timer := time.AfterFunc(restWait, func() {
		d.linger()
		cancel()
	})
	if n, _ := io.Copy(io.Discard, io.LimitReader(body, restMax)); n == restMax {
		d.linger()
	}
	timer.Stop()
	body.Close()
	cancel()
}

// maxResumes bounds the attempts to resume a direct call's event stream
// that get no further than the last; resumeWait is how long to wait before
// each when the stream did not say (its retry field).
const (
	maxResumes = 5
	resumeWait = time.Second
)

// resumeStream asks the upstream, after waiting what the stream asked
// (retry) or resumeWait, for the rest of a call's event stream after its
// event lastID. again reports whether another attempt may get it: the
// request did not reach the upstream, rather than the upstream refusing.
func (d *directUpstream) resumeStream(ctx context.Context, lastID string, retry time.Duration) (body io.ReadCloser, again bool, err error) {
	wait := time.NewTimer(cmp.Or(retry, resumeWait))
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return nil, false, ctx.Err()
	case <-wait.C:
	}
	resp, err := d.resume(ctx, lastID)
	if err != nil {
		return nil, ctx.Err() == nil, err
	}
	if resp.StatusCode/100 != 2 || !isEventStream(resp.Header) {
		resp.Body.Close()
		return nil, false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return resp.Body, false, nil
}

// directAnswer passes the agent's answer to a relayed upstream request
// back to that upstream, under the upstream's own id.
func (b *Broker) directAnswer(w http.ResponseWriter, r *http.Request, as *agentSession, body []byte, m *mcpfilter.Message) bool {
	as.mu.Lock()
	req, ok := as.relayed[string(m.ID)]
	delete(as.relayed, string(m.ID))
	as.mu.Unlock()
	if !ok {
		return false
	}
	ctx, cancel := notice(r.Context())
	defer cancel()
	resp, err := req.up.post(ctx, splice(body, edit{m.IDSpan, req.id}), "", "")
	if err != nil {
		writeError(w, http.StatusBadGateway, m.ID, "the upstream could not be given the answer: "+errorText(err, true))
		return true
	}
	resp.Body.Close()
	w.WriteHeader(http.StatusAccepted)
	return true
}

// relayCancellation passes the upstream's notifications/cancelled, of
// params, to the agent if it is of a request server relayed to the agent
// during a direct call: on that call's stream, under the id the agent
// knows the request by. The request is forgotten, so an answer the agent
// still sends goes nowhere. The upstream may send the cancellation on the
// call's stream or on its session's (see relayNotification); the requests
// the SDK relayed it cancels itself.
func (b *Broker) relayCancellation(as *agentSession, server string, params json.RawMessage) {
	var p cancelledParams
	if json.Unmarshal(params, &p) != nil {
		return
	}
	upID := bytes.TrimSpace(p.RequestID)
	as.mu.Lock()
	var stream *sseStream
	var id string
	for agentID, req := range as.relayed {
		if req.server == server && bytes.Equal(req.id, upID) {
			stream, id = req.stream, agentID
			delete(as.relayed, agentID)
			break
		}
	}
	as.mu.Unlock()
	if stream == nil {
		return
	}
	n, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "notifications/cancelled",
		"params": cancelledParams{RequestID: json.RawMessage(id), Reason: p.Reason}})
	stream.send(n)
}

// directCancel abandons the call the agent cancels, which decision d
// allows, if it is one the SDK does not know of: a direct call, whose
// cancellation it passes upstream, a call waiting for approval, or a
// request of a token's state that the SDK serves in a session of its own
// (trackSDK). The clients of a token's state may have several such calls
// under one id: which one is meant cannot be told, and none is cancelled.
func (b *Broker) directCancel(w http.ResponseWriter, r *http.Request, as *agentSession, d authz.Decision, m *mcpfilter.Message) bool {
	var p cancelledParams
	if json.Unmarshal(m.Params, &p) != nil {
		return false
	}
	id := string(bytes.TrimSpace(p.RequestID))
	var calls []*directCall
	var waiting []context.CancelCauseFunc
	as.mu.Lock()
	for _, c := range as.directCalls {
		if c.agentID == id {
			calls = append(calls, c)
		}
	}
	for _, pc := range as.parked {
		if pc.id == id && pc.abandon != nil {
			waiting = append(waiting, pc.abandon)
		}
	}
	sdk := slices.Clone(as.sdkCalls[id])
	as.mu.Unlock()
	switch n := len(calls) + len(waiting) + len(sdk); {
	case n == 0:
		return false
	case n > 1:
		why := fmt.Sprintf("request %s not cancelled: %d calls in flight or waiting for approval have that id, and which one is meant cannot be told", id, n)
		b.record(d, CodeCancelAmbiguous, why)
		writeRPCError(w, http.StatusBadRequest, json.RawMessage("null"), mcpfilter.CodeInvalidRequest, why)
		return true
	case len(waiting) == 1:
		waiting[0](errCancelledByAgent)
		w.WriteHeader(http.StatusAccepted)
		return true
	case len(sdk) == 1:
		// The SDK's client tells the upstream, as when the agent goes away.
		sdk[0].cancel()
		w.WriteHeader(http.StatusAccepted)
		return true
	}
	call := calls[0]
	ctx, cancel := notice(r.Context())
	defer cancel()
	call.cancelUpstream(ctx, p.Reason)
	call.cancel()
	w.WriteHeader(http.StatusAccepted)
	return true
}

// dropDirect forgets an agent's upstream session whose connection failed,
// so that the next call opens a new one.
func (b *Broker) dropDirect(as *agentSession, server string, d *directUpstream) {
	as.mu.Lock()
	cs := as.ups[server]
	same := as.direct[server] == d
	as.mu.Unlock()
	if same && cs != nil {
		b.dropUpstreamSession(as, server, cs)
	}
}

// finishDirect answers a direct call that failed before its response.
func (b *Broker) finishDirect(stream *sseStream, r *http.Request, sent *mcpfilter.Message, server, tool string, start time.Time, err error) {
	took := time.Since(start)
	err = b.cutShort(err)
	// An agent that is gone, or cancelled the call, is not answered.
	if r.Context().Err() == nil {
		resp, _ := json.Marshal(rpcErrorResponse(sent.ID, upstreamError(server, err)))
		stream.answer(resp)
	}
	b.recordUpstream(r.Context(), r.Header, server, tool, took, "error", b.auditedError(err, r.Header.Get(authz.HeaderRole), sent.Arguments))
}

// recordDirect audits what became of the direct call sent upstream, which
// took took to answer with resp. It runs once the agent has the answer.
func (b *Broker) recordDirect(r *http.Request, sent *mcpfilter.Message, server, tool string, took time.Duration, resp *mcpfilter.Message) {
	status := "ok"
	var reason string
	switch {
	case resp.Error != nil:
		status = "error"
		reason = b.auditedError(upstreamRPCError(resp), r.Header.Get(authz.HeaderRole), sent.Arguments)
	case resp.IsError:
		status = "tool_error"
	}
	b.recordUpstream(r.Context(), r.Header, server, tool, took, status, reason)
}

type rpcErrorBody struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   any             `json:"error"`
}

func rpcErrorResponse(id []byte, err error) rpcErrorBody {
	return rpcErrorBody{JSONRPC: "2.0", ID: id, Error: err}
}

// edit replaces a span of a message.
type edit struct {
	span mcpfilter.Span
	with []byte
}

// splice returns a copy of data with the spans of edits, which must not
// overlap, replaced.
func splice(data []byte, edits ...edit) []byte {
	slices.SortFunc(edits, func(a, b edit) int { return a.span.Start - b.span.Start })
	out := make([]byte, 0, len(data)+64)
	at := 0
	for _, e := range edits {
		out = append(out, data[at:e.span.Start]...)
		out = append(out, e.with...)
		at = e.span.End
	}
	return append(out, data[at:]...)
}

// sseStream answers an agent's request with a stream of server-sent
// events, each one JSON-RPC message (or a comment), flushed at once. The
// response starts with the first event, unless the answer comes first
// (see answer).
type sseStream struct {
	// mu orders writes: the upstream session's reader may write too
	// (relayCancellation). Once closed, nothing more is written: the
	// handler that owns w may have returned.
	mu      sync.Mutex
	w       http.ResponseWriter
	started bool
	closed  bool
	done    bool // the answer is written
}

// answered reports whether the agent has been given the call's answer.
func (s *sseStream) answered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// close ends the writing of s.
func (s *sseStream) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *sseStream) begin() {
	if s.started {
		return
	}
	s.started = true
	s.w.Header().Set("Content-Type", "text/event-stream")
	s.w.Header().Set("Cache-Control", "no-cache")
	s.w.WriteHeader(http.StatusOK)
}

// answer writes the last message to the agent, the call's answer: as an
// event if the stream has begun, else alone as JSON, which costs the agent
// no stream.
func (s *sseStream) answer(msg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	switch {
	case s.closed:
	case s.started:
		s.event(msg)
	default:
		writeJSON(s.w, msg)
	}
}

// send writes one message as an event.
func (s *sseStream) send(data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.event(data)
	}
}

func (s *sseStream) event(data []byte) {
	s.begin()
	s.w.Write([]byte("event: message\ndata: "))
	s.w.Write(data)
	s.w.Write([]byte("\n\n"))
	flush(s.w)
}

// comment writes an SSE comment, which clients ignore and proxies see as
// traffic.
func (s *sseStream) comment(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.begin()
	s.w.Write([]byte(": " + text + "\n\n"))
	flush(s.w)
}
