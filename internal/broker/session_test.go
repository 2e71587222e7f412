package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/tokens"
)

// An agent's session with one upstream is opened on its first call there;
// while that upstream is slow to accept it, the agent's calls to the
// others go on, and its other calls there wait for that one session.
func TestSlowUpstreamDoesNotHoldUpTheOthers(t *testing.T) {
	files := newUpstream()
	var slow atomic.Bool
	var connects atomic.Int32
	entered, release := make(chan struct{}, 2), make(chan struct{})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if slow.Load() {
			connects.Add(1)
			entered <- struct{}{}
			<-release
		}
		return files.transport(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: time.Minute}})
	cs := g.connect(t, nil)
	slow.Store(true) // the catalogue is listed: from now on, connecting hangs
	call := func(name string) error {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		return err
	}
	filesDone := make(chan error, 2)
	go func() { filesDone <- call("files__get_pages") }()
	<-entered
	go func() { time.Sleep(200 * time.Millisecond); filesDone <- call("files__get_pages") }()
	// Should the call wait for the other upstream, that upstream is let
	// through after a while, so that the test fails rather than hangs.
	failsafe := time.AfterFunc(10*time.Second, func() { close(release) })
	if err := call("notion__get_pages"); err != nil {
		t.Fatal(err)
	}
	if !failsafe.Stop() {
		t.Fatal("a call to notion waited while the agent's session with files was being opened")
	}
	// The second call to files has come when it is connecting too, or
	// waiting for the first one's connect: only then does connects say
	// whether they share it.
	eventually(t, "the second call to files to reach the broker's connect", func() bool { return goroutinesIn("broker.(*Broker).sessionWith(") == 2 })
	close(release)
	for range 2 {
		if err := <-filesDone; err != nil {
			t.Errorf("a call to files, once it accepted the session: %v", err)
		}
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("the agent's two calls to files opened %d sessions, want 1", n)
	}
}

// goroutinesIn counts the goroutines with fn, a function as stack traces
// name it, on their stacks.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte(fn))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// The agent's calls that waited for a connection to an upstream fail with
// it, rather than each try again in turn: were the upstream not to answer,
// the last of them would wait out the connect timeout of every attempt
// before its own.
func TestWaitingCallsShareAFailedConnect(t *testing.T) {
	files := newUpstream()
	var failing atomic.Bool
	var connects atomic.Int32
	entered, release := make(chan struct{}, 3), make(chan struct{})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if failing.Load() {
			connects.Add(1)
			entered <- struct{}{}
			<-release
			return nil, errors.New("connection refused")
		}
		return files.transport(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: time.Minute}})
	cs := g.connect(t, nil)
	failing.Store(true) // the catalogue is listed: from now on, connecting fails
	done := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
			done <- err
		}()
	}
	<-entered
	time.Sleep(200 * time.Millisecond) // for the other two calls to come and wait
	close(release)
	for range 3 {
		err := <-done
		if err == nil || !strings.Contains(err.Error(), `upstream "files": the gateway could not prepare its connection`) {
			t.Errorf("a call while files refused the session: %v, want its error naming files", err)
		}
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("the agent's three calls to files tried to connect %d times, want 1", n)
	}
}

// A connect abandoned by the request that made it (the agent went away)
// says nothing of the upstream: the calls that waited for it connect
// themselves.
func TestWaitingCallConnectsWhenTheFirstGaveUp(t *testing.T) {
	files := newUpstream()
	var hang atomic.Bool
	var connects atomic.Int32
	entered := make(chan struct{}, 1)
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if hang.Load() && connects.Add(1) == 1 {
			entered <- struct{}{}
			<-ctx.Done() // the request's end; should that not cut it short, the connect timeout does
			return nil, ctx.Err()
		}
		return files.transport(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: 10 * time.Second}})
	cs := g.connect(t, nil)
	hang.Store(true) // the catalogue is listed: from now on, the first connect hangs
	call := func(ctx context.Context) error {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- call(ctx) }()
	<-entered
	go func() { second <- call(context.Background()) }()
	time.Sleep(200 * time.Millisecond) // for the second call to come and wait
	cancel()
	if err := <-first; err == nil {
		t.Error("the abandoned call succeeded")
	}
	if err := <-second; err != nil {
		t.Errorf("the call that waited: %v", err)
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("%d connects, want 2: the abandoned one and the waiting call's own", n)
	}
}

