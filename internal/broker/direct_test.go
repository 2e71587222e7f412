//lint:file-ignore SA1019 the gateway relays sampling, deprecated from protocol 2026-07-28 on, for the versions that have it

package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/audit/audittest"
	"github.com/amgateway/amg/mcpfilter"
)

// directAgent is a raw agent on a gateway whose upstream is served over
// HTTP, past its first call: its calls take the direct path.
func directAgent(t *testing.T, tweak ...func(*Options)) (*gateway, *rawAgent) {
	t.Helper()
	g := newGatewayOver(t, true, tweak...)
	a := newRawAgent(t, g)
	warmRaw(a)
	return g, a
}

// warmRaw makes a raw agent's first call, which opens its upstream session
// through the SDK.
func warmRaw(a *rawAgent) {
	a.post(`{"jsonrpc":"2.0","id":"warm","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
}

// On the direct path the upstream receives the agent's message byte for
// byte, but for the id and the tool name, and the agent gets the
// upstream's answer under its own id.
func TestDirectPathForwardsTheAgentsBytes(t *testing.T) {
	g, a := directAgent(t)
	sent := `{"params":{ "arguments" : {"limit":5 ,"workspace_id":"ws_abc123"},"_meta":{"progressToken":9,"x":[1,2]},` +
		`"name":"notion__get_pages"},"id":"call-2","method":"tools/call","jsonrpc":"2.0"}`
	got := a.post(sent)
	if len(got) != 1 || !strings.Contains(got[0], `"id":"call-2"`) || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("answer = %q", got)
	}
	upstream := g.up.lastPost()
	id := regexp.MustCompile(`"id":"amg-\d+"`).FindString(upstream)
	if id == "" {
		t.Fatalf("the upstream got %s, not the call under a broker id", upstream)
	}
	restored := strings.Replace(strings.Replace(upstream, id, `"id":"call-2"`, 1), `"name":"get_pages"`, `"name":"notion__get_pages"`, 1)
	if restored != sent {
		t.Errorf("the upstream got\n%s\nwhich is not what the agent sent\n%s\nwith the id and name replaced", upstream, sent)
	}
}

// A JSON-RPC error from the upstream reaches the agent on the direct path
// as on the SDK path: its code kept, its message naming the upstream.
func TestDirectPathUpstreamErrorNamesTheUpstream(t *testing.T) {
	g, a := directAgent(t)
	got := a.post(`{"jsonrpc":"2.0","id":"e-1","method":"tools/call","params":{"name":"notion__fail","arguments":{}}}`)
	g.checkPath(t, "notion__fail")
	want := `{"jsonrpc":"2.0","id":"e-1","error":{"code":-32000,"message":"upstream \"notion\": workspace is locked"}}`
	if len(got) != 1 || got[0] != want {
		t.Errorf("answer = %q, want %s", got, want)
	}
}

// A result larger than the broker holds of an event it only observes
// (maxHeld) still reaches the agent whole on the direct path.
func TestDirectPathLargeResult(t *testing.T) {
	// Six MiB through the race detector on a busy machine can take longer
	// than the usual call timeout: this test is about size, not time.
	g := newGatewayTimed(t, true, time.Minute, nil)
	a := newRawAgent(t, g)
	warmRaw(a)
	got := a.post(`{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{"name":"notion__big","arguments":{}}}`)
	g.checkPath(t, "notion__big")
	if len(got) != 1 || !strings.Contains(got[0], `"id":"big"`) || !strings.Contains(got[0], strings.Repeat("x", bigResult)) {
		n := 0
		if len(got) > 0 {
			n = len(got[0])
		}
		t.Fatalf("a %d-byte result: %d messages, the first %d bytes: %.300s", bigResult, len(got), n, got)
	}
}

// An answer over the gateway's limit gives the agent an error that says
// so, naming the upstream.
func TestDirectPathTooLargeResult(t *testing.T) {
	defer func(n int) { maxUpstreamMessage = n }(maxUpstreamMessage)
	maxUpstreamMessage = 1 << 20
	// As above: the upstream still makes its six MiB, which can take
	// longer than the usual call timeout on a busy machine.
	g := newGatewayTimed(t, true, time.Minute, nil)
	a := newRawAgent(t, g)
	warmRaw(a)
	got := a.post(`{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{"name":"notion__big","arguments":{}}}`)
	g.checkPath(t, "notion__big")
	if len(got) != 1 || !strings.Contains(got[0], `"id":"big"`) ||
		!strings.Contains(got[0], `upstream \"notion\": its answer is larger than the gateway takes (1 MiB)`) {
		t.Fatalf("an answer over the limit: %.300q", got)
	}
}

