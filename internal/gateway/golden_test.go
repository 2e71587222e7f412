package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/front"
)

// grpcCheck is authz as Envoy reaches it: a gRPC client.
type grpcCheck struct{ c authv3.AuthorizationClient }

func (g grpcCheck) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return g.c.Check(ctx, req)
}

// TestGoldenScenariosInBothModes runs one set of scenarios against the
// standalone gateway and against the Envoy-mode path — Check over gRPC,
// then the broker over HTTP on its own listener — so that the two cannot
// drift apart.
func TestGoldenScenariosInBothModes(t *testing.T) {
	gw, modes := goldenModes(t)
	for mode, endpoint := range modes {
		t.Run(mode, func(t *testing.T) { runGolden(t, gw, endpoint) })
	}
}

// goldenModes serves a gateway with the example policies and returns its
// MCP endpoint in each mode: standalone, and Envoy's, as a stand-in for
// its filter chain and as AMG's xDS server configures it.
func goldenModes(t *testing.T) (*Gateway, map[string]string) {
	dir := t.TempDir()
	cfg := config.Default()
	serveSessionless(cfg)
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.BrokerListen = "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = filepath.Join(dir, "data"), "../../policies"
	gw := serveForTest(t, cfg, nil)
	envoy := envoyStandIn(t, gw)

	// Envoy as AMG's xDS server configures it for this gateway.
	xcfg := *cfg
	xcfg.Envoy.AuthzAddress, xcfg.Envoy.BrokerAddresses = gw.AuthzAddr(), []string{gw.BrokerAddr()}
	fromXDS := httptest.NewServer(envoyFromXDS(t, &xcfg))
	t.Cleanup(fromXDS.Close)

	return gw, map[string]string{
		"standalone":    "http://" + gw.MCPAddr() + config.MCPPath,
		"envoy":         envoy.URL + config.MCPPath,
		"envoy via xds": fromXDS.URL + config.MCPPath,
	}
}

// envoyStandIn serves Envoy mode for gw, which must have a broker
// listener: a stand-in for Envoy's filter chain, on any Host, that asks
// authz over gRPC and forwards over HTTP to the broker.
func envoyStandIn(t *testing.T, gw *Gateway) *httptest.Server {
	t.Helper()
	conn, err := grpc.NewClient(gw.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	target, _ := url.Parse("http://" + gw.BrokerAddr())
	toBroker := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }, FlushInterval: -1}
	envoy := httptest.NewServer(front.New(grpcCheck{authv3.NewAuthorizationClient(conn)}, toBroker, nil))
	t.Cleanup(envoy.Close)
	return envoy
}

// TestEveryProtocolVersionInBothModes connects an agent asking for each
// protocol version the SDK speaks, in every mode, and checks the version
// it is served and that the policy holds alike: tools the role is not
// granted unlisted, an allowed call answered, a denied one and an unknown
// argument readable, prompts and resources filtered. 2024-11-05, which
// authz does not accept, is answered with the newest version with
// sessions. 2026-07-28, which has none, is served natively: server/discover
// offers it, its requests are decided and audited under the agent's token
// and role, and its call that needs approval is parked and, approved, run.
func TestEveryProtocolVersionInBothModes(t *testing.T) {
	gw, modes := goldenModes(t)
	ctx := context.Background()
	// notion_editor, whose get_pages no rate limit bounds.
	token, info, err := gw.IssueToken(ctx, "versions", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for mode, endpoint := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, tc := range []struct{ asked, served string }{
				{"2024-11-05", "2025-11-25"},
				{"2025-03-26", "2025-03-26"},
				{"2025-06-18", "2025-06-18"},
				{"2025-11-25", "2025-11-25"},
				{"2026-07-28", "2026-07-28"},
			} {
				t.Run(tc.asked, func(t *testing.T) {
					if tc.asked == "2026-07-28" {
						wantVersionsOffered(t, endpoint, token)
					}
					cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
						&mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &http.Client{Transport: bearer{token}}},
						&mcp.ClientSessionOptions{ProtocolVersion: tc.asked})
					if err != nil {
						t.Fatal(err)
					}
					defer cs.Close()
					if got := cs.InitializeResult().ProtocolVersion; got != tc.served {
						t.Errorf("served %s, want %s", got, tc.served)
					}
					// What the demo upstream declares: no subscriptions,
					// completions or logging.
					wantCaps := &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{ListChanged: true},
						Prompts: &mcp.PromptCapabilities{ListChanged: true}, Resources: &mcp.ResourceCapabilities{ListChanged: true}}
					if diff := cmp.Diff(wantCaps, cs.InitializeResult().Capabilities); diff != "" {
						t.Errorf("capabilities announced (-want +got):\n%s", diff)
					}
					if got, want := toolNames(t, cs), []string{"notion__create_page", "notion__delete_page", "notion__get_pages"}; !slices.Equal(got, want) {
						t.Errorf("tools = %v, want %v", got, want)
					}
					res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":2}`)})
					if err != nil || res.IsError || !strings.Contains(text(t, res), "2 pages") {
						t.Errorf("allowed call: %v %+v", err, res)
					}
					_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__search", Arguments: json.RawMessage(`{"query":"q"}`)})
					if err == nil || !strings.Contains(err.Error(), `is not granted to role "notion_editor"`) {
						t.Errorf("denied call: %v", err)
					}
					if rec := auditRecord(t, gw, decisionOf(t, err)); rec.Agent != "versions" || rec.Role != "notion_editor" || rec.TokenID != info.ID || rec.Verdict != "deny" {
						t.Errorf("the denial's audit record = %+v, want it to name agent versions, role notion_editor and token %s", rec, info.ID)
					}
					_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","sudo":true}`)})
					if err == nil || !strings.Contains(err.Error(), `argument "sudo" is not allowed`) {
						t.Errorf("unknown argument: %v", err)
					}
					prompts, err := cs.ListPrompts(ctx, nil)
					if err != nil || len(prompts.Prompts) != 1 || prompts.Prompts[0].Name != "notion__summarize_page" {
						t.Errorf("prompts: %v %+v, want notion__summarize_page alone", err, prompts)
					}
					if _, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__summarize_page", Arguments: map[string]string{"page_id": "pg_roadmap26"}}); err != nil {
						t.Errorf("allowed prompt: %v", err)
					}
					if _, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__summarize_page", Arguments: map[string]string{"page_id": "roadmap"}}); err == nil || !strings.Contains(err.Error(), `argument "page_id"`) {
						t.Errorf("prompt argument out of bounds: %v", err)
					}
					// The role is granted no resources.
					if resources, err := cs.ListResources(ctx, nil); err != nil || len(resources.Resources) != 0 {
						t.Errorf("resources: %v %+v, want none", err, resources)
					}
					if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/pages/pg_roadmap26"}); err == nil || !strings.Contains(err.Error(), "not granted") {
						t.Errorf("ungranted resource: %v", err)
					}
					if tc.asked == "2026-07-28" {
						approvedCallRuns(t, gw, cs)
					}
				})
			}
		})
	}
}

