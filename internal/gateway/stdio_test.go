package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
)

// TestStdioUpstream fronts the reference filesystem server from npm, run
// as a stdio command per agent session (or token, for an agent of protocol
// 2026-07-28, which has no sessions), and holds an agent to one directory
// below the server's own root.
func TestStdioUpstream(t *testing.T) {
	script := filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(everythingScript(t)))), "server-filesystem", "dist", "index.js")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("@modelcontextprotocol/server-filesystem is not installed (%v); run scripts/setup", err)
	}
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(root, "shared")
	if err := os.MkdirAll(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "notes.txt"), []byte("ship on friday\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "secret.txt"), []byte("do not read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	role := fmt.Sprintf(`
role: reader
servers:
  files:
    tools:
      - name: list_directory
        constraints:
          path: { path_within: %q }
      - name: read_text_file
        constraints:
          path: { path_within: %q }
`, shared, shared)
	url, token := startGateway(t, map[string]*config.Upstream{"files": {
		Name: "files", Command: []string{"node", script, root},
		ConnectTimeout: 20 * time.Second, CallTimeout: 20 * time.Second,
	}}, "reader", role, serveSessionless)
	for _, version := range []string{sessionVersion, "2026-07-28"} {
		t.Run(version, func(t *testing.T) {
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
				&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: bearer{token}}},
				&mcp.ClientSessionOptions{ProtocolVersion: version})
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			if got := cs.InitializeResult().ProtocolVersion; got != version {
				t.Fatalf("served %s, want %s", got, version)
			}
			readWithin(t, cs, root, shared)
		})
	}
}

// readWithin checks that cs, an agent of the reader role, sees and reads
// within shared and nothing else of root.
func readWithin(t *testing.T, cs *mcp.ClientSession, root, shared string) {
	ctx := context.Background()
	names := toolNames(t, cs)
	if want := []string{"files__list_directory", "files__read_text_file"}; !slices.Equal(names, want) {
		t.Errorf("tools = %v, want %v (write_file and the rest hidden)", names, want)
	}

	call := func(name, path string) (*mcp.CallToolResult, error) {
		args, _ := json.Marshal(map[string]string{"path": path})
		return cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(args)})
	}
	res, err := call("files__read_text_file", filepath.Join(shared, "notes.txt"))
	if err != nil || !strings.Contains(text(t, res), "ship on friday") {
		t.Fatalf("read inside the granted directory: %v %v", err, res)
	}
	// Outside the directory, and climbing out of it: both refused by the
	// gateway. (A prefix matcher would let the second through: it has the
	// prefix, and the server, whose root is one level up, would read it.)
	for _, path := range []string{filepath.Join(root, "secret.txt"), shared + "/../secret.txt"} {
		if _, err := call("files__read_text_file", path); err == nil || !strings.Contains(err.Error(), "is not a path within the allowed directory") {
			t.Errorf("read %s: err = %v, want a denial", path, err)
		}
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "files__write_file", Arguments: json.RawMessage(`{"path":"x","content":"y"}`)}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Errorf("write_file: %v", err)
	}
}

// startStdio starts script as a stdio server, its group recorded in
// groups, and returns its session and the ids of the server's process and
// of the one it started.
func startStdio(t *testing.T, groups *stdioGroups, script string) (cs *mcp.ClientSession, server, child int) {
	t.Helper()
	transport, err := commandTransport(groups, &config.Upstream{Name: "stdio", Command: []string{"node", script}}, nil)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cs, err = mcp.NewClient(&mcp.Implementation{Name: "amg", Version: "1"}, nil).Connect(context.Background(), transport, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "pids", Arguments: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(text(t, res), &server, &child); err != nil {
		t.Fatalf("pids: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(-server, syscall.SIGKILL) }) // whatever the test finds
	return cs, server, child
}

// waitEnded waits for the processes pids to end.
func waitEnded(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		waitFor(t, fmt.Sprintf("process %d to end", pid), func() bool { return !running(pid) })
	}
}

// A stdio upstream's process runs in a process group of its own, which is
// killed when the gateway ends its stdio processes (once the broker has
// given their sessions its close timeout to end): neither a server that
// ignores the end of its input and SIGTERM, nor a process it started,
// outlives the gateway.
func TestStdioProcessesEndWithTheGateway(t *testing.T) {
	groups := newStdioGroups(slog.New(slog.DiscardHandler))
	defer groups.end()
	cs, server, child := startStdio(t, groups, "testdata/stubborn-server.js")
	groups.end()
	cs.Close()
	waitEnded(t, server, child)
}

// A stdio server's process group is killed as soon as its session is
// over, whether the agent's session ended it or the server exited: what
// the server started does not run on, one more with every session, until
// the gateway shuts down.
func TestStdioProcessesEndWithTheirSession(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(*mcp.ClientSession)
	}{
		{"session closed", func(cs *mcp.ClientSession) { cs.Close() }},
		{"server exited", func(cs *mcp.ClientSession) {
			cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "exit", Arguments: json.RawMessage(`{}`)})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			groups := newStdioGroups(slog.New(slog.DiscardHandler))
			defer groups.end()
			cs, server, child := startStdio(t, groups, "testdata/helper-server.js")
			defer cs.Close()
			tt.end(cs)
			waitEnded(t, server, child)
		})
	}
}

// A stdio upstream's process gets its configured environment and PATH,
// and nothing else of the gateway's, whose environment may hold other
// upstreams' credentials. A configured PATH replaces the gateway's.
func TestStdioUpstreamGetsOnlyItsConfiguredEnvironment(t *testing.T) {
	t.Setenv("AMG_TEST_CANARY", "the gateway's alone")
	t.Setenv("AMG_TEST_TOKEN", "s3cret")
	tmpl := func(s string) config.Template {
		tm, err := config.ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, tc := range []struct {
		name string
		env  map[string]config.Template
		want map[string]string
	}{
		{"configured", map[string]config.Template{"GREETING": tmpl("hello"), "TOKEN": tmpl("${env:AMG_TEST_TOKEN}")},
			map[string]string{"GREETING": "hello", "TOKEN": "s3cret", "PATH": os.Getenv("PATH")}},
		{"none", nil, map[string]string{"PATH": os.Getenv("PATH")}},
		{"own PATH", map[string]config.Template{"PATH": tmpl("/opt/amg-upstream/bin")},
			map[string]string{"PATH": "/opt/amg-upstream/bin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			groups := newStdioGroups(slog.New(slog.DiscardHandler))
			defer groups.end()
			up := &config.Upstream{Name: "env", Command: []string{"node", "testdata/env-server.js"}, Env: tc.env}
			transport, err := commandTransport(groups, up, secrets.NewDefault(nil))(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "amg", Version: "1"}, nil).Connect(context.Background(), transport, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "env", Arguments: json.RawMessage(`{}`)})
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			if err := json.Unmarshal([]byte(text(t, res)), &got); err != nil {
				t.Fatalf("env: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("the upstream's environment (-want +got):\n%s", diff)
			}
		})
	}
}

// running reports whether process pid runs; a zombie, which its parent
// has yet to wait for, does not.
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command, which is in parentheses.
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z")
}
