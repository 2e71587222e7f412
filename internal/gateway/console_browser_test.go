package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/toolsdir"
)

// browser runs the scenarios of test/browser/console.mjs in headless
// Chromium against gw's console.
type browser struct {
	gw        *Gateway
	token     string
	artifacts string
}

func newBrowser(t *testing.T, gw *Gateway) *browser {
	t.Helper()
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Fatal("chromium is not installed; run scripts/setup")
	}
	npm := filepath.Join(toolsDir(t), "npm")
	if _, err := os.Stat(filepath.Join(npm, "node_modules", "playwright-core")); err != nil {
		t.Fatalf("playwright-core is not installed (%v); run scripts/setup", err)
	}
	token, err := admin.LoadOrCreateToken(filepath.Join(gw.cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	// Screenshots are kept after the test, for a person to look at.
	artifacts, err := filepath.Abs(filepath.Join("..", "..", "test-artifacts", "console"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	return &browser{gw: gw, token: token, artifacts: artifacts}
}

type browserEvent struct {
	Event   string `json:"event"`
	ID      string `json:"id"`
	Summary string `json:"summary"`
}

// run runs one scenario. ready, if set, runs once the script is signed in
// and watching; the script's events come back in order.
func (b *browser) run(t *testing.T, scenario string, env map[string]string, ready func()) []browserEvent {
	t.Helper()
	chromium, _ := exec.LookPath("chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join("..", "..", "test", "browser", "console.mjs"), scenario)
	cmd.Env = append(os.Environ(), "AMG_CONSOLE=http://"+b.gw.AdminAddr(), "AMG_ADMIN_TOKEN="+b.token,
		"AMG_NPM_DIR="+filepath.Join(toolsDir(t), "npm"), "AMG_CHROMIUM="+chromium, "AMG_ARTIFACTS="+b.artifacts)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var events []browserEvent
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var ev browserEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Errorf("console.mjs printed %q", sc.Text())
			continue
		}
		events = append(events, ev)
		if ev.Event == "ready" && ready != nil {
			ready()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("console.mjs %s: %v\n%s", scenario, err, stderr.String())
	}
	return events
}

// last is the last event, which says what the scenario did.
func last(t *testing.T, events []browserEvent, want string) browserEvent {
	t.Helper()
	if len(events) == 0 || events[len(events)-1].Event != want {
		t.Fatalf("console.mjs events = %+v, want it to end with %q", events, want)
	}
	return events[len(events)-1]
}

// TestConsoleInBrowser is the operator's side of approvals and tokens, in
// a real headless Chromium: a parked call appears in the signed-in
// console by itself, approving it gives the waiting agent the upstream's
// result, denying another gives its agent the denial, and revoking a
// token refuses the agent's next call. Every page is visited at a
// laptop's and a phone's size, with screenshots kept in
// test-artifacts/console.
func TestConsoleInBrowser(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = filepath.Join(dir, "data"), "../../policies"
	gw := serveForTest(t, cfg, nil)
	b := newBrowser(t, gw)
	ctx := context.Background()
	endpoint := "http://" + gw.MCPAddr() + config.MCPPath

	token, _, err := gw.IssueToken(ctx, "release-bot", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent := connectAgent(t, endpoint, token)
	// A call parked while the operator watches; its result, or error,
	// arrives once the operator decides.
	type outcome struct {
		res *mcp.CallToolResult
		err error
	}
	park := func(pageID string) (ready func(), result func() outcome) {
		done := make(chan outcome, 1)
		ready = func() {
			go func() {
				res, err := agent.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page",
					Arguments: json.RawMessage(`{"page_id":"` + pageID + `"}`)})
				done <- outcome{res, err}
			}()
		}
		result = func() outcome {
			select {
			case o := <-done:
				return o
			case <-time.After(30 * time.Second):
				t.Fatal("the parked call got no answer")
				return outcome{}
			}
		}
		return ready, result
	}
	toolEnv := map[string]string{"AMG_TOOL": "notion__delete_page"}

	t.Run("approve", func(t *testing.T) {
		ready, result := park("pg_roadmap26")
		ev := last(t, b.run(t, "approve", toolEnv, ready), "approved")
		o := result()
		if o.err != nil || o.res.IsError {
			t.Fatalf("approved call = %+v, %v; want the upstream's result", o.res, o.err)
		}
		if text := contentText(o.res); !strings.Contains(text, "pg_roadmap26") {
			t.Errorf("approved call returned %q, want the demo server's deletion of pg_roadmap26", text)
		}
		a, err := gw.approvals.Get(ctx, ev.ID)
		if err != nil || a.DecidedBy != "browser-test" || a.Reason != "checked the page id" {
			t.Errorf("approval %s = %+v, %v; want decided by browser-test with the reason typed", ev.ID, a, err)
		}
	})

	t.Run("deny", func(t *testing.T) {
		ready, result := park("pg_launch01a")
		last(t, b.run(t, "deny", toolEnv, ready), "denied")
		o := result()
		if o.err == nil {
			t.Fatalf("denied call returned %+v, want an error", o.res)
		}
		if msg := o.err.Error(); !strings.Contains(msg, "denied") || !strings.Contains(msg, "not this page") {
			t.Errorf("denied call error = %q, want the denial and the operator's reason", msg)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		last(t, b.run(t, "revoke", map[string]string{"AMG_AGENT": "release-bot"}, nil), "revoked")
		_, err := agent.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages",
			Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		if err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
			t.Fatalf("call after revocation: %v, want it refused as unauthorized", err)
		}
	})

	t.Run("tour", func(t *testing.T) {
		// A would-be denial in shadow mode, for the chart, and a next
		// policy whose notion_editor no longer has delete_page, for the
		// replay.
		shadowToken, _, err := gw.IssueToken(ctx, "support-bot", "support_shadow", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		support := connectAgent(t, endpoint, shadowToken)
		if _, err := support.CallTool(ctx, &mcp.CallToolParams{Name: "notion__search",
			Arguments: json.RawMessage(`{"query":"` + strings.Repeat("q", 250) + `","workspace_id":"ws_abc123"}`)}); err != nil {
			t.Fatal(err)
		}
		next := filepath.Join(dir, "next")
		if err := os.CopyFS(next, os.DirFS(cfg.PolicyDir)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(next, "notion_editor.yaml"), []byte("role: notion_editor\nservers:\n  notion:\n    tools:\n"+
			"      - name: get_pages\n        constraints:\n          workspace_id: {}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		files, err := filepath.Glob(filepath.Join(next, "*.yaml"))
		if err != nil || len(files) != 3 {
			t.Fatalf("next policy files = %v, %v", files, err)
		}
		events := b.run(t, "tour", map[string]string{"AMG_POLICY_FILES": strings.Join(files, string(os.PathListSeparator))}, nil)
		last(t, events, "toured")
		// The two parked calls of notion_editor were needs_approval;
		// without the grant they would be denied. Nothing else changes.
		i := slices.IndexFunc(events, func(ev browserEvent) bool { return ev.Event == "replayed" })
		if i < 0 || !strings.HasPrefix(events[i].Summary, "2 decisions would change: 3 replayed, 0 undecidable") {
			t.Errorf("replay events = %+v, want a summary of the 2 parked calls changed", events)
		}
	})
}

func contentText(res *mcp.CallToolResult) string {
	var sb strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			sb.WriteString(tc.Text)
		}
	}
	return sb.String()
}

// toolsDir is where scripts/setup installs the tests' tools.
func toolsDir(t *testing.T) string {
	t.Helper()
	dir, err := toolsdir.Dir()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
