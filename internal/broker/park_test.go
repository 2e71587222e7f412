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
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/audit/audittest"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/tokens"
)

// parkedGateway is a gateway whose calls needing approval park in store.
func parkedGateway(t *testing.T, store approval.Store, tweak ...func(*Options)) *gateway {
	return parkedGatewayOver(t, false, store, tweak...)
}

// parkedGatewayOver is parkedGateway with its upstream over HTTP or not,
// as newGatewayOver.
func parkedGatewayOver(t *testing.T, overHTTP bool, store approval.Store, tweak ...func(*Options)) *gateway {
	return newGatewayOver(t, overHTTP, append([]func(*Options){func(o *Options) { o.Approvals = store }}, tweak...)...)
}

// parkedOne waits for the one pending approval in store.
func parkedOne(t *testing.T, store approval.Store) *approval.Approval {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		list, err := store.List(context.Background(), approval.Pending)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 {
			return list[0]
		}
	}
	t.Fatal("no call was parked")
	return nil
}

func (g *gateway) deletions() []string {
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	return slices.Clone(g.up.deleted)
}

// An approved call reaches the upstream once, and the waiting agent gets
// the upstream's result. Over HTTP the upstream gets the agent's exact
// bytes; through the SDK (stdio upstreams), the same arguments without the
// spaces between their tokens.
func TestApprovedCallRunsOnce(t *testing.T) {
	approvalPaths(t, func(t *testing.T, g *gateway, store approval.Store, args, want string) {
		// A raw agent, which sends the arguments as they are written here.
		body := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":` + args + `}}`
		testApprovedCallRunsOnce(t, g, store, newRawAgent(t, g), body, want)
	})
}

// approvalPaths runs test on a gateway whose upstream takes a call needing
// approval through the SDK, and on one where it goes over HTTP, with the
// arguments the agent sends and those the upstream must get.
func approvalPaths(t *testing.T, test func(t *testing.T, g *gateway, store approval.Store, args, want string)) {
	args := `{ "page_id" : "pg_1" }`
	for _, overHTTP := range []bool{false, true} {
		want := `{"page_id":"pg_1"}`
		if overHTTP {
			want = args
		}
		t.Run(map[bool]string{false: "sdk", true: "direct"}[overHTTP], func(t *testing.T) {
			store := approval.NewMemory(nil)
			test(t, parkedGatewayOver(t, overHTTP, store), store, args, want)
		})
	}
}

// An approved call's answer reaches the agent as any call's does: the
// resources it links to named so that the agent can read them through
// the gateway.
func TestApprovedCallsLinksAreTheAgents(t *testing.T) {
	approvalPaths(t, func(t *testing.T, g *gateway, store approval.Store, _, _ string) {
		go func() {
			a := parkedOne(t, store)
			if _, err := store.Finish(context.Background(), a.ID, approval.Approved, "alice", "", time.Now()); err != nil {
				t.Error(err)
			}
		}()
		got := newRawAgent(t, g).post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"linked"}}}`)
		g.checkPath(t, "notion__delete_page")
		var last struct {
			Result struct {
				Content []struct{ Type, URI string }
			}
		}
		if len(got) > 0 {
			json.Unmarshal([]byte(got[len(got)-1]), &last)
		}
		if c := last.Result.Content; len(c) != 2 || c[1].Type != "resource_link" || c[1].URI != "amg:notion:notion://ws_abc123/p1" {
			t.Errorf("answer %q; want the link as the agent reads it, amg:notion:notion://ws_abc123/p1", got)
		}
	})
}

// testApprovedCallRunsOnce has agent send body, a delete_page call with id
// 4 that needs approval, approves it, and checks that it ran once, the
// upstream getting the arguments want, and that every step is audited
// under the approval's id, naming the agent and its role.
func testApprovedCallRunsOnce(t *testing.T, g *gateway, store approval.Store, agent *rawAgent, body, want string) {
	t.Helper()
	parked := make(chan *approval.Approval, 1)
	go func() {
		a := parkedOne(t, store)
		if d := g.deletions(); len(d) != 0 {
			t.Errorf("the upstream ran a call before its approval: %v", d)
		}
		parked <- a
		if _, err := store.Finish(context.Background(), a.ID, approval.Approved, "alice", "ticket OPS-1", time.Now()); err != nil {
			t.Error(err)
		}
	}()
	got := agent.post(body)
	a := <-parked
	if a.Tool != "delete_page" || a.Server != "notion" || a.Agent != "bot-1" || a.Role != "reader" || string(a.Body) != body {
		t.Errorf("parked approval = %+v, want the agent's request", a)
	}
	if len(got) == 0 || !strings.Contains(got[len(got)-1], `"id":4`) || !strings.Contains(got[len(got)-1], `"text":"deleted"`) {
		t.Fatalf("approved call's answer: %q", got)
	}
	if d := g.deletions(); !slices.Equal(d, []string{want}) {
		t.Errorf("the upstream got %q, want %q once", d, want)
	}
	g.checkPath(t, "notion__delete_page")
	if got, _ := store.Get(context.Background(), a.ID); got.State != approval.Executed {
		t.Errorf("state after execution = %s", got.State)
	}
	if _, err := store.Execute(context.Background(), a.ID, a.Body); !errors.Is(err, approval.ErrNotApproved) {
		t.Errorf("an executed approval could be executed again: %v", err)
	}
	// Every step is recorded, each under the approval's id.
	steps := map[string]string{}
	for _, rec := range g.audit.All() {
		if rec.Agent != "bot-1" || rec.Role != "reader" {
			t.Errorf("record %s names agent %q, role %q", rec.Code, rec.Agent, rec.Role)
		}
		steps[rec.Code] = rec.ApprovalID
	}
	for _, code := range []string{CodeApprovalParked, CodeApprovalApproved, CodeExecuted} {
		if id, ok := steps[code]; !ok || id != a.ID {
			t.Errorf("the %s record: present %v, approval id %q; want %q (records by code: %v)", code, ok, id, a.ID, steps)
		}
	}
}

// alteringStore is a store that keeps another request than the one it is
// given to park, as a store whose data was altered would: what a human
// reviews is then not what the agent sent.
type alteringStore struct {
	approval.Store
	body []byte
}

func (s alteringStore) Create(ctx context.Context, a *approval.Approval) error {
	c := *a
	c.Body = s.body
	return s.Store.Create(ctx, &c)
}

// An approved call runs only if the store holds the very request that was
// parked; else it is voided and audited.
func TestApprovedCallRunsOnlyAsParked(t *testing.T) {
	other := []byte(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_9"}}}`)
	for _, overHTTP := range []bool{false, true} {
		t.Run(map[bool]string{false: "sdk", true: "direct"}[overHTTP], func(t *testing.T) {
			mem := approval.NewMemory(nil)
			g := parkedGatewayOver(t, overHTTP, alteringStore{mem, other})
			agent := newRawAgent(t, g)
			parked := make(chan *approval.Approval, 1)
			go func() {
				a := parkedOne(t, mem)
				mem.Finish(context.Background(), a.ID, approval.Approved, "alice", "", time.Now())
				parked <- a
			}()
			got := agent.post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
			const want = "approved call not executed: the stored request is not the one parked"
			if len(got) == 0 || !strings.Contains(got[len(got)-1], want) {
				t.Errorf("answer %q, want an error saying %q", got, want)
			}
			if d := g.deletions(); len(d) != 0 {
				t.Errorf("the upstream ran %q", d)
			}
			a := <-parked
			checkVoided(t, g, mem, a.ID, CodeApprovalAltered, "the stored request is not the one parked")
			checkRefusal(t, []byte(got[len(got)-1]), CodeApprovalAltered, a)
		})
	}
}