// Every call on the direct path is audited with what became of it
// upstream, under the decision id of its decision.
func TestDirectPathAuditsTheUpstreamOutcome(t *testing.T) {
	g, a := directAgent(t)
	a.post(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__fail","arguments":{}}}`)
	a.post(`{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"notion__refuse","arguments":{}}}`)
	g.checkPath(t, "notion__fail")
	g.checkPath(t, "notion__refuse")
	// Each call is recorded once the agent has its answer.
	recs := map[string]*audit.Record{}
	for _, r := range g.audit.Await(t, 3) {
		if r.UpstreamStatus != "" {
			recs[r.Tool] = &r
		}
	}
	// A JSON-RPC error from the upstream.
	if rec := recs["fail"]; rec == nil || rec.Code != CodeUpstreamError || rec.UpstreamStatus != "error" || rec.DecisionID == "" ||
		rec.Agent != "bot-1" || !strings.Contains(rec.Reason, `JSON-RPC error -32000: "workspace is locked"`) {
		t.Errorf("audit record of the failed call = %+v", rec)
	}
	// A result that says isError: the tool ran and reported a failure.
	if rec := recs["refuse"]; rec == nil || rec.Code != CodeExecuted || rec.UpstreamStatus != "tool_error" {
		t.Errorf("audit record of the call whose tool failed = %+v", rec)
	}
	if rec := recs["get_pages"]; rec == nil || rec.UpstreamStatus != "ok" {
		t.Errorf("audit record of the call that succeeded = %+v", rec)
	}
}

// The agent has its answer before the broker records what became of the
// call: the record is not the agent's wait.
func TestDirectPathAnswersBeforeRecording(t *testing.T) {
	held := &heldAudit{release: make(chan struct{})}
	g, a := directAgent(t, func(o *Options) { o.Audit = held })
	// The first call is recorded after its answer too: holding that
	// record would hold the connection the next call comes on.
	before := len(held.Await(t, 1))
	held.held.Store(true)
	// Should the answer wait for the record, the record is let go after
	// a while, so that the test fails rather than hangs.
	failsafe := time.AfterFunc(10*time.Second, func() { close(held.release) })
	got := a.post(`{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if !failsafe.Stop() {
		t.Fatal("the agent's answer waited until the broker's audit record was taken")
	}
	if len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("answer = %q", got)
	}
	close(held.release)
	g.checkPath(t, "notion__get_pages")
	if rec := held.Await(t, before+1)[before]; rec.UpstreamStatus != "ok" || rec.Tool != "get_pages" {
		t.Errorf("the call's record = %+v", rec)
	}
}

// heldAudit keeps records as records does, but, while held, takes none
// until released.
type heldAudit struct {
	audittest.Recorder
	held    atomic.Bool
	release chan struct{}
}

func (h *heldAudit) Log(rec *audit.Record) error {
	if h.held.Load() {
		<-h.release
	}
	return h.Recorder.Log(rec)
}

// A call the upstream does not answer within its call timeout ends, on
// either path, in a JSON-RPC error naming the upstream, and the upstream
// hears that the call is over.
func TestCallTimeout(t *testing.T) {
	for _, overHTTP := range []bool{false, true} {
		t.Run(map[bool]string{false: "sdk path", true: "direct path"}[overHTTP], func(t *testing.T) {
			g := newGatewayTimed(t, overHTTP, 300*time.Millisecond, nil)
			a := newRawAgent(t, g)
			warmRaw(a)
			got := a.post(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__wait","arguments":{}}}`)
			if len(got) != 1 || !strings.Contains(got[0], `"id":9`) || !strings.Contains(got[0], `"code":-32010`) ||
				!strings.Contains(got[0], `upstream \"notion\" did not answer in time`) {
				t.Fatalf("a call the upstream did not answer: %q", got)
			}
			g.up.awaitCancelled(t, "the upstream was not told that the call is over")
			g.checkPath(t, "notion__wait")
		})
	}
}

// An upstream whose connection drops in the middle of a call gives the
// agent a JSON-RPC error naming it at once, not when the call times out.
// The broken upstream session is dropped, and the upstream asked to end
// it; the agent's answer and its next call do not wait for the upstream
// to do so.
func TestDirectPathUpstreamDisconnectsMidCall(t *testing.T) {
	g, a := directAgent(t)
	// The upstream holds the request to end the session for longer than
	// the agent should ever wait, but not for as long as the SDK's client
	// waits for it (5 s), so that an agent made to wait gets its answer
	// only after the release, and the test fails.
	deletes := g.up.holdDeletes()
	failsafe := time.AfterFunc(3*time.Second, func() { close(deletes) })
	go func() {
		<-g.up.started
		g.up.http.CloseClientConnections()
	}()
	got := a.post(`{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"notion__wait","arguments":{}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"id":11`) || !strings.Contains(got[0], `"code":-32010`) ||
		!strings.Contains(got[0], `upstream \"notion\"`) || strings.Contains(got[0], "did not answer in time") {
		t.Fatalf("a call whose upstream connection dropped: %q", got)
	}
	g.checkPath(t, "notion__wait")
	got = a.post(`{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("the call after: %q", got)
	}
	if !failsafe.Stop() {
		t.Fatal("the agent waited for the upstream to end the broken session")
	}
	close(deletes)
}

// An upstream's request to the agent during a direct call is forgotten
// when the call ends, answered or not.
func TestDirectPathForgetsUnansweredRelays(t *testing.T) {
	g := newGatewayTimed(t, true, 300*time.Millisecond, nil)
	a := newRawAgent(t, g)
	warmRaw(a)
	// The raw agent does not answer the sampling request the tool makes.
	got := a.post(`{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"notion__ask","arguments":{}}}`)
	g.checkPath(t, "notion__ask")
	if n := len(got); n != 2 || !strings.Contains(got[0], `"method":"sampling/createMessage"`) || !strings.Contains(got[1], "did not answer in time") {
		t.Fatalf("the call: %q", got)
	}
	v, ok := g.broker.bySID.Load(a.sid)
	if !ok {
		t.Fatal("no agent session")
	}
	as := v.(*agentSession)
	as.mu.Lock()
	defer as.mu.Unlock()
	if len(as.relayed) != 0 {
		t.Errorf("the session still holds %d relayed requests of a call that ended", len(as.relayed))
	}
}

// An upstream that restarted has forgotten the agent's session; the next
// call opens a new one and succeeds.
func TestDirectPathRecoversFromAnUpstreamRestart(t *testing.T) {
	g, a := directAgent(t)
	g.up.restart()
	got := a.post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("call after the upstream restarted: %q", got)
	}
	got = a.post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("second call after the upstream restarted: %q", got)
	}
	g.checkPath(t, "notion__get_pages")
}

// An upstream that is down gives the agent a JSON-RPC error naming it, at
// once, never a hang, and never its URL.
func TestDirectPathUpstreamDown(t *testing.T) {
	g, a := directAgent(t)
	g.up.http.CloseClientConnections()
	g.up.http.Listener.Close()
	got := a.post(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"id":5`) || !strings.Contains(got[0], `upstream \"notion\"`) ||
		!strings.Contains(got[0], `"code":-32010`) {
		t.Fatalf("call to a stopped upstream: %q", got)
	}
	if host := strings.TrimPrefix(g.up.http.URL, "http://"); strings.Contains(got[0], host) {
		t.Errorf("the agent was shown the upstream's address %s: %q", host, got[0])
	}
}

