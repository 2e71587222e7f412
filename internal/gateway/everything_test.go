package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/config"
)

// The reference MCP server from npm, as scripts/setup installs it.
func everythingScript(t *testing.T) string {
	t.Helper()
	script := filepath.Join(toolsDir(t), "npm", "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("@modelcontextprotocol/server-everything is not installed (%v); run scripts/setup", err)
	}
	return script
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEverything runs server-everything in Streamable HTTP mode on port,
// held to 127.0.0.1 by a preload, and returns once it accepts connections.
func startEverything(t *testing.T, port int) (stop func()) {
	t.Helper()
	preload, err := filepath.Abs("../../test/npm/listen-loopback.cjs")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "--require", preload, everythingScript(t), "streamableHttp")
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server-everything: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return stop
		}
		select {
		case <-exited:
			t.Fatal("server-everything exited before listening")
		default:
		}
	}
	t.Fatal("server-everything did not start listening")
	return nil
}

const testerRole = `
role: tester
servers:
  everything:
    tools:
      - name: echo
        constraints:
          message: { max_len: 100 }
      - name: get-sum
        constraints:
          a: {}
          b: { lte: 1000 }
`

// startGateway runs a gateway fronting the given upstreams with one role,
// and issues a token for that role.
func startGateway(t *testing.T, ups map[string]*config.Upstream, roleName, role string, tweak ...func(*config.Config)) (mcpURL, token string) {
	t.Helper()
	cfg := testConfig(t, ups, role)
	for _, f := range tweak {
		f(cfg)
	}
	gw := serveForTest(t, cfg, nil)
	token, _, err := gw.IssueToken(context.Background(), "agent-1", roleName, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + gw.MCPAddr() + config.MCPPath, token
}

// testConfig is the configuration of a gateway on loopback ports of its
// own, with its data in a temporary directory, ups as its upstreams and
// role as its only policy.
func testConfig(t *testing.T, ups map[string]*config.Upstream, role string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "role.yaml"), []byte(role), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = filepath.Join(dir, "data"), policyDir
	cfg.Upstreams, cfg.Names = ups, nil
	for name := range ups {
		cfg.Names = append(cfg.Names, name)
	}
	slices.Sort(cfg.Names)
	return cfg
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

func connectAgent(t *testing.T, url, token string) *mcp.ClientSession {
	t.Helper()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// toolNames lists the tools an agent sees, sorted.
func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	list, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range list.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

func text(t *testing.T, res *mcp.CallToolResult) string {
	t.Helper()
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestEverythingThroughTheGateway puts the reference MCP server from npm
// behind AMG and talks to it through the gateway with the go-sdk client.
func TestEverythingThroughTheGateway(t *testing.T) {
	port := freePort(t)
	stop := startEverything(t, port)
	url, token := startGateway(t, map[string]*config.Upstream{"everything": {
		Name: "everything", URL: fmt.Sprintf("http://127.0.0.1:%d/mcp", port),
		ConnectTimeout: 5 * time.Second, CallTimeout: 10 * time.Second,
	}}, "tester", testerRole)
	cs := connectAgent(t, url, token)
	ctx := context.Background()

	names := toolNames(t, cs)
	// The server has more than a dozen tools; the role sees its two.
	if want := []string{"everything__echo", "everything__get-sum"}; !slices.Equal(names, want) {
		t.Errorf("tools = %v, want %v", names, want)
	}

	call := func(name, args string) (*mcp.CallToolResult, error) {
		return cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(args)})
	}
	res, err := call("everything__echo", `{"message":"hello through AMG"}`)
	if err != nil || !strings.Contains(text(t, res), "hello through AMG") {
		t.Fatalf("echo: %v %v", err, res)
	}
	res, err = call("everything__get-sum", `{"a":2,"b":3}`)
	if err != nil || !strings.Contains(text(t, res), "5") {
		t.Fatalf("get-sum: %v %v", err, res)
	}

	for _, tt := range []struct{ name, args, want, code string }{
		{"everything__get-env", `{}`, `tool "everything__get-env" is not granted to role "tester"`, "not_granted"},
		{"everything__get-sum", `{"a":2,"b":5000}`, `argument "b" must be <= 1000`, "constraint_failed"},
		{"everything__echo", `{"message":"x","extra":1}`, `argument "extra" is not allowed`, "unknown_argument"},
		{"Everything__echo", `{"message":"x"}`, `is not granted`, "not_granted"},
		{"everything__../echo", `{"message":"x"}`, `tool name "everything__../echo" contains ".." at byte 12`, "invalid_name"},
		{"everything__echо", `{"message":"x"}`, `non-ASCII`, "invalid_name"},
	} {
		if _, err := call(tt.name, tt.args); err == nil || !strings.Contains(err.Error(), tt.want) || refusalCode(err) != tt.code {
			t.Errorf("%s %s: err = %v with code %q, want one containing %q with code %q", tt.name, tt.args, err, refusalCode(err), tt.want, tt.code)
		}
	}

	// The upstream goes away: a clean error naming it, no hang.
	stop()
	if _, err := call("everything__echo", `{"message":"anyone there?"}`); err == nil || !strings.Contains(err.Error(), `upstream "everything"`) {
		t.Errorf("upstream down: err = %v, want an error naming the upstream", err)
	}
	// It comes back on the same port: the gateway reconnects.
	startEverything(t, port)
	var lastErr error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		res, lastErr = call("everything__echo", `{"message":"back again"}`)
		if lastErr == nil && strings.Contains(text(t, res), "back again") {
			return
		}
	}
	t.Errorf("after the upstream restarted: %v", lastErr)
}

// The resources server-everything links to from a tool result are named
// as agents read them through the gateway, on the first call (through the
// go-sdk's client) and the next (the direct path), and an agent reads
// them as it would from the server.
func TestEverythingResourceLinksAreReadable(t *testing.T) {
	port := freePort(t)
	startEverything(t, port)
	url, token := startGateway(t, map[string]*config.Upstream{"everything": {
		Name: "everything", URL: fmt.Sprintf("http://127.0.0.1:%d/mcp", port),
		ConnectTimeout: 5 * time.Second, CallTimeout: 10 * time.Second,
	}}, "tester", `
role: tester
servers:
  everything:
    tools:
      - name: get-resource-links
        constraints: { count: { lte: 10 } }
    resources: ["demo://resource/dynamic/*/*"]
`)
	cs := connectAgent(t, url, token)
	ctx := context.Background()
	for range 2 {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "everything__get-resource-links", Arguments: map[string]any{"count": 2}})
		if err != nil {
			t.Fatal(err)
		}
		links := 0
		for _, c := range res.Content {
			link, ok := c.(*mcp.ResourceLink)
			if !ok {
				continue
			}
			links++
			if !strings.HasPrefix(link.URI, "amg:everything:demo://") {
				t.Errorf("resource_link %q is not a gateway URI", link.URI)
			}
			if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: link.URI}); err != nil {
				t.Errorf("resource_link %q cannot be read through the gateway: %v", link.URI, err)
			}
		}
		if links != 2 {
			t.Errorf("%d resource links, want 2: %+v", links, res.Content)
		}
	}
}