// checkRefusal checks that answer, a JSON-RPC error refusing a call that
// needed approval, says why in its data as the audit log does (code) and
// names the call's decision and, when a is not nil, its approval.
func checkRefusal(t *testing.T, answer []byte, code string, a *approval.Approval) {
	t.Helper()
	var got struct {
		Error struct {
			Data struct {
				Code       string `json:"code"`
				DecisionID string `json:"decision_id"`
				ApprovalID string `json:"approval_id"`
			} `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("answer %s: %v", answer, err)
	}
	d := got.Error.Data
	want := struct{ code, approval string }{code, ""}
	if a != nil {
		want.approval = a.ID
	}
	if d.Code != want.code || d.ApprovalID != want.approval || d.DecisionID == "" || a != nil && d.DecisionID != a.DecisionID {
		t.Errorf("error data %+v in %s; want code %s, approval %q and the call's decision", d, answer, want.code, want.approval)
	}
}

// checkRefusalError is checkRefusal for an error of the go-sdk's client.
func checkRefusalError(t *testing.T, err error, code string, a *approval.Approval) {
	t.Helper()
	var rpc *jsonrpc.Error
	if !errors.As(err, &rpc) {
		t.Fatalf("error %v is not a JSON-RPC error", err)
	}
	answer, _ := json.Marshal(map[string]any{"error": rpc})
	checkRefusal(t, answer, code, a)
}

// checkVoided checks that the approval id was voided for why, and that
// the audit log says so once, under code.
func checkVoided(t *testing.T, g *gateway, store approval.Store, id, code, why string) {
	t.Helper()
	got, err := store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != approval.Voided || got.VoidReason != why {
		t.Errorf("approval after the refusal: %s for %q; want voided for %q", got.State, got.VoidReason, why)
	}
	var recs []audit.Record
	for _, rec := range g.audit.All() {
		if rec.Code == code {
			recs = append(recs, rec)
		}
	}
	if len(recs) != 1 || recs[0].ApprovalID != id || recs[0].Reason != why {
		t.Errorf("%s records: %+v, want one for %s saying %q", code, recs, id, why)
	}
}

// Denied and expired calls never reach the upstream; the agent reads why.
func TestDeniedAndExpiredCallsDoNotRun(t *testing.T) {
	t.Run("denied", func(t *testing.T) {
		store := approval.NewMemory(nil)
		g := parkedGateway(t, store)
		cs := g.connect(t, nil)
		errs := make(chan error, 1)
		go func() {
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_1"}`)})
			errs <- err
		}()
		a := parkedOne(t, store)
		if _, err := store.Finish(context.Background(), a.ID, approval.Denied, "bob", "not on a Friday", time.Now()); err != nil {
			t.Fatal(err)
		}
		err := <-errs
		if err == nil || !strings.Contains(err.Error(), "denied by bob: not on a Friday") {
			t.Fatalf("denied call: %v", err)
		}
		checkRefusalError(t, err, CodeApprovalDenied, a)
		if d := g.deletions(); len(d) != 0 {
			t.Errorf("a denied call ran: %v", d)
		}
	})
	t.Run("expired", func(t *testing.T) {
		store := approval.NewMemory(nil)
		g := parkedGateway(t, store, func(o *Options) { o.ApprovalTTL = 100 * time.Millisecond })
		cs := g.connect(t, nil)
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_1"}`)})
		if err == nil || !strings.Contains(err.Error(), "approval expired") {
			t.Errorf("expired call: %v", err)
		}
		list, _ := store.List(context.Background(), approval.Expired)
		if len(list) != 1 {
			t.Fatalf("expired approvals: %v", list)
		}
		checkRefusalError(t, err, CodeApprovalExpired, list[0])
		if d := g.deletions(); len(d) != 0 {
			t.Errorf("an expired call ran: %v", d)
		}
	})
}

// failingFinishes is a store whose Finish fails while failing is set,
// and says so on failed.
type failingFinishes struct {
	approval.Store
	failing *atomic.Bool
	failed  chan struct{}
}

func (s failingFinishes) Finish(ctx context.Context, id string, to approval.State, by, reason string, at time.Time) (*approval.Approval, error) {
	if s.failing.Load() {
		select {
		case s.failed <- struct{}{}:
		default:
		}
		return nil, errors.New("store unavailable")
	}
	return s.Store.Finish(ctx, id, to, by, reason, at)
}