// agentAnswerTests are upstreams' answers to a call under the broker's id
// "amg-9" and what agentAnswer makes of them for the agent's id 7.
var agentAnswerTests = []struct {
	upstream, want string
	unprefixed     bool
}{
	{upstream: `{"jsonrpc":"2.0","id":"amg-9","result":{"content":[] , "x":1}}`, want: `{"jsonrpc":"2.0","id":7,"result":{"content":[] , "x":1}}`},
	// Only the uri of resource_link and embedded resource blocks
	// changes: not other blocks', nor the structured content's, nor a
	// byte around them.
	{upstream: `{"jsonrpc":"2.0","id":"amg-9","result":{ "structuredContent":{"type":"resource_link","uri":"notion://a"},` +
		`"content" : [ {"uri":"notion:\/\/ws\u0041/p1" ,"type":"resource_link","name":"p1"},{"type":"text","text":"\"resource","uri":"notion://t"},` +
		`{"resource":{"text":"x", "uri":"notion://ws/p2"},"type":"resource"}, {"type":"resource","resource":"notion://ws/p3"} ]}}`,
		want: `{"jsonrpc":"2.0","id":7,"result":{ "structuredContent":{"type":"resource_link","uri":"notion://a"},` +
			`"content" : [ {"uri":"amg:notion:notion://wsA/p1" ,"type":"resource_link","name":"p1"},{"type":"text","text":"\"resource","uri":"notion://t"},` +
			`{"resource":{"text":"x", "uri":"amg:notion:notion://ws/p2"},"type":"resource"}, {"type":"resource","resource":"notion://ws/p3"} ]}}`},
	{upstream: `{"jsonrpc":"2.0","id":"amg-9","result":{"content":[{"type":"resource_link","uri":"notion://ws/p1","name":"p1"}]}}`,
		want:       `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"resource_link","uri":"notion://ws/p1","name":"p1"}]}}`,
		unprefixed: true},
	{upstream: `{"jsonrpc":"2.0","id":"amg-9","error":{"code":-32602,"message":"bad page","data":{"page":"p1"}}}`,
		want: `{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"upstream \"notion\": bad page","data":{"page":"p1"}}}`},
	{upstream: `{"jsonrpc":"2.0","id":"amg-9","error":{"code":"high","message":7}}`,
		want: `{"jsonrpc":"2.0","id":7,"error":{"code":-32010,"message":"upstream \"notion\": its error is not a JSON-RPC error object"}}`},
}

// The agent gets an upstream's answer byte for byte under its own id, but
// for the URIs of the resources a result links to or embeds, which are
// given the names agents read them by (none with unprefixed names); an
// error names the upstream.
func TestAgentAnswer(t *testing.T) {
	for _, tt := range agentAnswerTests {
		parsed, err := mcpfilter.Parse([]byte(tt.upstream), upstreamParse)
		if err != nil {
			t.Fatalf("%s: %v", tt.upstream, err)
		}
		var ns mcpfilter.Namespace
		if tt.unprefixed {
			ns.Only = "notion"
		}
		if got := string(agentAnswer([]byte(tt.upstream), &parsed.Messages[0], []byte("7"), "notion", ns)); got != tt.want {
			t.Errorf("agentAnswer(%s)\n= %s\nwant %s", tt.upstream, got, tt.want)
		}
	}
}

// FuzzAgentAnswer checks that the answer the agent gets to any response an
// upstream may send is a response under the agent's id and, for a result,
// the upstream's result as JSON, but for the URIs of linked and embedded
// resources, renamed as agents read them.
func FuzzAgentAnswer(f *testing.F) {
	for _, tt := range agentAnswerTests {
		f.Add([]byte(tt.upstream), "7", tt.unprefixed)
	}
	f.Add([]byte(`{"id":"amg-9","result":{"content":[{"type":"resource","resource":{"uri":"x://y","blob":"AA=="}}],"isError":true},"jsonrpc":"2.0"}`), `"a\u0062"`, false)
	f.Fuzz(func(t *testing.T, data []byte, agentID string, unprefixed bool) {
		res, err := mcpfilter.Parse(data, upstreamParse)
		if err != nil || len(res.Messages) != 1 || res.Messages[0].Kind != mcpfilter.KindResponse || string(res.Messages[0].ID) != `"amg-9"` {
			return // the direct path does not answer with it
		}
		req, err := mcpfilter.Parse([]byte(`{"jsonrpc":"2.0","id":`+agentID+`,"method":"ping"}`), nil)
		if err != nil || string(req.Messages[0].ID) != agentID {
			return // not an id an agent's request may carry
		}
		var ns mcpfilter.Namespace
		if unprefixed {
			ns.Only = "notion"
		}
		r := &res.Messages[0]
		out := agentAnswer(data, r, []byte(agentID), "notion", ns)
		back, err := mcpfilter.Parse(out, upstreamParse)
		if err != nil {
			t.Fatalf("the answer %q does not parse: %v", out, err)
		}
		if a := &back.Messages[0]; a.Kind != mcpfilter.KindResponse || string(a.ID) != agentID || (a.Error == nil) != (r.Error == nil) {
			t.Fatalf("the answer %q is not a response of the same kind under the id %s", out, agentID)
		}
		if r.Error != nil {
			return
		}
		want := decodeNumbers(t, r.Result).(map[string]any)
		content, _ := want["content"].([]any)
		for _, c := range content {
			c, _ := c.(map[string]any)
			switch c["type"] {
			case "resource_link":
				if u, ok := c["uri"].(string); ok && u != "" {
					c["uri"] = ns.JoinURI("notion", u)
				}
			case "resource":
				if e, ok := c["resource"].(map[string]any); ok {
					if u, ok := e["uri"].(string); ok && u != "" {
						e["uri"] = ns.JoinURI("notion", u)
					}
				}
			}
		}
		if got := decodeNumbers(t, back.Messages[0].Result); !reflect.DeepEqual(got, any(want)) {
			t.Fatalf("the agent's result differs from the upstream's (-want +got):\n%s", cmp.Diff(any(want), got))
		}
	})
}