// An agent session that ends closes its upstream sessions all at once:
// each close asks an upstream to end the session, which a busy upstream
// may take seconds to do, and one such upstream does not hold up the
// others.
func TestEndedSessionClosesItsUpstreamSessionsTogether(t *testing.T) {
	files := newUpstream()
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	cs := g.connect(t, nil)
	for _, name := range []string{"notion__get_pages", "files__get_pages"} {
		if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	notionDeletes, filesDeletes := g.up.holdDeletes(), files.holdDeletes()
	// Should the closes come one after the other, the first is let go
	// after a while, so that the test fails rather than hangs; sooner than
	// the SDK's client gives up on it (5 s), which would let the second
	// come as well.
	failsafe := time.AfterFunc(3*time.Second, func() { close(notionDeletes); close(filesDeletes) })
	go cs.Close()
	<-g.up.deleting
	<-files.deleting
	if !failsafe.Stop() {
		t.Fatal("the upstream sessions were closed one after the other")
	}
	close(notionDeletes)
	close(filesDeletes)
}

// An agent session that ends (DELETE) ends its direct calls in flight:
// their requests to the upstream are cancelled, rather than held open
// until the call timeout. The call is served by a plain handler, not the
// SDK's server, so that only the end of the call's own request ends it,
// not that of the upstream session, which the broker ends as well.
func TestEndedSessionEndsItsDirectCalls(t *testing.T) {
	g := newGatewayTimed(t, true, time.Minute, nil)
	a := newRawAgent(t, g)
	warmRaw(a)
	started, ended := make(chan struct{}, 1), make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- struct{}{}
		case <-g.up.stop:
		}
	})
	g.up.callsTo.Store(&h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.postUntil(ctx, pagesCall)
	<-started
	hd := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": a.sid, "Mcp-Protocol-Version": rawVersion}
	if code, body := sendMCP(t, "DELETE", g.url, hd, ""); code/100 != 2 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second): // a failsafe: the call timeout is a minute
		t.Error("the session ended, and its direct call's request to the upstream is still open")
	}
}

// sessionRecords is a SessionStore in memory whose records expire, as
// Redis's do; deaf, it tells no one of the sessions deleted, and with
// failDeletes it deletes none.
type sessionRecords struct {
	mu          sync.Mutex
	recs        map[string]SessionRecord
	expires     map[string]time.Time
	gone        map[string]time.Time // ended sessions, until when they are remembered
	ended       []func(string)
	deaf        bool
	failDeletes bool
}

func newSessionRecords() *sessionRecords {
	return &sessionRecords{recs: map[string]SessionRecord{}, expires: map[string]time.Time{}, gone: map[string]time.Time{}}
}

func (m *sessionRecords) Save(_ context.Context, id string, rec SessionRecord, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Now().Before(m.gone[id]) {
		return ErrSessionEnded
	}
	m.recs[id], m.expires[id] = rec, time.Now().Add(ttl)
	return nil
}

func (m *sessionRecords) Load(_ context.Context, id string) (SessionRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[id]
	return rec, ok && time.Now().Before(m.expires[id]), nil
}

func (m *sessionRecords) Delete(_ context.Context, id string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failDeletes {
		return errors.New("store unavailable")
	}
	delete(m.recs, id)
	m.gone[id] = time.Now().Add(ttl)
	if !m.deaf {
		for _, ended := range m.ended {
			go ended(id)
		}
	}
	return nil
}

func (m *sessionRecords) Ended(_ context.Context, ended func(string)) (io.Closer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ended = append(m.ended, ended)
	return io.NopCloser(nil), nil
}