// A call whose approval expires while the store cannot record it waits
// until the store can, then is told it expired, rather than wait on.
func TestExpiryOutlastsAFailingStore(t *testing.T) {
	mem := approval.NewMemory(nil)
	failing := &atomic.Bool{}
	failing.Store(true)
	store := failingFinishes{mem, failing, make(chan struct{}, 1)}
	g := parkedGateway(t, store, func(o *Options) { o.ApprovalTTL, o.StoreRetry = 50*time.Millisecond, 10*time.Millisecond })
	cs := g.connect(t, nil)
	go func() {
		<-store.failed
		failing.Store(false)
	}()
	// Should the call wait on, it is given up after a while, so that the
	// test fails rather than hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_1"}`)})
	if err == nil || !strings.Contains(err.Error(), "approval expired") {
		t.Errorf("call whose approval expired: %v", err)
	}
	if list, _ := mem.List(context.Background(), approval.Expired); len(list) != 1 {
		t.Errorf("expired approvals in the store: %v", list)
	}
}

// A call whose approval the store loses (Redis restarted without
// persistence) is refused, saying so, and the loss is audited: the
// broker neither waits on an approval no one can decide nor keeps
// retrying its expiry.
func TestLostApprovalIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	store := approval.NewRedis(srv.Client(), nil)
	g := parkedGateway(t, store, func(o *Options) { o.ApprovalTTL, o.StoreRetry = 500*time.Millisecond, 20*time.Millisecond })
	cs := g.connect(t, nil)
	// Should the call wait on, it is given up after a while, so that the
	// test fails rather than hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_1"}`)})
		errs <- err
	}()
	a := parkedOne(t, store)
	srv.Restart()
	want := "call needing approval " + a.ID + " was not run: the approval store lost approval " + a.ID + "; send the call again to ask anew"
	err := <-errs
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("call whose approval was lost: %v, want an error saying %q", err, want)
	}
	checkRefusalError(t, err, CodeApprovalLost, a)
	var lost []audit.Record
	for _, rec := range g.audit.All() {
		if rec.Code == CodeApprovalLost {
			lost = append(lost, rec)
		}
	}
	if len(lost) != 1 || lost[0].ApprovalID != a.ID || lost[0].Reason != "the approval store lost the approval" {
		t.Errorf("%s records: %+v, want one for %s", CodeApprovalLost, lost, a.ID)
	}
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("the upstream ran %q", d)
	}
}

// forgettingStore is a store that has lost every approval by the time
// the broker ends one, and whose Wait has not noticed.
type forgettingStore struct{ approval.Store }

func (forgettingStore) Wait(ctx context.Context, _ string) (*approval.Approval, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (forgettingStore) Finish(context.Context, string, approval.State, string, string, time.Time) (*approval.Approval, error) {
	return nil, approval.ErrNotFound
}

// An approval found lost as the broker expires or cancels it ends there,
// audited, its call refused if anyone is waiting for the answer.
func TestLostApprovalEndsItsWait(t *testing.T) {
	const call = `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		end  func(g *gateway, stop context.CancelFunc)
	}{
		{"at expiry", 50 * time.Millisecond, func(*gateway, context.CancelFunc) {}},
		{"at drain", time.Minute, func(g *gateway, _ context.CancelFunc) { g.broker.Drain() }},
		{"as the agent leaves", time.Minute, func(_ *gateway, stop context.CancelFunc) { stop() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := approval.NewMemory(nil)
			g := parkedGateway(t, forgettingStore{mem}, func(o *Options) { o.ApprovalTTL, o.StoreRetry = tc.ttl, 10*time.Millisecond })
			agent := newRawAgent(t, g)
			// Should the call wait on, it is given up after a while, so
			// that the test fails rather than hangs.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			answered := make(chan string, 1)
			go func() { answered <- agent.read(ctx, call) }()
			a := parkedOne(t, mem)
			tc.end(g, cancel)
			got := <-answered
			if tc.name != "as the agent leaves" {
				want := "call needing approval " + a.ID + " was not run: the approval store lost approval " + a.ID
				if !strings.Contains(got, `"id":5`) || !strings.Contains(got, want) {
					t.Errorf("answer %q, want an error saying %q", got, want)
				}
			}
			for deadline := time.Now().Add(20 * time.Second); !slices.Contains(g.audit.Codes(), CodeApprovalLost); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("audit codes %v, want %s", g.audit.Codes(), CodeApprovalLost)
				}
			}
		})
	}
}

// An agent may have MaxPendingApprovalsPerAgent calls waiting for
// approval at once: each holds its request in the store. The next is
// refused, readably and audited, and parks nothing, until one is decided;
// another agent has its own.
func TestPendingApprovalLimit(t *testing.T) {
	store := approval.NewMemory(nil)
	// Should a call past the limit be parked, it expires after a while,
	// so that the test fails rather than hangs.
	g := parkedGateway(t, store, func(o *Options) { o.MaxPendingApprovalsPerAgent, o.ApprovalTTL = 2, 10*time.Second })
	call := func(id int) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_%d"}}}`, id, id)
	}
	pending := func(n int) []*approval.Approval {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			list, err := store.List(context.Background(), approval.Pending)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) == n {
				return list
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d calls waiting for approval, want %d", len(list), n)
			}
		}
	}
	agent := newRawAgent(t, g)
	answered := make(chan []string, 3)
	for id := range 2 {
		go func() { answered <- agent.post(call(id)) }()
	}
	parked := pending(2)

	got := agent.post(call(7))
	const why = `agent \"bot-1\" has 2 calls waiting for approval, as many as the gateway allows it`
	if len(got) != 1 || !strings.Contains(got[0], `"id":7`) || !strings.Contains(got[0], why) || !strings.Contains(got[0], `"code":-32002`) {
		t.Fatalf("a third call: %q; want a JSON-RPC error -32002 saying %s", got, why)
	}
	checkRefusal(t, []byte(got[0]), CodeApprovalLimit, nil)
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeApprovalLimit) {
		t.Errorf("audit codes %v, want %s", codes, CodeApprovalLimit)
	}
	pending(2)

	other, _, err := tokens.Issue(context.Background(), g.tokens, "bot-2", "reader", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	second := &rawAgent{t: t, url: g.url, token: other}
	second.post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + rawVersion + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	second.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	go func() { answered <- second.post(call(8)) }()
	pending(3)

	// A decision frees a place.
	if _, err := store.Finish(context.Background(), parked[0].ID, approval.Denied, "alice", "no", time.Now()); err != nil {
		t.Fatal(err)
	}
	<-answered
	go func() { answered <- agent.post(call(9)) }()
	for _, a := range pending(3) {
		if _, err := store.Finish(context.Background(), a.ID, approval.Denied, "alice", "no", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if got := <-answered; len(got) == 0 || !strings.Contains(got[len(got)-1], "denied by alice") {
			t.Errorf("answer %q, want the denial", got)
		}
	}
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("the upstream ran %q", d)
	}
}