// FuzzDirectCallSplice checks that the direct path forwards the call the
// policy judged: for any tools/call authz accepts, the broker's parse,
// which skips the arguments, finds the same id, name and _meta, and the
// body it sends upstream reads as the same call to the upstream's tool,
// with the same arguments and the _meta the upstream is owed (without the
// per-request keys, from 2026-07-28 on). An upstream's go-sdk reads that
// body as Parse does: FuzzParse in mcpfilter holds them to it.
func FuzzDirectCallSplice(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`,
		`{"params":{ "arguments" : {"limit":5 ,"workspace_id":"ws_abc123"},"_meta":{"progressToken":9,"x":[1,2]},"name":"notion__get_pages"},"id":"call-2","method":"tools/call","jsonrpc":"2.0"}`,
		`{"params":{"arguments":{"a":[1,{"b":null}]},"_meta":{"progressToken":"t","io.modelcontextprotocol/protocolVersion":"2026-07-28","x":"<&>"},"name":"n\u006ftion__get"},"method":"tools/call","id":"\u0041","jsonrpc":"2.0"}`,
		`{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-06-18"},"name":"a__b"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		// As authz reads the body it decides on.
		judged, err := mcpfilter.Parse(body, &mcpfilter.Options{ImmutableBody: true})
		if err != nil {
			return
		}
		j := &judged.Messages[0]
		if j.Kind != mcpfilter.KindRequest || j.Method != "tools/call" {
			return
		}
		parsed, err := mcpfilter.Parse(body, &mcpfilter.Options{SkipArgs: true})
		if err != nil {
			t.Fatalf("the broker refuses a call authz accepted: %v", err)
		}
		m := &parsed.Messages[0]
		if m.IDSpan != j.IDSpan || m.NameSpan != j.NameSpan || m.MetaSpan != j.MetaSpan || m.Name != j.Name || m.MetaProtocolVersion != j.MetaProtocolVersion {
			t.Fatalf("the broker reads id %v, name %q at %v, _meta %v; authz id %v, name %q at %v, _meta %v",
				m.IDSpan, m.Name, m.NameSpan, m.MetaSpan, j.IDSpan, j.Name, j.NameSpan, j.MetaSpan)
		}
		_, tool, err := mcpfilter.Namespace{}.Split(m.Name)
		if err != nil {
			return
		}
		// As directCall builds the upstream's body.
		upID := `"amg-1"`
		name, _ := json.Marshal(tool)
		out := splice(body, edit{m.IDSpan, []byte(upID)}, edit{m.NameSpan, name}, upstreamMetaEdit(body, m))
		sent, err := mcpfilter.Parse(out, nil)
		if err != nil {
			t.Fatalf("the upstream's body %q does not parse: %v", out, err)
		}
		u := &sent.Messages[0]
		if string(u.ID) != upID || u.Method != "tools/call" || u.Name != tool {
			t.Fatalf("the upstream's body %q is not a call to %q under id %s", out, tool, upID)
		}
		if !reflect.DeepEqual(u.Args.Any(), j.Args.Any()) {
			t.Fatalf("the upstream gets other arguments (-judged +sent):\n%s", cmp.Diff(j.Args.Any(), u.Args.Any()))
		}
		if j.MetaSpan.Len() == 0 {
			if u.MetaSpan.Len() != 0 {
				t.Fatalf("the upstream gets a _meta the agent did not send: %q", out)
			}
			return
		}
		want := decodeNumbers(t, body[j.MetaSpan.Start:j.MetaSpan.End]).(map[string]any)
		if j.MetaProtocolVersion >= perRequestFrom {
			for _, k := range requestMetaKeys {
				delete(want, k)
			}
		}
		if got := decodeNumbers(t, out[u.MetaSpan.Start:u.MetaSpan.End]); !reflect.DeepEqual(got, any(want)) {
			t.Fatalf("the upstream gets another _meta (-want +got):\n%s", cmp.Diff(any(want), got))
		}
	})
}

// decodeNumbers decodes JSON the parser accepted, numbers as written.
func decodeNumbers(t *testing.T, data []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
	return v
}

// BenchmarkAgentAnswer measures the direct path's rewriting of an answer,
// of one without resource links (the common case) and of one with.
func BenchmarkAgentAnswer(b *testing.B) {
	text := strings.Repeat("lorem ipsum ", 100)
	for _, bc := range []struct{ name, answer string }{
		{"text", `{"jsonrpc":"2.0","id":"amg-9","result":{"content":[{"type":"text","text":"` + text + `"}]}}`},
		{"links", `{"jsonrpc":"2.0","id":"amg-9","result":{"content":[{"type":"text","text":"` + text + `"},` +
			`{"type":"resource_link","uri":"notion://ws_abc123/p1","name":"p1"}]}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := []byte(bc.answer)
			parsed, err := mcpfilter.Parse(data, upstreamParse)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				agentAnswer(data, &parsed.Messages[0], []byte("7"), "notion", mcpfilter.Namespace{})
			}
		})
	}
}

// An upstream may answer a call with one JSON body rather than an event
// stream: the direct path passes it on as it does an event, and its
// failures as it does those of a stream.
func TestDirectPathJSONAnswers(t *testing.T) {
	defer func(n int) { maxUpstreamMessage = n }(maxUpstreamMessage)
	maxUpstreamMessage = 1 << 20
	files := newUpstream()
	files.jsonAnswers = true
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	a := newRawAgent(t, g)
	call := func(id, tool, args string) string {
		t.Helper()
		got := a.post(`{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"files__` + tool + `","arguments":` + args + `}}`)
		if len(got) != 1 || !strings.Contains(got[0], `"id":`+id) {
			t.Fatalf("%s: %.300q, want one answer under the agent's id", tool, got)
		}
		if last := files.lastPost(); !strings.Contains(last, `"id":"amg-`) || !strings.Contains(last, `"name":"`+tool+`"`) {
			t.Fatalf("%s did not take the direct path: the upstream got %s", tool, last)
		}
		return got[0]
	}
	for _, tc := range []struct{ tool, args, want string }{
		{"get_pages", `{"workspace_id":"ws_abc123"}`, `"text":"3 pages"`},
		{"fail", `{}`, `upstream \"files\": workspace is locked`},
		{"big", `{}`, `upstream \"files\": its answer is larger than the gateway takes (1 MiB)`},
	} {
		if got := call("7", tc.tool, tc.args); !strings.Contains(got, tc.want) {
			t.Errorf("%s: %.300s, want %s", tc.tool, got, tc.want)
		}
	}
	for _, tc := range []struct {
		name   string
		answer http.HandlerFunc
		want   string
	}{
		{"HTTP 500", func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "internal error", http.StatusInternalServerError)
		}, `upstream \"files\": HTTP 500`},
		{"another id", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"jsonrpc":"2.0","id":"amg-0","result":{"content":[]}}`)
		}, `upstream \"files\": the upstream's answer is not the call's JSON-RPC response`},
	} {
		files.callsTo.Store(&tc.answer)
		if got := call("8", "get_pages", `{"workspace_id":"ws_abc123"}`); !strings.Contains(got, tc.want) {
			t.Errorf("an upstream answering with %s: %.300s, want %s", tc.name, got, tc.want)
		}
	}
}