// TestBodyLimitInEveryMode checks that every mode takes a body of
// max_body_bytes and refuses a longer one readably, as too large: the
// standalone front, which cuts a body at the limit and marks it partial,
// and Envoy's filter as the xDS server configures it, which cuts it a
// byte past the limit and may mark it whole.
func TestBodyLimitInEveryMode(t *testing.T) {
	gw, modes := goldenModes(t)
	token, _, err := gw.IssueToken(context.Background(), "body-limit", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	max := config.Default().MaxBodyBytes
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",` +
		`"capabilities":{},"clientInfo":{"name":"agent","version":"1"}}}`
	padded := func(n int) string { return initialize + strings.Repeat(" ", n-len(initialize)) }
	for mode, endpoint := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, n := range []int{max, max + 1, 2 * max} {
				req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(padded(n)))
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				answer, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var r struct {
					Error struct{ Data struct{ Code string } }
				}
				json.Unmarshal(answer, &r)
				switch {
				case n <= max && resp.StatusCode != http.StatusOK:
					t.Errorf("a body of %d bytes, the limit: %d %.200s", n, resp.StatusCode, answer)
				case n > max && (resp.StatusCode != http.StatusRequestEntityTooLarge || r.Error.Data.Code != "body_too_large"):
					t.Errorf("a body of %d bytes, over the limit: %d %.200s; want 413 with code body_too_large", n, resp.StatusCode, answer)
				}
			}
		})
	}
}

// serveSessionless has a gateway serve protocol 2026-07-28 natively.
func serveSessionless(cfg *config.Config) { cfg.MaxProtocolVersion = config.SessionlessProtocolVersion }

// sessionVersion is the newest protocol version with sessions, which the
// agents of tests of what a session does ask for: the go-sdk's client asks
// for a later one, without sessions, unless told.
const sessionVersion = "2025-11-25"

// approvedCallRuns deletes, as cs, a page it creates, a call that needs a
// human's approval, which it gets.
func approvedCallRuns(t *testing.T, gw *Gateway, cs *mcp.ClientSession) {
	t.Helper()
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__create_page", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","title":"to go"}`)})
	if err != nil || res.IsError {
		t.Fatalf("create_page: %v %+v", err, res)
	}
	page := regexp.MustCompile(`pg_[A-Za-z0-9]+`).FindString(text(t, res))
	go decideParked(t, gw, approval.Approved, "ops", "fine")
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"` + page + `"}`)})
	if err != nil || res.IsError || !strings.Contains(text(t, res), "Deleted page "+page) {
		t.Errorf("approved delete_page of %s: %v %+v", page, err, res)
	}
}

// decisionOf is the decision id in the data of a gateway's refusal.
func decisionOf(t *testing.T, err error) string {
	t.Helper()
	var rpcErr *jsonrpc.Error
	var data struct {
		DecisionID string `json:"decision_id"`
	}
	if !errors.As(err, &rpcErr) || json.Unmarshal(rpcErr.Data, &data) != nil || data.DecisionID == "" {
		t.Fatalf("refusal %v names no decision", err)
	}
	return data.DecisionID
}