// signedPost sends body to a broker as Envoy would after an allowing
// Check, and returns the status and session id of the answer.
func signedPost(t *testing.T, g *gateway, sid, body string) (int, string) {
	t.Helper()
	code, sid, _ := signedSend(t, g, "POST", sid, body)
	return code, sid
}

// signedSend is signedPost with any method, and returns the answer too.
func signedSend(t *testing.T, g *gateway, method, sid, body string) (code int, session, answer string) {
	t.Helper()
	return signedSendAs(t, g, "bot-1", rawVersion, method, sid, body)
}

// signedSendAs is signedSend for agent, of role reader, with the
// MCP-Protocol-Version header version, none if empty.
func signedSendAs(t *testing.T, g *gateway, agent, version, method, sid, body string) (code int, session, answer string) {
	t.Helper()
	id := fmt.Sprintf("dec-%d", signedPosts.Add(1))
	d := authz.Decision{ID: id, Agent: agent, Role: "reader", Verdict: "allow", BodySHA256: sha256.Sum256([]byte(body)),
		Method: method, Session: sid}
	h := map[string]string{authz.HeaderDecision: g.signer.Sign(d), authz.HeaderAgent: agent, authz.HeaderRole: "reader",
		authz.HeaderDecisionID: id}
	if version != "" {
		h["Mcp-Protocol-Version"] = version
	}
	if sid != "" {
		h["Mcp-Session-Id"] = sid
	}
	req, _ := http.NewRequest(method, g.brokerURL, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Mcp-Session-Id"), string(data)
}

var signedPosts atomic.Int64

// Two replicas sharing session records, whose sessions go idle after
// idle; the agent's session is initialized on the first.
func replicaPair(t *testing.T, idle time.Duration) (a, b *gateway, sid string) {
	t.Helper()
	return replicaPairOn(t, newSessionRecords(), idle)
}

// replicaPairOn is replicaPair sharing store.
func replicaPairOn(t *testing.T, store SessionStore, idle time.Duration) (a, b *gateway, sid string) {
	t.Helper()
	shared := func(o *Options) { o.Sessions, o.SessionIdle = store, idle }
	a, b = newGatewayOver(t, false, shared), newGatewayOver(t, false, shared)
	_, sid = signedPost(t, a, "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+rawVersion+`","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	if sid == "" {
		t.Fatal("no session")
	}
	signedPost(t, a, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	return a, b, sid
}

// A session in use on one replica stays one the others can take over:
// its record lives as long as the session is in use, however long that
// is, and a replica that reaps its own idle copy leaves the record alone.
func TestSharedSessionOutlivesItsIdleTimeout(t *testing.T) {
	// Each request, and the pause after it, must come within an idle
	// timeout of the last, on a machine that may be busy: 200 ms left
	// too little for a request among the package's other tests.
	const idle = 800 * time.Millisecond
	t.Run("in use where it began", func(t *testing.T) {
		a, b, sid := replicaPair(t, idle)
		for i := range 12 { // 3 idle timeouts
			if code, _ := signedPost(t, a, sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/list"}`, 10+i)); code != http.StatusOK {
				t.Fatalf("request %d on the first replica: HTTP %d", i, code)
			}
			time.Sleep(idle / 4)
		}
		if code, _ := signedPost(t, b, sid, `{"jsonrpc":"2.0","id":99,"method":"tools/list"}`); code != http.StatusOK {
			t.Errorf("the session in use on the first replica, taken over by the second: HTTP %d", code)
		}
	})
	t.Run("in use on another replica", func(t *testing.T) {
		a, b, sid := replicaPair(t, idle)
		for i := range 12 { // the first replica reaps its copy meanwhile
			if code, _ := signedPost(t, b, sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/list"}`, 10+i)); code != http.StatusOK {
				t.Fatalf("request %d on the second replica: HTTP %d", i, code)
			}
			time.Sleep(idle / 4)
		}
		if code, _ := signedPost(t, a, sid, `{"jsonrpc":"2.0","id":99,"method":"tools/list"}`); code != http.StatusOK {
			t.Errorf("the session in use on the second replica, back on the first: HTTP %d", code)
		}
	})
}

// An agent may have MaxSessionsPerAgent sessions open at once: each may
// hold a connection or a process per upstream. The next initialize is
// refused, readably and audited, until one ends; requests that make no
// session take none, and another agent has its own.
func TestSessionLimit(t *testing.T) {
	g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 2 })
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + rawVersion +
		`","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	open := func(token string) (int, string) {
		return postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + token, "Mcp-Protocol-Version": rawVersion}, initialize)
	}
	first, second := newRawAgent(t, g), newRawAgent(t, g)
	if first.sid == "" || second.sid == "" {
		t.Fatal("the first two sessions were not opened")
	}
	code, body := open(g.token)
	const why = `agent \"bot-1\" has 2 sessions open, as many as the gateway allows it`
	if code != http.StatusTooManyRequests || !strings.Contains(body, why) || !strings.Contains(body, `"id":1`) {
		t.Errorf("a third session: %d %s; want 429 and a JSON-RPC error saying %s", code, body, why)
	}
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeSessionLimit) {
		t.Errorf("audit codes %v, want %s", codes, CodeSessionLimit)
	}
	// What makes no session is served at the limit.
	discover := `{"jsonrpc":"2.0","id":2,"method":"server/discover"}`
	if code, body := postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token}, discover); code != http.StatusOK {
		t.Errorf("server/discover at the limit: %d %s", code, body)
	}

	other, _, err := tokens.Issue(context.Background(), g.tokens, "bot-2", "reader", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if code, body := open(other); code != http.StatusOK {
		t.Errorf("another agent's session: %d %s", code, body)
	}

	h := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": first.sid, "Mcp-Protocol-Version": rawVersion}
	if code, body := sendMCP(t, "DELETE", g.url, h, ""); code/100 != 2 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	// Initializes the SDK refuses, making no session, give back what they
	// reserved: once the ended session is counted out (as it closes), each
	// gets the SDK's answer, not the limit's.
	malformed := func() (int, string) {
		return postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token}, `{"jsonrpc":"2.0","id":3,"method":"initialize"}`)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, body := malformed()
		if code != http.StatusTooManyRequests {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one session ended, still: %d %s", code, body)
		}
	}
	for range 3 {
		if code, body := malformed(); code != http.StatusBadRequest || !strings.Contains(body, `missing required "params"`) {
			t.Fatalf("an initialize without params: %d %s; want the SDK's 400", code, body)
		}
	}
	if code, body := open(g.token); code != http.StatusOK {
		t.Fatalf("after one session ended, a new one: %d %s", code, body)
	}
	if code, _ := open(g.token); code != http.StatusTooManyRequests {
		t.Errorf("past the limit again: %d, want 429", code)
	}
}