// A request the upstream relays to the agent during a direct call, and
// then gives up on, is cancelled at the agent under the id the agent
// knows it by, before the call's result.
func TestDirectPathRelaysTheUpstreamsCancellation(t *testing.T) {
	g, a := directAgent(t)
	g.up.srv.AddTool(&mcp.Tool{Name: "ask", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		sampling, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		req.Session.CreateMessage(sampling, &mcp.CreateMessageParams{MaxTokens: 10,
			Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "what now?"}}}})
		// The SDK sends its cancellation from a goroutine of its own: the
		// call goes on a moment, as a real one would, for it to go out on
		// the call's stream.
		time.Sleep(time.Second)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "gave up"}}}, nil
	})
	got := a.post(`{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"notion__ask","arguments":{}}}`)
	g.checkPath(t, "notion__ask")
	var relayedID, cancelledID string
	for i, raw := range got {
		var m struct {
			ID     json.RawMessage
			Method string
			Params struct{ RequestID json.RawMessage }
		}
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			t.Fatalf("message %d: %v: %s", i, err, raw)
		}
		switch m.Method {
		case "sampling/createMessage":
			relayedID = string(m.ID)
		case "notifications/cancelled":
			cancelledID = string(m.Params.RequestID)
			if i == len(got)-1 {
				t.Error("the cancellation came after the call's result")
			}
		}
	}
	if relayedID == "" || !strings.HasPrefix(relayedID, `"amg-s-`) {
		t.Fatalf("no sampling request relayed under a broker id in %q", got)
	}
	if cancelledID != relayedID {
		t.Errorf("cancellation of %s, want of the relayed %s, in %q", cancelledID, relayedID, got)
	}
	if last := got[len(got)-1]; !strings.Contains(last, `"id":"c1"`) || !strings.Contains(last, "gave up") {
		t.Errorf("last message %s, want the call's result", last)
	}
}

// An upstream's cancellation withdraws only a request it relayed itself:
// another upstream's, relayed under the same upstream id, stays with the
// agent, who may still answer it.
func TestDirectPathCancelsOnlyTheUpstreamsOwnRelays(t *testing.T) {
	files := newUpstream()
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	a := newRawAgent(t, g)
	warmRaw(a)
	a.post(`{"jsonrpc":"2.0","id":"warm-files","method":"tools/call","params":{"name":"files__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	idRE := regexp.MustCompile(`"id":("amg-\d+")`)
	answer := func(w http.ResponseWriter, id string) {
		fmt.Fprintf(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}}\n\n", id)
	}
	// files asks the agent under its id 1, and answers its call once
	// released; notion cancels its own request 1, which it never made,
	// during its call.
	release := make(chan struct{})
	asking := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := idRE.FindStringSubmatch(files.lastPost())[1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "event: message\ndata: "+
			`{"jsonrpc":"2.0","id":1,"method":"elicitation/create","params":{"message":"your name?","requestedSchema":{"type":"object","properties":{}}}}`+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
			answer(w, id)
		case <-files.stop:
		}
	})
	cancelling := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := idRE.FindStringSubmatch(g.up.lastPost())[1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "event: message\ndata: "+`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"reason":"gave up"}}`+"\n\n")
		answer(w, id)
	})
	files.callsTo.Store(&asking)
	g.up.callsTo.Store(&cancelling)
	v, ok := g.broker.bySID.Load(a.sid)
	if !ok {
		t.Fatal("no agent session")
	}
	as := v.(*agentSession)
	relayed := func() int {
		as.mu.Lock()
		defer as.mu.Unlock()
		return len(as.relayed)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	asked := make(chan string, 1)
	go func() {
		asked <- a.read(ctx, `{"jsonrpc":"2.0","id":"f1","method":"tools/call","params":{"name":"files__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	}()
	eventually(t, "files's request to be relayed to the agent", func() bool { return relayed() == 1 })
	got := a.post(`{"jsonrpc":"2.0","id":"n1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if len(got) != 1 || !strings.Contains(got[0], `"id":"n1"`) || !strings.Contains(got[0], `"text":"ok"`) {
		t.Errorf("notion's call: %q, want its answer alone", got)
	}
	if n := relayed(); n != 1 {
		t.Errorf("after notion's cancellation, the session holds %d relayed requests, want files's", n)
	}
	close(release)
	if stream := <-asked; !strings.Contains(stream, `"method":"elicitation/create"`) || strings.Contains(stream, "notifications/cancelled") ||
		!strings.Contains(stream, `"id":"f1"`) {
		t.Errorf("files's call's stream, to the agent:\n%s", stream)
	}
}

// An upstream without sessions, which serves 2026-07-28 as well: the
// gateway lists it over 2026-07-28, and an agent's calls reach it on the
// direct path at the agent's own version, with no session to name.
func TestStatelessUpstream(t *testing.T) {
	files := newUpstream()
	files.stateless = true
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	u := g.broker.ups["files"]
	u.mu.Lock()
	listedAt := u.catalog.InitializeResult().ProtocolVersion
	u.mu.Unlock()
	if listedAt != "2026-07-28" {
		t.Errorf("the catalogue session speaks %s, want 2026-07-28", listedAt)
	}
	a := newRawAgent(t, g)
	for _, id := range []string{"10", "11"} {
		got := a.post(`{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"files__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
		if len(got) != 1 || !strings.Contains(got[0], `"id":`+id) || !strings.Contains(got[0], `"text":"3 pages"`) {
			t.Fatalf("call %s: %.300q", id, got)
		}
		if last := files.lastPost(); !strings.Contains(last, `"id":"amg-`) {
			t.Errorf("call %s did not take the direct path: the upstream got %s", id, last)
		}
	}
}

// What an upstream sends on a direct call's stream besides the answer
// reaches the agent as it would on the other path: the call's progress,
// log messages only at the level the agent set, resource updates only to
// sessions subscribed to a resource the role may read (so never one it is
// not granted, nor in the upstream's own URIs), and no list changes,
// which are the catalogue session's.
func TestDirectCallNotifications(t *testing.T) {
	g, a := directAgent(t)
	idRE := regexp.MustCompile(`"id":("amg-\d+")`)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := idRE.FindStringSubmatch(g.up.lastPost())[1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, m := range []string{
			`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p1","progress":1}}`,
			`{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"notion://ws_other/secret-board"}}`,
			`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"debug","data":"debug detail"}}`,
			`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error","data":"error detail"}}`,
			`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`,
			`{"jsonrpc":"2.0","id":` + id + `,"result":{"content":[{"type":"text","text":"ok"}]}}`,
		} {
			w.Write([]byte("event: message\ndata: " + m + "\n\n"))
		}
	})
	g.up.callsTo.Store(&h)
	call := `{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"},"_meta":{"progressToken":"p1"}}}`
	got := strings.Join(a.post(call), "\n")
	for _, leak := range []string{"ws_other/secret-board", "debug detail", "error detail", "list_changed"} {
		if strings.Contains(got, leak) {
			t.Errorf("the agent got %q:\n%s", leak, got)
		}
	}
	if !strings.Contains(got, `"progressToken":"p1"`) || !strings.Contains(got, `"text":"ok"`) {
		t.Errorf("the call's progress or answer is missing:\n%s", got)
	}
	// With a level set, the messages at it and above come.
	a.post(`{"jsonrpc":"2.0","id":"l1","method":"logging/setLevel","params":{"level":"warning"}}`)
	got = strings.Join(a.post(call), "\n")
	if !strings.Contains(got, "error detail") || strings.Contains(got, "debug detail") {
		t.Errorf("at level warning, the agent got:\n%s", got)
	}
}

// The call's response ends what the agent gets of its stream: what the
// upstream sends after it, in the same write (more progress, a second
// response under the call's id), is not passed on.
func TestDirectCallEndsAtItsResponse(t *testing.T) {
	g, a := directAgent(t)
	idRE := regexp.MustCompile(`"id":("amg-\d+")`)
	progress := func(n int) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p1","progress":%d}}`, n)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := idRE.FindStringSubmatch(g.up.lastPost())[1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		var events strings.Builder
		for _, m := range []string{
			progress(1),
			`{"jsonrpc":"2.0","id":` + id + `,"result":{"content":[{"type":"text","text":"ok"}]}}`,
			progress(2),
			`{"jsonrpc":"2.0","id":` + id + `,"result":{"content":[{"type":"text","text":"again"}]}}`,
		} {
			events.WriteString("event: message\ndata: " + m + "\n\n")
		}
		io.WriteString(w, events.String())
	})
	g.up.callsTo.Store(&h)
	got := a.post(`{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"},"_meta":{"progressToken":"p1"}}}`)
	want := []string{progress(1), `{"jsonrpc":"2.0","id":"c1","result":{"content":[{"type":"text","text":"ok"}]}}`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the agent got (-want +got):\n%s", diff)
	}
}