// failingCreates is a store that cannot take new approvals.
type failingCreates struct{ approval.Store }

func (failingCreates) Create(context.Context, *approval.Approval) error {
	return errors.New("store unavailable")
}

// A call that needs approval and cannot wait for it is refused with the
// reason, which is audited, and runs nothing.
func TestCallsThatCannotBeParked(t *testing.T) {
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	for _, tc := range []struct {
		name  string
		store approval.Store
		send  func(t *testing.T, g *gateway) string
		want  string
		code  string // the broker's audit code
	}{
		{"no session", approval.NewMemory(nil), func(t *testing.T, g *gateway) string {
			_, body := postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token}, call)
			return body
		}, "this request needs the Mcp-Session-Id header of a session", CodeSessionRequired},
		{"unknown session", approval.NewMemory(nil), func(t *testing.T, g *gateway) string {
			_, body := postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": "gone"}, call)
			return body
		}, "a call that needs approval must come in an initialized MCP session", CodeApprovalUnavailable},
		{"not a tools/call", approval.NewMemory(nil), func(t *testing.T, g *gateway) string {
			// authz never decides so; the broker holds anyway.
			sid := newRawAgent(t, g).sid
			body := `{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"notion__summarize","arguments":{"page":"p"}}}`
			d := authz.Decision{ID: "d-7", Agent: "bot-1", Role: "reader", Verdict: "needs_approval", BodySHA256: sha256.Sum256([]byte(body)),
				Method: "POST", Session: sid}
			_, answer := postMCP(t, g.brokerURL, map[string]string{authz.HeaderDecision: g.signer.Sign(d), authz.HeaderAgent: "bot-1",
				authz.HeaderRole: "reader", authz.HeaderDecisionID: "d-7", "Mcp-Session-Id": sid}, body)
			return answer
		}, "only a single tools/call can wait for approval", CodeApprovalUnavailable},
		{"store fails", failingCreates{approval.NewMemory(nil)}, func(t *testing.T, g *gateway) string {
			agent := newRawAgent(t, g)
			return strings.Join(agent.post(call), "\n")
		}, "this call needs human approval, and the approval store failed", CodeApprovalUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := parkedGateway(t, tc.store)
			got := tc.send(t, g)
			if !strings.Contains(got, `"id":7`) || !strings.Contains(got, tc.want) {
				t.Errorf("answer %s, want a JSON-RPC error saying %q", got, tc.want)
			}
			if tc.code == CodeApprovalUnavailable {
				checkRefusal(t, []byte(got), CodeApprovalUnavailable, nil)
			}
			if codes := g.audit.Codes(); !slices.Equal(codes, []string{tc.code}) {
				t.Errorf("broker audit codes %v, want %s", codes, tc.code)
			}
			if d := g.deletions(); len(d) != 0 {
				t.Errorf("the upstream ran %q", d)
			}
		})
	}
}

