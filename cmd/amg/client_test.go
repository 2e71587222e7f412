package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const clientToken = "amg_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// mcpServer serves an MCP server with tools at /mcp, and redirects /old
// there.
func mcpServer(t *testing.T, tools ...*mcp.Tool) *httptest.Server {
	t.Helper()
	srv := mcp.NewServer(&mcp.Implementation{Name: "up", Version: "1"}, nil)
	for _, tool := range tools {
		srv.AddTool(tool, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{}, nil
		})
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	mux.Handle("/old", http.RedirectHandler("/mcp", http.StatusTemporaryRedirect))
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs
}

// amg client sets the agent's token on every request itself, so net/http
// would not drop it on a redirect to another host: such a redirect (a
// moved server, a hostile one, a misrouted proxy) is not followed. One
// within the endpoint's host is.
func TestClientRedirects(t *testing.T) {
	tool := &mcp.Tool{Name: "get_pages", InputSchema: &jsonschema.Schema{Type: "object"}}
	up := mcpServer(t, tool)
	// The same listener under another host name: localhost, not 127.0.0.1.
	elsewhere := strings.Replace(up.URL, "127.0.0.1", "localhost", 1)
	leaving := httptest.NewServer(http.RedirectHandler(elsewhere+"/mcp", http.StatusTemporaryRedirect))
	t.Cleanup(leaving.Close)
	heard := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Authorization"), clientToken) {
			t.Errorf("the token reached the host the endpoint redirected to")
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(heard.Close)
	toHeard := httptest.NewServer(http.RedirectHandler(strings.Replace(heard.URL, "127.0.0.1", "localhost", 1)+"/mcp", http.StatusTemporaryRedirect))
	t.Cleanup(toHeard.Close)

	t.Run("within the host", func(t *testing.T) {
		code, out, errOut := runCLI(t, "client", "--url", up.URL+"/old", "--token", clientToken, "tools")
		if code != 0 || out != "get_pages\t\n" {
			t.Errorf("exit %d, stdout %q, stderr %q; want the tool listed", code, out, errOut)
		}
	})
	for name, url := range map[string]string{"to an MCP server": leaving.URL, "to a listener": toHeard.URL} {
		t.Run(name, func(t *testing.T) {
			code, out, errOut := runCLI(t, "client", "--url", url+"/mcp", "--token", clientToken, "tools")
			if code == 0 || out != "" || !strings.Contains(errOut, "the endpoint redirected to http://localhost:") ||
				!strings.Contains(errOut, "not followed, so that the token stays with "+url) {
				t.Errorf("exit %d, stdout %q, stderr %q; want the redirect refused", code, out, errOut)
			}
		})
	}
}

// A tool's description comes from an upstream server: amg client tools
// prints its escape sequences as text, not to the terminal as they came
// (OSC 52 sets the clipboard in many terminals).
func TestClientToolsShowsEscapes(t *testing.T) {
	up := mcpServer(t, &mcp.Tool{Name: "t", Description: "harmless\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07 tool\u202e",
		InputSchema: &jsonschema.Schema{Type: "object"}})
	code, out, errOut := runCLI(t, "client", "--url", up.URL+"/mcp", "--token", clientToken, "tools")
	if want := `t	harmless\u001b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\u0007 tool\u202e` + "\n"; code != 0 || out != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
	}
}