// An upstream may end a call's event stream before the result and let the
// client resume it (SSE polling, protocol 2025-11-25: the stream's last
// event says when to come back, and the client asks with GET and
// Last-Event-ID), while the tool goes on. The direct path resumes it: the
// agent gets the result, and the tool runs once for each call.
func TestDirectPathResumesAStreamTheUpstreamEnded(t *testing.T) {
	files := newUpstream()
	files.resumable = true
	var runs atomic.Int32
	files.srv.AddTool(&mcp.Tool{Name: "slow", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		runs.Add(1)
		req.Extra.CloseSSEStream(mcp.CloseSSEStreamArgs{RetryAfter: 10 * time.Millisecond})
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done after the stream ended"}}}, nil
	})
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	cs := g.connect(t, nil)
	for i := range 2 {
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__slow", Arguments: json.RawMessage(`{}`)})
		if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "done after the stream ended" {
			t.Fatalf("call %d: %v %+v", i+1, err, res)
		}
		if last := files.lastPost(); !strings.Contains(last, `"id":"amg-`) {
			t.Errorf("call %d did not take the direct path: the upstream got %s", i+1, last)
		}
	}
	if n := runs.Load(); n != 2 {
		t.Errorf("the tool ran %d times for 2 calls", n)
	}
}

// An upstream that ends a call's stream before the result, and then will
// not resume it, leaves the call's outcome unknown: the agent gets an
// error that says so, and the upstream is told the call is over before
// that, so that a call the agent makes again does not run beside it.
func TestDirectPathGivesUpAStreamThatCannotBeResumed(t *testing.T) {
	g, a := directAgent(t)
	idRE := regexp.MustCompile(`"id":("amg-\d+")`)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		// Resumable, as the stream says; the server has no events to
		// resume it with (GET with Last-Event-ID: HTTP 400).
		w.Write([]byte("event: prime\nid: 0_0\ndata: \n\nevent: close\nretry: 10\ndata: \n\n"))
	})
	g.up.callsTo.Store(&h)
	got := a.post(`{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	g.checkPath(t, "notion__get_pages")
	if len(got) != 1 || !strings.Contains(got[0], `"id":"c1"`) || !strings.Contains(got[0], `"code":-32010`) ||
		!strings.Contains(got[0], `upstream \"notion\": stream ended before the result: EOF; resuming it: HTTP 400`) {
		t.Fatalf("a call whose stream could not be resumed: %q", got)
	}
	var call, cancelled string
	g.up.mu.Lock()
	for _, p := range g.up.posts {
		if m := idRE.FindStringSubmatch(p); m != nil && strings.Contains(p, `"method":"tools/call"`) {
			call = m[1]
		}
		if strings.Contains(p, `"method":"notifications/cancelled"`) {
			cancelled = p
		}
	}
	g.up.mu.Unlock()
	if call == "" || !strings.Contains(cancelled, `"requestId":`+call) {
		t.Errorf("the upstream was not told the call %s is over; its last cancellation: %s", call, cancelled)
	}
	recs := g.audit.Await(t, 2)
	if rec := recs[len(recs)-1]; rec.UpstreamStatus != "error" || !strings.Contains(rec.Reason, "resuming it: HTTP 400") {
		t.Errorf("the call's record = %+v", rec)
	}
}