// Without an approval store, a call that needs approval is refused,
// saying so, audited, and runs nothing: in a session and without one.
func TestCallNeedingApprovalWithoutAStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		post func(g *gateway) []string
	}{
		{"session", func(g *gateway) []string {
			return newRawAgent(t, g).post(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
		}},
		{"sessionless", func(g *gateway) []string {
			return newStatelessRawAgent(t, g).post(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"},"_meta":` + requestMeta("") + `}}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGatewayOver(t, false, func(o *Options) { o.Sessionless = true })
			got := tc.post(g)
			const want = "this call needs human approval, and no approval store is configured"
			if len(got) != 1 || !strings.Contains(got[0], `"id":7`) || !strings.Contains(got[0], want) {
				t.Fatalf("answer %q, want a JSON-RPC error saying %q", got, want)
			}
			checkRefusal(t, []byte(got[0]), CodeApprovalUnavailable, nil)
			if codes := g.audit.Codes(); !slices.Equal(codes, []string{CodeApprovalUnavailable}) {
				t.Errorf("broker audit codes %v, want %s", codes, CodeApprovalUnavailable)
			}
			if d := g.deletions(); len(d) != 0 {
				t.Errorf("the upstream ran %q", d)
			}
		})
	}
}

// forgingWaits is a store whose decided approvals name another decision
// than the one parked, as a store someone else can write to might.
type forgingWaits struct{ approval.Store }

func (s forgingWaits) Wait(ctx context.Context, id string) (*approval.Approval, error) {
	a, err := s.Store.Wait(ctx, id)
	if a != nil {
		c := *a
		c.DecisionID = "forged"
		a = &c
	}
	return a, err
}

// A refusal names the call's own decision, whatever the store says.
func TestRefusalNamesTheCallsOwnDecision(t *testing.T) {
	mem := approval.NewMemory(nil)
	g := parkedGateway(t, forgingWaits{mem})
	parked := make(chan *approval.Approval, 1)
	go func() {
		a := parkedOne(t, mem)
		parked <- a
		if _, err := mem.Finish(context.Background(), a.ID, approval.Denied, "bob", "no", time.Now()); err != nil {
			t.Error(err)
		}
	}()
	got := newRawAgent(t, g).post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	if len(got) == 0 {
		t.Fatal("no answer")
	}
	checkRefusal(t, []byte(got[len(got)-1]), CodeApprovalDenied, <-parked)
}

// A draining broker answers the calls waiting for approval and cancels
// their approvals, and parks no new ones; should the store fail to cancel
// one, its call is answered all the same, and the refusal audited.
func TestDrainAnswersParkedCalls(t *testing.T) {
	call := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	// Should a call wait on, it expires after a while, so that the test
	// fails rather than hangs.
	ttl := func(o *Options) { o.ApprovalTTL = 5 * time.Second }
	t.Run("cancelled", func(t *testing.T) {
		store := approval.NewMemory(nil)
		g := parkedGateway(t, store, ttl)
		agent := newRawAgent(t, g)
		go func() {
			parkedOne(t, store)
			g.broker.Drain()
		}()
		got := agent.post(call)
		if last := got[len(got)-1]; !strings.Contains(last, `"id":5`) || !strings.Contains(last, "approval cancelled: the gateway shut down before a decision") {
			t.Errorf("answer %q, want one saying the gateway shut down", got)
		}
		list, _ := store.List(context.Background(), approval.Cancelled)
		if len(list) != 1 {
			t.Fatalf("cancelled approvals: %v", list)
		}
		checkRefusal(t, []byte(got[len(got)-1]), CodeApprovalCancelled, list[0])
		got = agent.post(call)
		if len(got) != 1 || !strings.Contains(got[0], "this call needs human approval, and the gateway is shutting down") {
			t.Errorf("a call needing approval after Drain: %q", got)
		}
		if list, _ := store.List(context.Background(), ""); len(list) != 1 {
			t.Errorf("approvals in the store: %v, want only the first", list)
		}
		if d := g.deletions(); len(d) != 0 {
			t.Errorf("the upstream ran %q", d)
		}
		if codes := g.audit.Codes(); !slices.Contains(codes, CodeApprovalCancelled) || !slices.Contains(codes, CodeApprovalUnavailable) {
			t.Errorf("audit codes %v, want the cancellation and the refusal", codes)
		}
	})
	t.Run("store failing", func(t *testing.T) {
		mem := approval.NewMemory(nil)
		failing := &atomic.Bool{}
		store := failingFinishes{mem, failing, make(chan struct{}, 1)}
		g := parkedGateway(t, store, ttl)
		agent := newRawAgent(t, g)
		go func() {
			parkedOne(t, mem)
			failing.Store(true)
			g.broker.Drain()
			// The call expires, once the store recovers, if Drain did
			// not answer it.
			time.AfterFunc(10*time.Second, func() { failing.Store(false) })
		}()
		got := agent.post(call)
		last := got[len(got)-1]
		if !strings.Contains(last, "was not run: the gateway is shutting down") {
			t.Errorf("answer %q, want one saying the gateway is shutting down", got)
		}
		a := parkedOne(t, mem)
		checkRefusal(t, []byte(last), CodeApprovalUnavailable, a)
		// The refusal the agent is told of is the audit log's too.
		var refused []audit.Record
		for _, rec := range g.audit.All() {
			if rec.Code == CodeApprovalUnavailable {
				refused = append(refused, rec)
			}
		}
		if len(refused) != 1 || refused[0].ApprovalID != a.ID || refused[0].DecisionID != a.DecisionID {
			t.Errorf("audit records %+v, want one %s naming approval %s and its decision", refused, CodeApprovalUnavailable, a.ID)
		}
	})
}

// An agent that goes away while its call waits cancels the approval;
// approving it afterwards runs nothing.
func TestAbandonedCallIsCancelled(t *testing.T) {
	store := approval.NewMemory(nil)
	g := parkedGateway(t, store)
	ctx, cancel := context.WithCancel(context.Background())
	newRawAgent(t, g).postUntil(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p := parkedOne(t, store)
	cancel()
	awaitState(t, store, p.ID, approval.Cancelled)
	if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "", time.Now()); !errors.Is(err, approval.ErrNotPending) {
		t.Errorf("approving a cancelled call: %v", err)
	}
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("an abandoned call ran: %v", d)
	}
}

// The approval rule's timeout shortens the wait, and never lengthens it
// past the gateway's.
func TestApprovalRuleTimeout(t *testing.T) {
	for _, tc := range []struct {
		gateway, want time.Duration
	}{
		{0, 10 * time.Minute},              // the rule's, under the default 15 minutes
		{5 * time.Minute, 5 * time.Minute}, // the gateway's, shorter than the rule's
	} {
		store := approval.NewMemory(nil)
		g := parkedGateway(t, store, func(o *Options) { o.ApprovalTTL = tc.gateway })
		ctx, cancel := context.WithCancel(context.Background())
		newRawAgent(t, g).postUntil(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
		p := parkedOne(t, store)
		cancel()
		if got := p.Expires.Sub(p.Created); got != tc.want {
			t.Errorf("gateway's approval TTL %v: the call may wait %v, want %v", tc.gateway, got, tc.want)
		}
	}
}

// An agent that cancels a waiting call (notifications/cancelled, with its
// request still open) or ends its session cancels the approval: the call
// is not answered, and approving it afterwards runs nothing.
func TestCancelledCallIsNotRun(t *testing.T) {
	const call = `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	for _, tc := range []struct {
		name   string
		cancel func(t *testing.T, g *gateway, a *rawAgent)
		reason error
	}{
		{"notifications/cancelled", func(t *testing.T, g *gateway, a *rawAgent) {
			a.post(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":42,"reason":"stop"}}`)
		}, errCancelledByAgent},
		{"DELETE", func(t *testing.T, g *gateway, a *rawAgent) {
			h := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": a.sid, "Mcp-Protocol-Version": rawVersion}
			if code, body := sendMCP(t, "DELETE", g.url, h, ""); code/100 != 2 {
				t.Fatalf("DELETE: %d %s", code, body)
			}
		}, errSessionEnded},
	} {
		for _, overHTTP := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/overHTTP=%v", tc.name, overHTTP), func(t *testing.T) {
				store := approval.NewMemory(nil)
				g := parkedGatewayOver(t, overHTTP, store)
				a := newRawAgent(t, g)
				warmRaw(a)
				answered := make(chan []string, 1)
				go func() { answered <- a.post(call) }()
				p := parkedOne(t, store)
				tc.cancel(t, g, a)
				awaitState(t, store, p.ID, approval.Cancelled)
				if got, _ := store.Get(context.Background(), p.ID); got.Reason != tc.reason.Error() {
					t.Errorf("cancelled for %q, want %q", got.Reason, tc.reason)
				}
				if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "", time.Now()); !errors.Is(err, approval.ErrNotPending) {
					t.Errorf("approving a cancelled call: %v", err)
				}
				for _, m := range <-answered {
					if strings.Contains(m, `"id":42`) {
						t.Errorf("the cancelled call was answered: %s", m)
					}
				}
				if d := g.deletions(); len(d) != 0 {
					t.Errorf("a cancelled call ran: %v", d)
				}
			})
		}
	}
}