// Every initialize takes one of the agent's sessions, however it comes:
// as a batch of one (protocol 2025-03-26 has batches), or larger than
// mcpfilter's default limit when max_body_bytes is above it. A body the
// broker cannot read as authz did is refused, never served uncounted.
func TestSessionLimitCountsEveryInitialize(t *testing.T) {
	initialize := func(version string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + version +
			`","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	}
	const why = `agent \"bot-1\" has 1 sessions open, as many as the gateway allows it`
	t.Run("in a batch", func(t *testing.T) {
		g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 1 })
		h := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Protocol-Version": "2025-03-26"}
		batch := "[" + initialize("2025-03-26") + "]"
		if code, body := postMCP(t, g.url, h, batch); code != http.StatusOK {
			t.Fatalf("a batched initialize: %d %s", code, body)
		}
		if code, body := postMCP(t, g.url, h, batch); code != http.StatusTooManyRequests || !strings.Contains(body, why) {
			t.Errorf("a second batched initialize past a limit of 1: %d %s; want 429 saying %s", code, body, why)
		}
	})
	t.Run("larger than 1 MiB", func(t *testing.T) {
		g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 1; o.MaxBodyBytes = 4 << 20 })
		padded := initialize(rawVersion) + strings.Repeat(" ", 1<<20)
		if code, sid, body := signedSend(t, g, "POST", "", padded); code != http.StatusOK || sid == "" {
			t.Fatalf("an initialize of %d bytes: %d %.200s", len(padded), code, body)
		}
		code, sid, body := signedSend(t, g, "POST", "", padded)
		if code != http.StatusTooManyRequests || !strings.Contains(body, why) || !strings.Contains(body, `"id":1`) {
			t.Errorf("a second past a limit of 1: %d, session %q, %.200s; want 429 under id 1 saying %s", code, sid, body, why)
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 1 })
		// Signed, but a batch under a protocol version that has none:
		// authz would not have allowed it.
		code, sid, body := signedSend(t, g, "POST", "", "["+initialize(rawVersion)+"]")
		const want = `"code":-32600,"message":"the gateway cannot read the request: `
		if code != http.StatusBadRequest || sid != "" || !strings.Contains(body, want) {
			t.Errorf("a batch under %s: %d, session %q, %s; want 400 and %s", rawVersion, code, sid, body, want)
		}
		if codes := g.audit.Codes(); !slices.Contains(codes, string(authz.CodeMalformedRequest)) {
			t.Errorf("audit codes %v, want %s", codes, authz.CodeMalformedRequest)
		}
	})
}