// An upstream that lets a call's stream be resumed, and then resumes it
// with nothing new, time after time, is asked maxResumes times and no
// more, whatever its stream's retry field asks: the agent gets an error
// that says so at once, not when the call times out.
func TestDirectPathGivesUpAStreamThatGetsNoFurther(t *testing.T) {
	g, a := directAgent(t)
	call := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("id: 0_0\nretry: 1\ndata: \n\n"))
	})
	var resumes atomic.Int32
	resume := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resumes.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(": nothing new\n\n"))
	})
	g.up.callsTo.Store(&call)
	g.up.resumesTo.Store(&resume)
	got := a.post(`{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	want := fmt.Sprintf(`upstream \"notion\": stream ended before the result: EOF; %d attempts to resume it got no further`, maxResumes)
	if len(got) != 1 || !strings.Contains(got[0], `"id":"c1"`) || !strings.Contains(got[0], want) {
		t.Errorf("a call whose stream gets no further: %.300q, want %s", got, want)
	}
	if n := resumes.Load(); n != maxResumes {
		t.Errorf("the upstream was asked %d times to resume the stream, want %d", n, maxResumes)
	}
}

// An upstream that asks for roots during a direct call (not offered: the
// broker answers with none) and does not take the answer holds up
// neither the call's stream nor its timeout.
func TestDirectPathRootsAnswerDoesNotHoldTheCall(t *testing.T) {
	roots := func(body []byte) bool { return bytes.Contains(body, []byte(`"roots":[]`)) }
	call := `{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"notion__roots","arguments":{}}}`
	t.Run("the upstream waits for the answer", func(t *testing.T) {
		g := newGatewayTimed(t, true, time.Second, nil)
		g.up.holding.Store(&roots)
		a := newRawAgent(t, g)
		warmRaw(a)
		// A failsafe, far beyond the call timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if got := a.read(ctx, call); !strings.Contains(got, `"id":"r1"`) || !strings.Contains(got, `upstream \"notion\" did not answer in time`) {
			t.Fatalf("a call whose upstream waits for an answer it does not take: %.300q", got)
		}
	})
	t.Run("the upstream goes on", func(t *testing.T) {
		g := newGatewayTimed(t, true, time.Minute, nil)
		answered := make(chan struct{}, 1)
		hold := func(body []byte) bool {
			if !roots(body) {
				return false
			}
			answered <- struct{}{}
			return true
		}
		g.up.holding.Store(&hold)
		g.up.srv.AddTool(&mcp.Tool{Name: "roots", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			go req.Session.ListRoots(ctx, nil)
			select {
			case <-answered:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "went on"}}}, nil
		})
		a := newRawAgent(t, g)
		warmRaw(a)
		// A failsafe, far below the call timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if got := a.read(ctx, call); !strings.Contains(got, `"id":"r1"`) || !strings.Contains(got, `"text":"went on"`) {
			t.Fatalf("a call whose upstream goes on while the answer to its roots request is on its way: %.300q", got)
		}
		g.checkPath(t, "notion__roots")
	})
}