// approvingStore is a store in which a human approves every approval just
// before the broker can cancel it.
type approvingStore struct{ approval.Store }

func (s approvingStore) Finish(ctx context.Context, id string, to approval.State, by, reason string, at time.Time) (*approval.Approval, error) {
	if to == approval.Cancelled {
		if _, err := s.Store.Finish(ctx, id, approval.Approved, "alice", "go ahead", at); err != nil {
			return nil, err
		}
	}
	return s.Store.Finish(ctx, id, to, by, reason, at)
}

// A call approved as its agent went away is not run: the approval is
// voided, and the audit log has the decision and why it did not run.
func TestCallApprovedAsItsAgentLeftIsVoided(t *testing.T) {
	mem := approval.NewMemory(nil)
	g := parkedGateway(t, approvingStore{mem})
	ctx, cancel := context.WithCancel(context.Background())
	newRawAgent(t, g).postUntil(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p := parkedOne(t, mem)
	cancel()
	checkApprovedTooLate(t, g, mem, p)
}

// A session whose call waits for approval is not idle: the reaper leaves
// it, and the approved call is answered on it.
func TestWaitingCallKeepsItsSession(t *testing.T) {
	store := approval.NewMemory(nil)
	g := parkedGateway(t, store, func(o *Options) { o.SessionIdle = 20 * time.Millisecond })
	a := newRawAgent(t, g)
	answered := make(chan []string, 1)
	go func() {
		answered <- a.post(`{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	}()
	p := parkedOne(t, store)
	time.Sleep(300 * time.Millisecond) // many idle periods, the reaper looking every 10 ms
	if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "", time.Now()); err != nil {
		t.Fatalf("approving the waiting call: %v", err)
	}
	if got := <-answered; len(got) == 0 || !strings.Contains(got[len(got)-1], `"id":42`) || !strings.Contains(got[len(got)-1], `"result"`) {
		t.Errorf("the approved call's answer: %q", got)
	}
}

// An agent that goes away while the store cannot record it still has its
// approval cancelled, once the store recovers.
func TestAbandonedCallIsCancelledOnceTheStoreRecovers(t *testing.T) {
	_, mem, failing, p := abandonedWhileTheStoreFails(t)
	failing.Store(false)
	awaitState(t, mem, p.ID, approval.Cancelled)
}

// abandonedWhileTheStoreFails parks a call, and has its agent go away
// while the store fails: it returns once the broker's cancellation of the
// approval has failed, and retries, until failing is cleared.
func abandonedWhileTheStoreFails(t *testing.T) (g *gateway, mem approval.Store, failing *atomic.Bool, p *approval.Approval) {
	t.Helper()
	mem = approval.NewMemory(nil)
	failing = &atomic.Bool{}
	store := failingFinishes{mem, failing, make(chan struct{}, 1)}
	g = parkedGateway(t, store, func(o *Options) { o.StoreRetry = 10 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	newRawAgent(t, g).postUntil(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p = parkedOne(t, mem)
	failing.Store(true)
	cancel()
	<-store.failed
	return g, mem, failing, p
}

// A call reusing the id of a call of its session that waits for approval
// is refused, as the SDK refuses one reusing the id of a request it
// serves, and audited; the waiting call is the session's one under that
// id, and the session's end cancels it.
func TestCallReusingAWaitingCallsIDIsRefused(t *testing.T) {
	store := approval.NewMemory(nil)
	g := parkedGateway(t, store)
	a := newRawAgent(t, g)
	warmRaw(a)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	call := func(page string) string {
		return `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"` + page + `"}}}`
	}
	a.postUntil(ctx, call("pg_1"))
	first := parkedOne(t, store)
	got := answerOrPark(t, a, store, call("pg_2"))
	if !strings.HasPrefix(got, "HTTP 400: ") || !strings.Contains(got, `"id":42`) || !strings.Contains(got, `"code":-32600`) ||
		!strings.Contains(got, "request id 42 is that of a call of this session still in flight or waiting for approval") {
		t.Errorf("a call reusing a waiting call's id: %s", got)
	}
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeRequestIDInUse) {
		t.Errorf("audit codes %v: the refusal is not among them", codes)
	}
	h := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Session-Id": a.sid, "Mcp-Protocol-Version": rawVersion}
	if code, body := sendMCP(t, "DELETE", g.url, h, ""); code/100 != 2 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	awaitState(t, store, first.ID, approval.Cancelled)
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("a call ran: %v", d)
	}
}

// An approved call that was sent upstream is no longer waiting: the
// agent's cancellation of it reaches the upstream, as a direct call's
// does, rather than abandon a wait that is over.
func TestApprovedCallsCancellationReachesTheUpstream(t *testing.T) {
	store := approval.NewMemory(nil)
	// The upstream's call timeout, which would cancel the call too, is
	// well past the test's.
	g := newGatewayTimed(t, true, time.Minute, nil, func(o *Options) { o.Approvals = store })
	hold := func(body []byte) bool { return bytes.Contains(body, []byte(`"name":"delete_page"`)) }
	g.up.holding.Store(&hold)
	a := newRawAgent(t, g)
	warmRaw(a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a failsafe
	defer cancel()
	a.postUntil(ctx, `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p := parkedOne(t, store)
	if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	upstreamGot := func(s string) func() bool {
		return func() bool { return strings.Contains(g.up.lastPost(), s) }
	}
	eventually(t, "the approved call sent upstream", upstreamGot(`"name":"delete_page"`))
	a.read(ctx, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":42}}`)
	eventually(t, "the agent's cancellation passed upstream", upstreamGot(`"method":"notifications/cancelled"`))
}

// answerOrPark sends body from the agent's session, and returns its
// answer as "HTTP <status>: <body>"; it fails the test if the call is
// parked instead, next to the one call parked in store already.
func answerOrPark(t *testing.T, a *rawAgent, store approval.Store, body string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	answer := make(chan string, 1)
	go func() {
		resp, err := a.send(ctx, body)
		if err != nil {
			answer <- err.Error()
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		answer <- fmt.Sprintf("HTTP %d: %s", resp.StatusCode, data)
	}()
	var got string
	eventually(t, "the call answered or parked", func() bool {
		select {
		case got = <-answer:
			return true
		default:
		}
		list, _ := store.List(context.Background(), approval.Pending)
		return len(list) > 1
	})
	if got == "" {
		t.Fatalf("%s was parked, not refused", body)
	}
	return got
}

// A call approved while the broker retries the cancellation of its
// abandoned approval is not run either: as when the approval races its
// agent's going away (TestCallApprovedAsItsAgentLeftIsVoided), the
// decision is audited and the approval voided, not left approved.
func TestCallApprovedDuringItsCancellationRetryIsVoided(t *testing.T) {
	g, mem, failing, p := abandonedWhileTheStoreFails(t)
	// Approved meanwhile, through another replica say.
	if _, err := mem.Finish(context.Background(), p.ID, approval.Approved, "alice", "go ahead", time.Now()); err != nil {
		t.Fatal(err)
	}
	failing.Store(false)
	checkApprovedTooLate(t, g, mem, p)
}

// checkApprovedTooLate checks that p, approved after its agent went away,
// was voided, not run, and that the audit log has the approval and why
// the call did not run.
func checkApprovedTooLate(t *testing.T, g *gateway, mem approval.Store, p *approval.Approval) {
	t.Helper()
	awaitState(t, mem, p.ID, approval.Voided)
	const why = "approved after it was abandoned: the agent went away before a decision"
	checkVoided(t, g, mem, p.ID, CodeApprovalAbandoned, why)
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeApprovalApproved) {
		t.Errorf("audit codes %v: the approval is not among them", codes)
	}
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("an abandoned call ran: %v", d)
	}
}