// A request on a session is of the protocol version the session agreed at
// initialize, whatever its MCP-Protocol-Version header says: a header
// naming another version is refused, and so is a batch in a session of a
// version without batches. A 2025-03-26 agent need not send the header,
// which came with 2025-06-18, and its batches are served.
func TestRequestsSpeakTheSessionsVersion(t *testing.T) {
	const batch = `[{"jsonrpc":"2.0","id":10,"method":"ping"},` +
		`{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}]`
	const call = `{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	bothPaths(t, func(t *testing.T, g *gateway) {
		// open begins a session of version, whose first call makes the
		// next ones take the direct path, and returns the headers of a
		// request on it that names no version.
		open := func(version string) map[string]string {
			a := &rawAgent{t: t, url: g.url, token: g.token, version: version}
			a.post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + version + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
			a.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
			a.post(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
			return map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": a.sid}
		}
		refused := func(what string, h map[string]string, body, id, code, why string) {
			t.Helper()
			status, answer := postMCP(t, g.url, h, body)
			want := `{"code":-32600,"message":"` + why
			if status != http.StatusBadRequest || !strings.Contains(answer, want) || !strings.Contains(answer, `"id":`+id+`,`) {
				t.Errorf("%s: HTTP %d %s; want 400 under id %s and %s", what, status, answer, id, want)
			}
			rec := g.audit.Last(t)
			if reason, _ := json.Marshal(rec.Reason); rec.Code != code || !strings.Contains(answer, `"message":`+string(reason)) {
				t.Errorf("%s: audited %s %q, want %s and the answer's reason", what, rec.Code, rec.Reason, code)
			}
		}

		h := open("2025-03-26")
		if status, answer := postMCP(t, g.url, h, batch); status != http.StatusOK || !strings.Contains(answer, `"id":11`) {
			t.Errorf("a batch without the version header in a 2025-03-26 session: HTTP %d %s", status, answer)
		}

		h = open("2025-11-25")
		h["Mcp-Protocol-Version"] = "2025-03-26"
		refused("a batch under 2025-03-26 in a 2025-11-25 session", h, batch, "null", string(authz.CodeMalformedRequest),
			`JSON-RPC batches are not allowed in protocol \"2025-11-25\", this session's version`)
		// Another version the gateway speaks, named on a session, is
		// served as the go-sdk serves it (and the conformance suite asks).
		for _, v := range []string{"2025-03-26", "2025-06-18"} {
			h["Mcp-Protocol-Version"] = v
			if status, answer := postMCP(t, g.url, h, call); status != http.StatusOK || !strings.Contains(answer, `"id":12`) {
				t.Errorf("a call under %s in a 2025-11-25 session: HTTP %d %s", v, status, answer)
			}
		}
		delete(h, "Mcp-Protocol-Version")
		if status, answer := postMCP(t, g.url, h, call); status != http.StatusOK || !strings.Contains(answer, `"id":12`) {
			t.Errorf("a call without the version header in a 2025-11-25 session: HTTP %d %s", status, answer)
		}
		refused("a batch without the version header in a 2025-11-25 session", h, batch, "null", string(authz.CodeMalformedRequest),
			`JSON-RPC batches are not allowed in protocol \"2025-11-25\", this session's version`)
	})
	t.Run("taken over", func(t *testing.T) {
		// The replica that takes a session over agrees its version anew,
		// from the initialize it replays.
		a, b, sid := replicaPair(t, time.Minute)
		signedPost(t, a, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
		code, _, answer := signedSendAs(t, b, "bot-1", "2025-03-26", "POST", sid, batch)
		want := `JSON-RPC batches are not allowed in protocol \"` + rawVersion + `\", this session's version`
		if code != http.StatusBadRequest || !strings.Contains(answer, want) {
			t.Errorf("a batch under 2025-03-26 in a %s session, on the replica taking it over: HTTP %d %s; want 400 and %s", rawVersion, code, answer, want)
		}
		if code, _, answer := signedSendAs(t, b, "bot-1", "", "POST", sid, batch); code != http.StatusBadRequest || !strings.Contains(answer, "JSON-RPC batches are not allowed") {
			t.Errorf("a batch without the version header in a %s session, on the replica that took it over: HTTP %d %s; want 400", rawVersion, code, answer)
		}
	})
	t.Run("agreed none", func(t *testing.T) {
		// A session whose initialize failed: it never agreed a version.
		g := newGatewayOver(t, false)
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "/", strings.NewReader(call))
		if g.broker.speaksSessionVersion(w, r, authz.Decision{ID: "d-1"}, newAgentSession(nil), []byte(call)) {
			t.Fatal("a request on a session that agreed no version was let through")
		}
		const want = `{"code":-32600,"message":"the session agreed no protocol version`
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), want) || !strings.Contains(w.Body.String(), `"id":12,`) {
			t.Errorf("HTTP %d %s; want 400 and %s", w.Code, w.Body, want)
		}
		if rec := g.audit.Last(t); rec.Code != CodeSessionRequired {
			t.Errorf("audited %s, want %s", rec.Code, CodeSessionRequired)
		}
	})
}