// The agent's answer to a request an upstream relayed during a direct
// call, and its cancellation of a call, go upstream within noticeTimeout:
// an upstream that does not take them does not hold the agent's request.
func TestDirectPathAgentMessagesTheUpstreamDoesNotTake(t *testing.T) {
	defer func(d time.Duration) { noticeTimeout = d }(noticeTimeout)
	noticeTimeout = 100 * time.Millisecond
	t.Run("answer", func(t *testing.T) {
		g, a := directAgent(t)
		hold := func(body []byte) bool { return bytes.Contains(body, []byte(`"model":"agent-model"`)) }
		g.up.holding.Store(&hold)
		// A failsafe, far beyond noticeTimeout.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := a.send(ctx, `{"jsonrpc":"2.0","id":"a1","method":"tools/call","params":{"name":"notion__ask","arguments":{}}}`)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var id string
		relayed := regexp.MustCompile(`"id":("amg-s-\d+"),"method":"sampling/createMessage"`)
		for lines := bufio.NewScanner(resp.Body); id == "" && lines.Scan(); {
			if m := relayed.FindStringSubmatch(lines.Text()); m != nil {
				id = m[1]
			}
		}
		if id == "" {
			t.Fatal("no sampling request relayed on the call's stream")
		}
		got := a.read(ctx, `{"jsonrpc":"2.0","id":`+id+`,"result":{"model":"agent-model","role":"assistant","content":{"type":"text","text":"ship it"}}}`)
		if ctx.Err() != nil || !strings.Contains(got, "the upstream could not be given the answer") {
			t.Fatalf("the agent's answer the upstream does not take: %.300q", got)
		}
		// The call waits for the answer the upstream never got.
		a.read(ctx, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a1"}}`)
	})
	t.Run("cancellation", func(t *testing.T) {
		g, a := directAgent(t)
		hold := func(body []byte) bool { return bytes.Contains(body, []byte(`"method":"notifications/cancelled"`)) }
		g.up.holding.Store(&hold)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a failsafe
		defer cancel()
		a.postUntil(ctx, `{"jsonrpc":"2.0","id":"w1","method":"tools/call","params":{"name":"notion__wait","arguments":{}}}`)
		<-g.up.started
		a.read(ctx, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"w1"}}`)
		if ctx.Err() != nil {
			t.Fatal("the agent's cancellation waited for the upstream to take it")
		}
	})
}

// A call reusing the id of a call of its session in flight on the direct
// path is refused, as the SDK refuses one reusing the id of a request it
// serves, and audited; the call in flight is still the one the agent's
// cancellation of that id reaches.
func TestDirectPathRefusesAnIDInFlight(t *testing.T) {
	g, a := directAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a failsafe
	defer cancel()
	a.postUntil(ctx, `{"jsonrpc":"2.0","id":"w1","method":"tools/call","params":{"name":"notion__wait","arguments":{}}}`)
	<-g.up.started
	resp, err := a.send(ctx, `{"jsonrpc":"2.0","id":"w1","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := string(data); resp.StatusCode != http.StatusBadRequest || !strings.Contains(got, `"id":"w1"`) || !strings.Contains(got, `"code":-32600`) ||
		!strings.Contains(got, `request id \"w1\" is that of a call of this session still in flight`) {
		t.Errorf("a call reusing the id of one in flight: HTTP %d: %s", resp.StatusCode, got)
	}
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeRequestIDInUse) {
		t.Errorf("audit codes %v: the refusal is not among them", codes)
	}
	a.read(ctx, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"w1"}}`)
	select {
	case <-g.up.cancelled:
	case <-ctx.Done():
		t.Fatal("the agent's cancellation of the call in flight did not reach the upstream")
	}
}

// callStream answers every tools/call the upstream gets with its response
// on an event stream, and then, before ending the stream, runs after. The
// answers carry callStreamHeader, by which the upstream's client counts
// their streams.
func callStream(u *upstreamServer, after func(r *http.Request)) {
	idRE := regexp.MustCompile(`"id":("amg-\d+")`)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := idRE.FindStringSubmatch(u.lastPost())[1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set(callStreamHeader, "1")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"3 pages\"}]}}\n\n", id)
		w.(http.Flusher).Flush()
		after(r)
	})
	u.callsTo.Store(&h)
}

const callStreamHeader = "X-Call-Stream"

const pagesCall = `{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`

// A call's stream that ends a moment after its response, as streams do, is
// read to its end, so that its connection serves the session's later
// calls: a body closed before its end closes the connection, and every
// call would dial (and, to an https upstream, handshake) anew.
//
// Each call is made once the broker is done with the last one's stream,
// so that the stream's end does not race the next call. The broker waits
// only restWait for the end, which a loaded machine may not give it; the
// session is then taken for one whose upstream keeps streams open, and is
// not waited for again for lingerFor. That says nothing of reuse, and is
// tried again in a new session.
func TestDirectPathReusesTheUpstreamConnection(t *testing.T) {
	const attempts = 3
	for i := 1; ; i++ {
		drained, newConns, lingered := reuseAttempt(t)
		if !lingered {
			if drained != reuseCalls {
				t.Errorf("%d of %d calls' streams were read to their end before being closed", drained, reuseCalls)
			}
			// A dial the transport began before the calls, and did not
			// need, may end among them.
			if newConns > 1 {
				t.Errorf("%d calls opened %d new connections to the upstream", reuseCalls, newConns)
			}
			return
		}
		if i == attempts {
			t.Fatalf("in %d sessions the broker never read a stream's end within restWait", attempts)
		}
		t.Logf("session %d: the broker stopped waiting for a stream's end; trying a new one", i)
	}
}

const reuseCalls = 8

// reuseAttempt makes reuseCalls calls in a new session and returns how
// many of their streams were read to their end, how many new connections
// they opened, and whether the broker stopped waiting for a stream's end
// (see TestDirectPathReusesTheUpstreamConnection).
func reuseAttempt(t *testing.T) (drained, newConns int32, lingered bool) {
	g, a := directAgent(t)
	callStream(g.up, func(*http.Request) { time.Sleep(5 * time.Millisecond) })
	// call makes one call and waits for the broker to be done with its
	// stream, read to its end or given up on.
	call := func(n int) {
		closed := g.up.closed.Load()
		if got := a.post(pagesCall); len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
			t.Fatalf("call %d: %q", n, got)
		}
		g.checkPath(t, "notion__get_pages")
		eventually(t, "the broker to close the call's stream", func() bool { return g.up.closed.Load() > closed })
	}
	call(0)
	before, drainedBefore := g.up.conns.Load(), g.up.drained.Load()
	for i := range reuseCalls {
		call(1 + i)
	}
	g.broker.sessions.Range(func(_, v any) bool {
		as := v.(*agentSession)
		as.mu.Lock()
		if d := as.direct["notion"]; d != nil && d.lingering() {
			lingered = true
		}
		as.mu.Unlock()
		return true
	})
	return g.up.drained.Load() - drainedBefore, g.up.conns.Load() - before, lingered
}

// An upstream that keeps a call's stream open after the response holds up
// neither the session nor the upstream's handler: the stream is closed
// after restWait, and the session's later streams at once. The upstream
// keeps its streams open until the test ends, and the call timeout, which
// would end them too, is far beyond the failsafe below: only the broker's
// closing them lets the test pass.
func TestDirectPathClosesAStreamKeptOpen(t *testing.T) {
	g := newGatewayTimed(t, true, time.Minute, nil)
	a := newRawAgent(t, g)
	warmRaw(a)
	closed := make(chan struct{}, 16)
	callStream(g.up, func(r *http.Request) {
		select {
		case <-r.Context().Done():
			closed <- struct{}{}
		case <-g.up.stop:
		}
	})
	const calls = 3
	for i := range calls {
		if got := a.post(pagesCall); len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
			t.Fatalf("call %d: %q", i+1, got)
		}
	}
	for i := range calls {
		select {
		case <-closed:
		case <-time.After(20 * time.Second): // a failsafe, far beyond restWait
			t.Fatalf("the upstream's stream of call %d was never closed", i+1)
		}
	}
	var lingers []bool
	g.broker.sessions.Range(func(_, v any) bool {
		as := v.(*agentSession)
		as.mu.Lock()
		if d := as.direct["notion"]; d != nil {
			lingers = append(lingers, d.lingering())
		}
		as.mu.Unlock()
		return true
	})
	if len(lingers) != 1 || !lingers[0] {
		t.Errorf("the session's upstream is not marked as keeping its streams open: %v", lingers)
	}
}

// A session whose upstream once kept a stream open past restWait (or
// whose broker, on a loaded machine, read its end too late) has its
// streams read to their end again once lingerFor has passed, and its
// connection reused again.
func TestDirectPathWaitsForStreamsAgainAfterALinger(t *testing.T) {
	defer func(d time.Duration) { lingerFor = d }(lingerFor)
	lingerFor = 300 * time.Millisecond
	g, a := directAgent(t)
	var keepOpen atomic.Bool
	callStream(g.up, func(r *http.Request) {
		if keepOpen.Load() {
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second): // a failsafe, far beyond restWait
			}
		}
	})
	session := func() *directUpstream {
		var d *directUpstream
		g.broker.sessions.Range(func(_, v any) bool {
			as := v.(*agentSession)
			as.mu.Lock()
			d = as.direct["notion"]
			as.mu.Unlock()
			return d == nil
		})
		return d
	}
	keepOpen.Store(true)
	if got := a.post(pagesCall); len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("the call whose stream is kept open: %q", got)
	}
	eventually(t, "the session's upstream to be marked as keeping its streams open", func() bool {
		d := session()
		return d != nil && d.lingering()
	})
	keepOpen.Store(false) // the upstream's later streams end after their response
	eventually(t, "the mark to pass", func() bool { return !session().lingering() })
	drained := g.up.drained.Load()
	if got := a.post(pagesCall); len(got) != 1 || !strings.Contains(got[0], `"text":"3 pages"`) {
		t.Fatalf("the call after the mark passed: %q", got)
	}
	eventually(t, "the next call's stream to be read to its end", func() bool { return g.up.drained.Load() > drained })
}