// postUntil sends body from the agent's session in the background, until
// ctx ends; what comes back is read and dropped.
func (a *rawAgent) postUntil(ctx context.Context, body string) {
	go a.read(ctx, body)
}

// read sends body from the agent's session until ctx ends, and returns
// what came back, or the error.
func (a *rawAgent) read(ctx context.Context, body string) string {
	resp, err := a.send(ctx, body)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return string(data) + err.Error()
	}
	return string(data)
}

// send sends body from the agent's session until ctx ends, and returns
// the response, whose body the caller reads as it comes.
func (a *rawAgent) send(ctx context.Context, body string) (*http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, "POST", a.url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	a.setVersion(req.Header, body)
	if a.sid != "" {
		req.Header.Set("Mcp-Session-Id", a.sid)
	}
	return http.DefaultClient.Do(req)
}

// awaitState waits for the approval id to be in state; the deadline only
// keeps a broken test from hanging.
func awaitState(t *testing.T, store approval.Store, id string, state approval.State) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got, _ := store.Get(context.Background(), id)
		if got.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval %s is %s, want %s", id, got.State, state)
		}
	}
}

// While a call waits, an agent that asked for progress hears of it.
func TestWaitingAgentGetsProgress(t *testing.T) {
	store := approval.NewMemory(nil)
	g := parkedGateway(t, store, func(o *Options) { o.KeepAlive = 10 * time.Millisecond })
	a := newRawAgent(t, g)
	go func() {
		p := parkedOne(t, store)
		time.Sleep(50 * time.Millisecond) // a few keep-alives
		store.Finish(context.Background(), p.ID, approval.Approved, "alice", "", time.Now())
	}()
	got := a.post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_2"},"_meta":{"progressToken":"w"}}}`)
	if len(got) < 2 || !strings.Contains(got[0], `"method":"notifications/progress"`) || !strings.Contains(got[0], "waiting for human approval apr_") {
		t.Fatalf("stream of a waiting call = %q", got)
	}
	if last := got[len(got)-1]; !strings.Contains(last, `"id":4`) || !strings.Contains(last, `"text":"deleted"`) {
		t.Errorf("last message = %s, want the result", last)
	}
}

