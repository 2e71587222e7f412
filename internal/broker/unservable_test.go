package broker

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// rawListing is an upstream that answers the MCP handshake and lists
// what no go-sdk server would: tools, resources and templates the SDK's
// server refuses to serve, beside one of each it serves.
func rawListing(t *testing.T) func(context.Context) (mcp.Transport, error) {
	lists := map[string]string{
		"tools/list": `{"tools":[` +
			`{"name":"get_pages"},` + // no input schema
			`{"name":"slow","inputSchema":{"type":"string"}},` + // not an object's
			`{"name":"big","inputSchema":{"type":"object","properties":{"a":{"type":"string","x-mcp-header":"no spaces allowed"}}}},` +
			`{"name":"fail","inputSchema":{"type":"object"}}]}`,
		"resources/list":           `{"resources":[{"uri":"file:///a\u0001b","name":"bad"},{"uri":"file:///ok","name":"ok"}]}`,
		"resources/templates/list": `{"resourceTemplates":[{"uriTemplate":"file:///{unclosed","name":"bad"},{"uriTemplate":"file:///{id}","name":"ok"}]}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				ProtocolVersion string `json:"protocolVersion"`
			} `json:"params"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &req); err != nil || req.ID == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		result, ok := lists[req.Method]
		switch {
		case req.Method == "initialize":
			result = `{"protocolVersion":"` + req.Params.ProtocolVersion + `","capabilities":{"tools":{},"resources":{}},"serverInfo":{"name":"raw","version":"1"}}`
		case !ok:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"error":{"code":-32601,"message":"method not found"}}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":`+result+`}`)
	}))
	t.Cleanup(srv.Close)
	return func(context.Context) (mcp.Transport, error) {
		return &mcp.StreamableClientTransport{Endpoint: srv.URL, DisableStandaloneSSE: true}, nil
	}
}

// An upstream listing a tool the SDK's server cannot serve (it panics on
// one) has that tool hidden, and the rest served: before, registering it
// for a role took the whole gateway down.
func TestUnservableListingsAreHidden(t *testing.T) {
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: rawListing(t)}})
	cs := g.connect(t, nil)
	var files []string
	for _, name := range toolNames(t, cs) {
		if server, _, _ := g.broker.ns.Split(name); server == "files" {
			files = append(files, name)
		}
	}
	if diff := cmp.Diff([]string{"files__fail"}, files); diff != "" {
		t.Errorf("the agent sees (-want +got):\n%s", diff)
	}

	u := g.broker.ups["files"]
	u.mu.Lock()
	defer u.mu.Unlock()
	var resources, templates []string
	for _, r := range u.resources {
		resources = append(resources, r.URI)
	}
	for _, rt := range u.templates {
		templates = append(templates, rt.URITemplate)
	}
	slices.Sort(resources)
	if diff := cmp.Diff([]string{"file:///ok"}, resources); diff != "" {
		t.Errorf("resources kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"file:///{id}"}, templates); diff != "" {
		t.Errorf("templates kept (-want +got):\n%s", diff)
	}
}