// goldenScenarios are the calls every mode must answer alike; want is a
// text the result or the error must contain, and code, if set, the reason
// code in the data of the error.
var goldenScenarios = []struct {
	name, role, tool, args string
	allowed                bool
	want, code             string
}{
	{"allowed read", "notion_read", "notion__get_pages", `{"workspace_id":"ws_abc123","limit":2}`, true, "2 pages in workspace ws_abc123", ""},
	{"constraint", "notion_read", "notion__get_pages", `{"workspace_id":"ws_team"}`, false, `argument "workspace_id" is not one of the allowed values`, "constraint_failed"},
	{"unknown argument", "notion_read", "notion__get_pages", `{"workspace_id":"ws_abc123","sudo":true}`, false, `argument "sudo" is not allowed`, "unknown_argument"},
	{"not granted", "notion_read", "notion__delete_page", `{"page_id":"pg_roadmap26"}`, false, `is not granted to role "notion_read"`, "not_granted"},
	{"nested constraint", "notion_read", "notion__search", `{"query":"roadmap","workspace_id":"ws_abc123","filter":{"owner":"Alice"}}`, false, `argument "filter.owner" does not match the required pattern`, "constraint_failed"},
	// Parked for a human, who denies it (see decideParked): error -32002,
	// which carries no reason code.
	{"needs approval, denied", "notion_editor", "notion__delete_page", `{"page_id":"pg_roadmap26"}`, false, "denied by ops: not today", ""},
	{"cel condition", "notion_editor", "notion__create_page", `{"workspace_id":"ws_team","title":"` + strings.Repeat("x", 90) + `"}`, false, "condition", "cel_denied"},
	{"allowed write", "notion_editor", "notion__create_page", `{"workspace_id":"ws_abc123","title":"Q3 plan"}`, true, "Q3 plan", ""},
	// Over support_shadow's max_len 200: a would-be denial, allowed.
	{"shadow allows", "support_shadow", "notion__search", `{"query":"` + strings.Repeat("q", 250) + `","workspace_id":"ws_abc123"}`, true, "", ""},
	{"traversal", "notion_read", "notion__../get_pages", `{}`, false, `tool name "notion__../get_pages" contains ".." at byte 8`, "invalid_name"},
}

// refusalCode is the reason code in the data of a gateway's refusal, or
// "" if err is none.
func refusalCode(err error) string {
	var rpcErr *jsonrpc.Error
	var data struct {
		Code string `json:"code"`
	}
	if !errors.As(err, &rpcErr) || json.Unmarshal(rpcErr.Data, &data) != nil {
		return ""
	}
	return data.Code
}

// decideParked waits for the one pending approval of gw and decides it.
func decideParked(t *testing.T, gw *Gateway, to approval.State, by, reason string) {
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		list, err := gw.approvals.List(ctx, approval.Pending)
		if err != nil {
			t.Error(err)
			return
		}
		if len(list) == 1 {
			if _, err := gw.approvals.Finish(ctx, list[0].ID, to, by, reason, time.Now()); err != nil {
				t.Error(err)
			}
			return
		}
	}
	t.Error("no call was parked for approval")
}

func runGolden(t *testing.T, gw *Gateway, endpoint string) {
	ctx := context.Background()
	sessions := map[string]*mcp.ClientSession{}
	for _, sc := range goldenScenarios {
		if sessions[sc.role] != nil {
			continue
		}
		token, _, err := gw.IssueToken(ctx, "golden-"+sc.role, sc.role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
			&mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.Close() })
		sessions[sc.role] = cs
	}
	for _, sc := range goldenScenarios {
		t.Run(sc.name, func(t *testing.T) {
			cs := sessions[sc.role]
			if strings.HasPrefix(sc.name, "needs approval") {
				go decideParked(t, gw, approval.Denied, "ops", "not today")
			}
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: sc.tool, Arguments: json.RawMessage(sc.args)})
			switch {
			case sc.allowed && (err != nil || res.IsError):
				t.Fatalf("want allowed, got %v %+v", err, res)
			case sc.allowed && !strings.Contains(text(t, res), sc.want):
				t.Errorf("result %q does not contain %q", text(t, res), sc.want)
			case !sc.allowed && (err == nil || !strings.Contains(err.Error(), sc.want)):
				t.Errorf("err = %v, want one containing %q", err, sc.want)
			case !sc.allowed && sc.code != "" && refusalCode(err) != sc.code:
				t.Errorf("err = %v with code %q, want %q", err, refusalCode(err), sc.code)
			}
		})
	}
}

// wantVersionsOffered sends what a 2026-07-28 client begins with, and
// checks the answer: the versions the gateway serves, 2026-07-28 among
// them.
func wantVersionsOffered(t *testing.T, endpoint, token string) {
	t.Helper()
	body := `{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{` +
		`"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},` +
		`"io.modelcontextprotocol/clientCapabilities":{}}}}`
	req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(body))
	for k, v := range map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json",
		"Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"} {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	const want = `"supportedVersions":["2026-07-28","2025-11-25","2025-06-18","2025-03-26"]`
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(answer), want) {
		t.Errorf("server/discover: status %d, %s; want 200 and %s", resp.StatusCode, answer, want)
	}
}