// An agent session ends once every token used in it is revoked: its calls
// waiting for approval are cancelled, and its state goes. While a token
// lives, its session stays.
func TestRevokedTokensEndTheSession(t *testing.T) {
	var st atomic.Value // the gateway's token store, once it exists
	live := func(ctx context.Context, ids []string) (map[string]bool, error) {
		s, _ := st.Load().(tokens.Store)
		if s == nil {
			return nil, errors.New("no token store yet")
		}
		return tokens.Live(ctx, s, ids, time.Now())
	}
	store := approval.NewMemory(nil)
	g := parkedGateway(t, store, func(o *Options) { o.LiveTokens, o.TokenCheck = live, 10*time.Millisecond })
	st.Store(g.tokens)
	a := newRawAgent(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.postUntil(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p := parkedOne(t, store)

	time.Sleep(100 * time.Millisecond) // ten looks at the live tokens
	if g.broker.sessionByID(a.sid) == nil {
		t.Fatal("the session of a live token ended")
	}
	digest, err := tokens.Parse(g.token)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.tokens.Revoke(context.Background(), digest.ID(), time.Now()); err != nil {
		t.Fatal(err)
	}
	awaitState(t, store, p.ID, approval.Cancelled)
	if got, _ := store.Get(context.Background(), p.ID); got.Reason != errSessionEnded.Error() {
		t.Errorf("cancelled for %q, want %q", got.Reason, errSessionEnded)
	}
	eventually(t, "the session to go", func() bool { return g.broker.sessionByID(a.sid) == nil })
}

// What allowed a parked call is checked again when it is approved: a call
// whose agent's token was revoked, or that the policy in force no longer
// grants, is not run, and the agent and the audit log are told why. A
// human's approval releases a call the policy holds; it does not overrule
// the policy.
func TestApprovedCallIsCheckedAgain(t *testing.T) {
	call := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, g *gateway, revoked *atomic.Bool)
		want   string
	}{
		{"token revoked", func(t *testing.T, g *gateway, revoked *atomic.Bool) { revoked.Store(true) },
			"the agent's token was revoked or expired while the call waited"},
		{"no longer granted", func(t *testing.T, g *gateway, _ *atomic.Bool) {
			set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(strings.Replace(testRole,
				"      - name: delete_page\n        constraints: { page_id: {} }\n", "", 1))}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			g.policy.set.Store(set)
		}, `the policy in force no longer allows it: tool "notion__delete_page" is not granted to role "reader"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var revoked atomic.Bool
			var tokenID atomic.Value
			live := func(_ context.Context, ids []string) (map[string]bool, error) {
				id, _ := tokenID.Load().(string)
				if !slices.Equal(ids, []string{id}) {
					return nil, fmt.Errorf("asked about tokens %q, want only the call's, %s", ids, id)
				}
				return map[string]bool{id: !revoked.Load()}, nil
			}
			store := approval.NewMemory(nil)
			// The sessions of revoked tokens are not looked at in time:
			// the check at execution is what stops the call.
			g := parkedGateway(t, store, func(o *Options) { o.LiveTokens, o.TokenCheck = live, time.Hour })
			digest, err := tokens.Parse(g.token)
			if err != nil {
				t.Fatal(err)
			}
			tokenID.Store(digest.ID())
			agent := newRawAgent(t, g)
			answer := make(chan []string, 1)
			go func() { answer <- agent.post(call) }()
			p := parkedOne(t, store)
			tc.change(t, g, &revoked)
			if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "ok", time.Now()); err != nil {
				t.Fatal(err)
			}
			got := <-answer
			var last struct {
				ID    int
				Error struct{ Message string }
			}
			if len(got) > 0 {
				json.Unmarshal([]byte(got[len(got)-1]), &last)
			}
			if last.ID != 9 || last.Error.Message != "approved call not executed: "+tc.want {
				t.Errorf("answer %q, want the call refused: %s", got, tc.want)
			}
			if d := g.deletions(); len(d) != 0 {
				t.Errorf("the upstream ran %q", d)
			}
			checkVoided(t, g, store, p.ID, CodeApprovalStale, tc.want)
			checkRefusal(t, []byte(got[len(got)-1]), CodeApprovalStale, p)
		})
	}
}

// switchedAudit records until failing is set, then refuses every record,
// as a full disk or queue makes the audit logger do.
type switchedAudit struct {
	audittest.Recorder
	failing atomic.Bool
}

func (s *switchedAudit) Log(rec *audit.Record) error {
	if s.failing.Load() {
		return audit.ErrUnavailable
	}
	return s.Recorder.Log(rec)
}

// A call whose approval cannot be audited does not run: every decision
// is recorded, and what cannot be recorded is refused. An approval the
// audit log cannot take is voided, and its agent told; a call whose
// parking it cannot take is not parked.
func TestApprovalStepsAuditedOrNotRun(t *testing.T) {
	call := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	t.Run("approved", func(t *testing.T) {
		store := approval.NewMemory(nil)
		aud := &switchedAudit{}
		g := parkedGateway(t, store, func(o *Options) { o.Audit = aud })
		agent := newRawAgent(t, g)
		answer := make(chan []string, 1)
		go func() { answer <- agent.post(call) }()
		p := parkedOne(t, store)
		aud.failing.Store(true)
		if _, err := store.Finish(context.Background(), p.ID, approval.Approved, "alice", "ok", time.Now()); err != nil {
			t.Fatal(err)
		}
		got := <-answer
		if d := g.deletions(); len(d) != 0 {
			t.Errorf("the call ran upstream (%q) though its approval could not be audited", d)
		}
		if len(got) == 0 || !strings.Contains(got[len(got)-1], "the audit log could not record its approval") {
			t.Errorf("answer %q, want the call refused for want of its record", got)
		}
		if a, _ := store.Get(context.Background(), p.ID); a.State != approval.Voided {
			t.Errorf("approval %s, want voided", a.State)
		}
	})
	t.Run("parked", func(t *testing.T) {
		store := approval.NewMemory(nil)
		aud := &switchedAudit{}
		aud.failing.Store(true)
		// A short wait, so that a call parked unrecorded is answered
		// (expired), not waited on for the test's life.
		g := parkedGateway(t, store, func(o *Options) { o.Audit, o.ApprovalTTL = aud, 2*time.Second })
		got := newRawAgent(t, g).post(call)
		if len(got) == 0 || !strings.Contains(got[len(got)-1], "the audit log") {
			t.Errorf("answer %q, want the call refused for want of its record", got)
		}
		if pending, _ := store.List(context.Background(), approval.Pending); len(pending) != 0 {
			t.Errorf("%d approvals pending, for a call whose parking was not recorded", len(pending))
		}
	})
}