// A refusal answers under the request's id however large the request the
// broker took: max_body_bytes may be above mcpfilter's default limit.
func TestRequestIDOfALargeBody(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}` +
		strings.Repeat(" ", 2<<20)
	if got := string(requestID([]byte(body))); got != "7" {
		t.Errorf("the id of a %d-byte request: %s, want 7", len(body), got)
	}
}

// An initialize whose params the SDK cannot decode is answered with a
// session id (the SDK gives one before it reads the request) and the
// session closed: it takes none of the agent's sessions, however many the
// agent sends.
func TestUndecodableInitializeTakesNoSession(t *testing.T) {
	g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 2 })
	h := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Protocol-Version": rawVersion}
	initialize := func(caps string) (int, string) {
		return postMCP(t, g.url, h, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+rawVersion+
			`","capabilities":`+caps+`,"clientInfo":{"name":"raw","version":"1"}}}`)
	}
	for range 3 {
		if _, body := initialize("[]"); !strings.Contains(body, `"error":{`) || !strings.Contains(body, "capabilities") {
			t.Fatalf("an initialize with capabilities []: %s; want an error naming them", body)
		}
	}
	for i := range 2 {
		if code, body := initialize("{}"); code != http.StatusOK {
			t.Errorf("session %d of 2, after three initializes the SDK refused: %d %s", i+1, code, body)
		}
	}
}
