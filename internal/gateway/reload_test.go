package gateway

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/policy"
)

// A policy change reaches connected agents as tools/list_changed, without
// waiting for their next request: a tool granted joins their list, and a
// tool whose grant is withdrawn leaves it.
func TestPolicyReloadReachesConnectedAgents(t *testing.T) {
	dir := t.TempDir()
	policyDir := filepath.Join(dir, "policies")
	os.MkdirAll(policyDir, 0o700)
	write := func(tools string) {
		t.Helper()
		role := "role: r\nservers:\n  notion:\n    tools:\n" + tools
		if err := os.WriteFile(filepath.Join(policyDir, "r.yaml"), []byte(role), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("      - name: get_pages\n        constraints: { workspace_id: {} }\n")
	cfg := config.Default()
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = filepath.Join(dir, "data"), policyDir
	gw := serveForTest(t, cfg, &Options{PolicyReload: 20 * time.Millisecond})
	token, _, err := gw.IssueToken(context.Background(), "a", "r", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	changed := make(chan struct{}, 8)
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { changed <- struct{}{} },
	}).Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: "http://" + gw.MCPAddr() + config.MCPPath,
		HTTPClient: &http.Client{Transport: bearer{token}}}, &mcp.ClientSessionOptions{ProtocolVersion: sessionVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if got := toolNames(t, cs); !slices.Equal(got, []string{"notion__get_pages"}) {
		t.Fatalf("tools before the change = %v", got)
	}

	for _, tc := range []struct {
		name, tools string
		want        []string
	}{
		{"granted", "      - name: get_pages\n        constraints: { workspace_id: {} }\n      - name: search\n        constraints: { query: {}, workspace_id: {} }\n",
			[]string{"notion__get_pages", "notion__search"}},
		{"withdrawn", "      - name: search\n        constraints: { query: {}, workspace_id: {} }\n", []string{"notion__search"}},
	} {
		write(tc.tools)
		// A notification of the earlier change may come late: the list is
		// read again after each one until it is the one wanted.
		var got []string
		for !slices.Equal(got, tc.want) {
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no tools/list_changed after the policy changed; tools = %v, want %v", tc.name, toolNames(t, cs), tc.want)
			}
			got = toolNames(t, cs)
		}
	}
}

// A policy is checked against what the upstreams list: a grant for a tool
// the upstream does not have, or a constraint on an argument its schema
// lacks, is reported, and the policy is loaded all the same, since what
// an upstream lists must not hold back the operator's changes.
func TestPolicyIsCheckedAgainstTheUpstreams(t *testing.T) {
	policyDir := t.TempDir()
	write := func(tools string) {
		t.Helper()
		role := "role: r\nservers:\n  notion:\n    tools:\n      - name: get_pages\n        constraints: { workspace_id: {} }\n" + tools
		if err := os.WriteFile(filepath.Join(policyDir, "r.yaml"), []byte(role), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	gw := serveForTest(t, loopbackConfig(t, policyDir), &Options{PolicyReload: 10 * time.Millisecond})
	file := filepath.Join(policyDir, "r.yaml")
	for _, tc := range []struct{ tools, want string }{
		{"      - name: get_page\n", file + `:7:9: servers.notion.tools[1]: server "notion" has no tool "get_page"`},
		{"      - name: search\n        constraints: { query: {}, sort: {} }\n",
			file + `:8:35: servers.notion.tools[1].constraints.sort: argument "sort" is not in the input schema of notion__search`},
	} {
		before := gw.policies.Current().Version()
		write(tc.tools)
		var st policy.Status
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if st = gw.policies.Status(); st.Misfits != nil && st.Misfits.Error() == tc.want {
				break
			}
		}
		if st.Err != nil || st.Misfits == nil || st.Misfits.Error() != tc.want {
			t.Errorf("reload: %v, misfits %v; want %s", st.Err, st.Misfits, tc.want)
		}
		if v := gw.policies.Current().Version(); v == before {
			t.Errorf("still serving %v: the policy with misfits was not loaded", v)
		}
	}
}
