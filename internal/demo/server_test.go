package demo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/demo"
)

// start serves a fresh demo server on a real loopback socket and returns
// it with its endpoint.
func start(t *testing.T, opts *demo.Options) (*demo.Server, string) {
	t.Helper()
	s := demo.NewServer(opts)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts.URL + "/mcp"
}

// connect opens a client session; it is closed before the server stops.
func connect(t *testing.T, endpoint string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "demo-test", Version: "v0.0.1"}, opts)
	cs, err := c.Connect(t.Context(), &mcp.StreamableClientTransport{Endpoint: endpoint, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

func call(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("call %s(%v): %v", tool, args, err)
	}
	return res
}

// callOK calls a tool that must succeed and decodes its structured result.
func callOK[T any](t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any) (T, string) {
	t.Helper()
	res := call(t, cs, tool, args)
	if res.IsError {
		t.Fatalf("call %s(%v): tool error %q", tool, args, text(res.Content))
	}
	var out T
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("call %s: structured content %s: %v", tool, b, err)
	}
	return out, text(res.Content)
}

func text(content []mcp.Content) string {
	var parts []string
	for _, c := range content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func ids(pages []demo.PageSummary) []string {
	out := []string{}
	for _, p := range pages {
		out = append(out, p.ID)
	}
	return out
}

// jsonDiff compares got, as it marshals, with the JSON text want.
func jsonDiff(t *testing.T, want string, got any) string {
	t.Helper()
	var w, g any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want: %v", err)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return cmp.Diff(w, g)
}

var (
	abcPages  = []string{"pg_roadmap26", "pg_launch01a", "pg_onboard7x", "pg_retro0425", "pg_pricing9k"}
	teamPages = []string{"pg_oncall5rt", "pg_holiday26", "pg_standup3m"}
)

func TestInitialize(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	res := cs.InitializeResult()
	if diff := cmp.Diff(&mcp.Implementation{Name: demo.ServerName, Title: "AMG demo workspace (Notion-like)", Version: "v0.1.0"}, res.ServerInfo); diff != "" {
		t.Errorf("server info (-want +got):\n%s", diff)
	}
	// The stateful Streamable HTTP handler cannot serve 2026-07-28, so the
	// client falls back to the newest handshake version.
	if res.ProtocolVersion != "2025-11-25" {
		t.Errorf("protocol version %q, want 2025-11-25", res.ProtocolVersion)
	}
	if diff := jsonDiff(t, `{"prompts":{},"resources":{},"tools":{"listChanged":true}}`, res.Capabilities); diff != "" {
		t.Errorf("capabilities (-want +got):\n%s", diff)
	}
	if !strings.Contains(res.Instructions, "ws_abc123") {
		t.Errorf("instructions do not name the workspaces: %q", res.Instructions)
	}
}

func TestListTools(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	res, err := cs.ListTools(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tools := map[string]*mcp.Tool{}
	var names []string
	for _, tool := range res.Tools {
		tools[tool.Name] = tool
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	want := []string{"create_page", "delete_page", "get_pages", "search", "update_page"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Fatalf("tools (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, demo.Tools()); diff != "" {
		t.Errorf("Tools() (-want +got):\n%s", diff)
	}

	t.Run("get_pages schema", func(t *testing.T) {
		want := `{
			"type": "object",
			"properties": {
				"workspace_id": {"type": "string", "description": "Workspace whose pages to list, e.g. ws_abc123."},
				"limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Maximum number of pages to return (1-100, default 20)."},
				"cursor": {"type": "string", "description": "The next_cursor of a previous get_pages result, to continue the listing."}
			},
			"required": ["workspace_id"],
			"additionalProperties": false
		}`
		if diff := jsonDiff(t, want, tools["get_pages"].InputSchema); diff != "" {
			t.Errorf("inputSchema (-want +got):\n%s", diff)
		}
	})
	t.Run("search schema", func(t *testing.T) {
		want := `{
			"type": "object",
			"properties": {
				"query": {"type": "string", "description": "Text to find in page titles and bodies, ignoring case; empty matches every page."},
				"workspace_id": {"type": "string", "description": "Workspace to search, e.g. ws_abc123."},
				"filter": {
					"type": "object",
					"description": "Optional conditions a page must also meet.",
					"properties": {
						"owner": {"type": "string", "description": "Only pages owned by this user, e.g. alice."},
						"tags": {"type": "array", "items": {"type": "string"}, "description": "Only pages carrying every one of these tags."}
					},
					"additionalProperties": false
				}
			},
			"required": ["query", "workspace_id"],
			"additionalProperties": false
		}`
		if diff := jsonDiff(t, want, tools["search"].InputSchema); diff != "" {
			t.Errorf("inputSchema (-want +got):\n%s", diff)
		}
	})

	// The other schemas are checked for what the policies depend on: the
	// argument names and types, what is required, and that nothing else
	// is accepted.
	type shape struct {
		Properties           map[string]struct{ Type string }
		Required             []string
		AdditionalProperties *bool
	}
	shapes := map[string]shape{
		"create_page": {
			Properties: map[string]struct{ Type string }{"workspace_id": {"string"}, "title": {"string"}, "body": {"string"}},
			Required:   []string{"workspace_id", "title"}, AdditionalProperties: new(false),
		},
		"update_page": {
			Properties: map[string]struct{ Type string }{"page_id": {"string"}, "title": {"string"}, "body": {"string"}},
			Required:   []string{"page_id"}, AdditionalProperties: new(false),
		},
		"delete_page": {
			Properties: map[string]struct{ Type string }{"page_id": {"string"}},
			Required:   []string{"page_id"}, AdditionalProperties: new(false),
		},
	}
	for name, want := range shapes {
		t.Run(name+" schema", func(t *testing.T) {
			b, err := json.Marshal(tools[name].InputSchema)
			if err != nil {
				t.Fatal(err)
			}
			var got shape
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("inputSchema (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("annotations", func(t *testing.T) {
		want := map[string]*mcp.ToolAnnotations{
			"get_pages":   {Title: "List pages", ReadOnlyHint: true, OpenWorldHint: new(false)},
			"search":      {Title: "Search pages", ReadOnlyHint: true, OpenWorldHint: new(false)},
			"create_page": {Title: "Create page", DestructiveHint: new(false), IdempotentHint: false, OpenWorldHint: new(false)},
			"update_page": {Title: "Update page", DestructiveHint: new(false), IdempotentHint: true, OpenWorldHint: new(false)},
			"delete_page": {Title: "Delete page", DestructiveHint: new(true), IdempotentHint: true, OpenWorldHint: new(false)},
		}
		got := map[string]*mcp.ToolAnnotations{}
		for name, tool := range tools {
			got[name] = tool.Annotations
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("annotations (-want +got):\n%s", diff)
		}
	})

	t.Run("descriptions and output schemas", func(t *testing.T) {
		for name, tool := range tools {
			if tool.Description == "" || tool.Title == "" {
				t.Errorf("%s: title %q, description %q", name, tool.Title, tool.Description)
			}
			if tool.OutputSchema == nil {
				t.Errorf("%s: no output schema", name)
			}
		}
	})
}

func TestGetPages(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)

	t.Run("whole workspace", func(t *testing.T) {
		for ws, want := range map[string][]string{"ws_abc123": abcPages, "ws_team": teamPages} {
			got, txt := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": ws})
			if diff := cmp.Diff(want, ids(got.Pages)); diff != "" {
				t.Errorf("%s pages (-want +got):\n%s", ws, diff)
			}
			if got.NextCursor != "" || got.WorkspaceID != ws {
				t.Errorf("%s: next_cursor %q, workspace_id %q", ws, got.NextCursor, got.WorkspaceID)
			}
			if want := fmt.Sprintf("%d pages in workspace %s:", len(want), ws); !strings.HasPrefix(txt, want) {
				t.Errorf("text %q does not start with %q", txt, want)
			}
		}
	})

	t.Run("one page", func(t *testing.T) {
		got, txt := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_team", "limit": 1})
		want := demo.GetPagesResult{
			WorkspaceID: "ws_team",
			Pages: []demo.PageSummary{{ID: "pg_oncall5rt", WorkspaceID: "ws_team", Title: "On-call runbook", Owner: "dave",
				Tags: []string{"oncall", "runbook"}, URI: "notion://ws_team/pages/pg_oncall5rt"}},
			NextCursor: got.NextCursor,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("result (-want +got):\n%s", diff)
		}
		wantText := fmt.Sprintf("1 page in workspace ws_team:\n- pg_oncall5rt \"On-call runbook\" (owner dave; tags: oncall, runbook)\n"+
			"More pages follow: call get_pages again with cursor %q.", got.NextCursor)
		if txt != wantText {
			t.Errorf("text:\n%s\nwant:\n%s", txt, wantText)
		}
	})

	t.Run("paginated", func(t *testing.T) {
		var all []string
		args := map[string]any{"workspace_id": "ws_abc123", "limit": 2}
		calls := 0
		for {
			calls++
			got, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", args)
			all = append(all, ids(got.Pages)...)
			if got.NextCursor == "" {
				break
			}
			if calls > 10 {
				t.Fatal("pagination does not end")
			}
			args["cursor"] = got.NextCursor
		}
		if diff := cmp.Diff(abcPages, all); diff != "" {
			t.Errorf("pages (-want +got):\n%s", diff)
		}
		if calls != 3 {
			t.Errorf("%d calls for 5 pages by 2, want 3", calls)
		}
	})

	t.Run("cursor survives deleting the page it points after", func(t *testing.T) {
		_, url := start(t, nil)
		cs := connect(t, url, nil)
		first, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_abc123", "limit": 2})
		callOK[demo.DeletePageResult](t, cs, "delete_page", map[string]any{"page_id": "pg_launch01a"})
		rest, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_abc123", "cursor": first.NextCursor})
		if diff := cmp.Diff(abcPages[2:], ids(rest.Pages)); diff != "" {
			t.Errorf("pages after cursor (-want +got):\n%s", diff)
		}
	})
}

func TestSearch(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	for _, tc := range []struct {
		name string
		args map[string]any
		want []string
	}{
		{"title", map[string]any{"workspace_id": "ws_abc123", "query": "checklist"}, []string{"pg_launch01a"}},
		{"title and body, any case", map[string]any{"workspace_id": "ws_abc123", "query": "ROADMAP"}, []string{"pg_roadmap26", "pg_onboard7x"}},
		{"only the named workspace", map[string]any{"workspace_id": "ws_team", "query": "roadmap"}, []string{"pg_standup3m"}},
		{"empty query matches all", map[string]any{"workspace_id": "ws_team", "query": ""}, teamPages},
		{"owner", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"owner": "bob"}}, []string{"pg_launch01a", "pg_pricing9k"}},
		{"query and owner", map[string]any{"workspace_id": "ws_abc123", "query": "roadmap", "filter": map[string]any{"owner": "alice"}}, []string{"pg_roadmap26", "pg_onboard7x"}},
		{"one tag", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"tags": []string{"meetings"}}}, []string{"pg_retro0425"}},
		{"every tag", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"tags": []string{"launch", "checklist"}}}, []string{"pg_launch01a"}},
		{"tags no page has together", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"tags": []string{"launch", "pricing"}}}, []string{}},
		{"empty filter", map[string]any{"workspace_id": "ws_team", "query": "runbook", "filter": map[string]any{}}, []string{"pg_oncall5rt"}},
		{"no match", map[string]any{"workspace_id": "ws_abc123", "query": "kubernetes"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, txt := callOK[demo.SearchResult](t, cs, "search", tc.args)
			if diff := cmp.Diff(tc.want, ids(got.Pages)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
			for _, id := range tc.want {
				if !strings.Contains(txt, id) {
					t.Errorf("text %q does not name %s", txt, id)
				}
			}
		})
	}
	t.Run("text", func(t *testing.T) {
		_, txt := callOK[demo.SearchResult](t, cs, "search", map[string]any{"workspace_id": "ws_team", "query": "calendar"})
		want := "1 page in workspace ws_team match \"calendar\":\n- pg_holiday26 \"Holiday calendar\" (owner erin; tags: hr)"
		if txt != want {
			t.Errorf("text:\n%s\nwant:\n%s", txt, want)
		}
	})
}

func readPage(t *testing.T, cs *mcp.ClientSession, uri string) (string, error) {
	t.Helper()
	res, err := cs.ReadResource(t.Context(), &mcp.ReadResourceParams{URI: uri})
	if err != nil {
		return "", err
	}
	if len(res.Contents) != 1 {
		t.Fatalf("read %s: %d contents", uri, len(res.Contents))
	}
	return res.Contents[0].Text, nil
}

func TestMutations(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)

	t.Run("create", func(t *testing.T) {
		got, txt := callOK[demo.Page](t, cs, "create_page", map[string]any{"workspace_id": "ws_team", "title": "Offsite plan", "body": "Lisbon, **May**."})
		want := demo.Page{ID: "pg_new00001", WorkspaceID: "ws_team", Title: "Offsite plan", Body: "Lisbon, **May**.", Owner: "demo_agent",
			Tags: []string{}, URI: "notion://ws_team/pages/pg_new00001"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("created (-want +got):\n%s", diff)
		}
		if want := `Created page pg_new00001 "Offsite plan" in workspace ws_team (notion://ws_team/pages/pg_new00001).`; txt != want {
			t.Errorf("text %q, want %q", txt, want)
		}
		list, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_team"})
		if diff := cmp.Diff(append(slices.Clone(teamPages), "pg_new00001"), ids(list.Pages)); diff != "" {
			t.Errorf("pages after create (-want +got):\n%s", diff)
		}
		md, err := readPage(t, cs, want.URI)
		if err != nil {
			t.Fatal(err)
		}
		if want := "# Offsite plan\n\nOwner: demo_agent\n\nLisbon, **May**.\n"; md != want {
			t.Errorf("resource %q, want %q", md, want)
		}
		// Without a body the page is empty, and ids keep counting.
		got, _ = callOK[demo.Page](t, cs, "create_page", map[string]any{"workspace_id": "ws_abc123", "title": "Blank"})
		if got.ID != "pg_new00002" || got.Body != "" {
			t.Errorf("second page: id %q, body %q", got.ID, got.Body)
		}
	})

	t.Run("update", func(t *testing.T) {
		got, _ := callOK[demo.Page](t, cs, "update_page", map[string]any{"page_id": "pg_holiday26", "title": "Holidays 2026"})
		if got.Title != "Holidays 2026" || got.Body != "Office closed 24 Dec to 1 Jan. Book leave two weeks ahead." {
			t.Errorf("after title update: %+v", got)
		}
		got, txt := callOK[demo.Page](t, cs, "update_page", map[string]any{"page_id": "pg_holiday26", "body": ""})
		if got.Title != "Holidays 2026" || got.Body != "" {
			t.Errorf("after body update: %+v", got)
		}
		if want := `Updated page pg_holiday26 "Holidays 2026" in workspace ws_team.`; txt != want {
			t.Errorf("text %q, want %q", txt, want)
		}
		md, err := readPage(t, cs, "notion://ws_team/pages/pg_holiday26")
		if err != nil {
			t.Fatal(err)
		}
		if want := "# Holidays 2026\n\nOwner: erin\nTags: hr\n"; md != want {
			t.Errorf("resource %q, want %q", md, want)
		}
	})

	t.Run("delete", func(t *testing.T) {
		got, txt := callOK[demo.DeletePageResult](t, cs, "delete_page", map[string]any{"page_id": "pg_retro0425"})
		want := demo.PageSummary{ID: "pg_retro0425", WorkspaceID: "ws_abc123", Title: "Sprint retro notes", Owner: "carol",
			Tags: []string{"retro", "meetings"}, URI: "notion://ws_abc123/pages/pg_retro0425"}
		if diff := cmp.Diff(want, got.Deleted); diff != "" {
			t.Errorf("deleted (-want +got):\n%s", diff)
		}
		if want := `Deleted page pg_retro0425 "Sprint retro notes" from workspace ws_abc123.`; txt != want {
			t.Errorf("text %q, want %q", txt, want)
		}
		list, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_abc123"})
		if slices.Contains(ids(list.Pages), "pg_retro0425") {
			t.Error("deleted page still listed")
		}
		if _, err := readPage(t, cs, want.URI); err == nil {
			t.Error("deleted page still readable")
		}
		if res := call(t, cs, "delete_page", map[string]any{"page_id": "pg_retro0425"}); !res.IsError {
			t.Error("second delete succeeded")
		}
	})

	t.Run("servers do not share a store", func(t *testing.T) {
		_, url := start(t, nil)
		other := connect(t, url, nil)
		list, _ := callOK[demo.GetPagesResult](t, other, "get_pages", map[string]any{"workspace_id": "ws_abc123"})
		if diff := cmp.Diff(abcPages, ids(list.Pages)); diff != "" {
			t.Errorf("fresh server pages (-want +got):\n%s", diff)
		}
	})
}

// Failures of a call are tool results with isError set and a message the
// model can act on, not JSON-RPC errors.
func TestToolErrors(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	teamFirst, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_team", "limit": 1})

	for _, tc := range []struct {
		name string
		tool string
		args map[string]any
		want string
	}{
		{"unknown workspace", "get_pages", map[string]any{"workspace_id": "ws_nope"},
			`unknown workspace "ws_nope": known workspaces are ws_abc123, ws_team`},
		{"garbage cursor", "get_pages", map[string]any{"workspace_id": "ws_abc123", "cursor": "!!"},
			`invalid cursor "!!": pass the next_cursor of a previous get_pages result`},
		{"cursor of another workspace", "get_pages", map[string]any{"workspace_id": "ws_abc123", "cursor": teamFirst.NextCursor},
			fmt.Sprintf(`invalid cursor %q: it belongs to another workspace`, teamFirst.NextCursor)},
		{"search unknown workspace", "search", map[string]any{"workspace_id": "ws_abc", "query": "x"},
			`unknown workspace "ws_abc": known workspaces are ws_abc123, ws_team`},
		{"create in unknown workspace", "create_page", map[string]any{"workspace_id": "ws_other", "title": "t"},
			`unknown workspace "ws_other": known workspaces are ws_abc123, ws_team`},
		{"update unknown page", "update_page", map[string]any{"page_id": "pg_missing01", "title": "t"},
			`unknown page "pg_missing01"`},
		{"update nothing", "update_page", map[string]any{"page_id": "pg_roadmap26"},
			`nothing to update on page "pg_roadmap26": give a title, a body or both`},
		{"delete unknown page", "delete_page", map[string]any{"page_id": "pg_missing01"},
			`unknown page "pg_missing01"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := call(t, cs, tc.tool, tc.args)
			if !res.IsError {
				t.Fatalf("not an error: %q", text(res.Content))
			}
			if got := text(res.Content); got != tc.want {
				t.Errorf("message %q, want %q", got, tc.want)
			}
			if res.StructuredContent != nil {
				t.Errorf("structured content on error: %v", res.StructuredContent)
			}
		})
	}

	t.Run("unknown tool is a protocol error", func(t *testing.T) {
		_, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "drop_workspace", Arguments: map[string]any{}})
		var werr *jsonrpc.Error
		if !errors.As(err, &werr) || werr.Code != jsonrpc.CodeInvalidParams || werr.Message != `unknown tool "drop_workspace"` {
			t.Errorf("got %v, want invalid params: unknown tool", err)
		}
	})
}

// The SDK validates arguments against the input schema before a handler
// runs, and reports a failure as a tool error (isError), not a JSON-RPC
// error. The texts are the SDK's (go-sdk v1.8.0, jsonschema-go).
func TestSchemaValidation(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	const prefix = `validating "arguments": validating root: `
	for _, tc := range []struct {
		name string
		tool string
		args map[string]any
		want string
	}{
		{"unknown argument", "get_pages", map[string]any{"workspace_id": "ws_abc123", "page_size": 5},
			`unexpected additional properties ["page_size"]`},
		{"unknown argument on a write", "create_page", map[string]any{"workspace_id": "ws_abc123", "title": "t", "parent_id": "pg_roadmap26"},
			`unexpected additional properties ["parent_id"]`},
		{"unknown nested argument", "search", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"status": "draft"}},
			`validating /properties/filter: unexpected additional properties ["status"]`},
		{"missing required", "get_pages", map[string]any{},
			`required: missing properties: ["workspace_id"]`},
		{"wrong type", "get_pages", map[string]any{"workspace_id": 7},
			`validating /properties/workspace_id: type: 7 has type "integer", want "string"`},
		{"limit too large", "get_pages", map[string]any{"workspace_id": "ws_abc123", "limit": 101},
			`validating /properties/limit: maximum: 101/1 is greater than 100.000000`},
		{"limit zero", "get_pages", map[string]any{"workspace_id": "ws_abc123", "limit": 0},
			`validating /properties/limit: minimum: 0/1 is less than 1.000000`},
		{"empty title", "create_page", map[string]any{"workspace_id": "ws_abc123", "title": ""},
			`validating /properties/title: minLength: "" contains 0 Unicode code points, fewer than 1`},
		{"tags not strings", "search", map[string]any{"workspace_id": "ws_abc123", "query": "", "filter": map[string]any{"tags": []any{1}}},
			`validating /properties/filter: validating /properties/filter/properties/tags: validating /properties/filter/properties/tags/items: type: 1 has type "integer", want "string"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := call(t, cs, tc.tool, tc.args)
			if !res.IsError {
				t.Fatalf("accepted: %q", text(res.Content))
			}
			if got, want := text(res.Content), prefix+tc.want; got != want {
				t.Errorf("message:\n%s\nwant:\n%s", got, want)
			}
		})
	}
	// A rejected write must not have reached the store.
	list, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": "ws_abc123"})
	if diff := cmp.Diff(abcPages, ids(list.Pages)); diff != "" {
		t.Errorf("pages after rejected calls (-want +got):\n%s", diff)
	}
}

func TestResources(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)

	t.Run("list", func(t *testing.T) {
		res, err := cs.ListResources(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var uris []string
		for _, r := range res.Resources {
			uris = append(uris, r.URI)
			if r.MIMEType != "text/markdown" || r.Name == "" || r.Title == "" {
				t.Errorf("%s: mime %q, name %q, title %q", r.URI, r.MIMEType, r.Name, r.Title)
			}
		}
		var want []string
		for _, id := range abcPages {
			want = append(want, "notion://ws_abc123/pages/"+id)
		}
		for _, id := range teamPages {
			want = append(want, "notion://ws_team/pages/"+id)
		}
		slices.Sort(want)
		if diff := cmp.Diff(want, uris); diff != "" {
			t.Errorf("uris (-want +got):\n%s", diff)
		}
		if res.NextCursor != "" {
			t.Errorf("next cursor %q for 8 resources", res.NextCursor)
		}
	})

	t.Run("template", func(t *testing.T) {
		res, err := cs.ListResourceTemplates(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.ResourceTemplates) != 1 || res.ResourceTemplates[0].URITemplate != "notion://{workspace_id}/pages/{page_id}" {
			t.Errorf("templates: %+v", res.ResourceTemplates)
		}
	})

	t.Run("read", func(t *testing.T) {
		res, err := cs.ReadResource(t.Context(), &mcp.ReadResourceParams{URI: "notion://ws_team/pages/pg_oncall5rt"})
		if err != nil {
			t.Fatal(err)
		}
		want := []*mcp.ResourceContents{{
			URI:      "notion://ws_team/pages/pg_oncall5rt",
			MIMEType: "text/markdown",
			Text: "# On-call runbook\n\nOwner: dave\nTags: oncall, runbook\n\n" +
				"1. Acknowledge the page.\n2. Check the dashboard.\n3. Roll back the last deploy if error rates rose after it.\n",
		}}
		if diff := cmp.Diff(want, res.Contents); diff != "" {
			t.Errorf("contents (-want +got):\n%s", diff)
		}
	})

	for _, uri := range []string{
		"notion://ws_team/pages/pg_missing01",
		"notion://ws_abc123/pages/pg_oncall5rt", // a real page, but of ws_team
		"notion://ws_team/pages/pg_oncall5rt/../pg_holiday26",
		"notion://ws_team/other/pg_oncall5rt",
		"file:///etc/passwd",
	} {
		t.Run("not found "+uri, func(t *testing.T) {
			_, err := cs.ReadResource(t.Context(), &mcp.ReadResourceParams{URI: uri})
			var werr *jsonrpc.Error
			// Since SEP-2164 "not found" is invalid params (-32602).
			if !errors.As(err, &werr) || werr.Code != jsonrpc.CodeInvalidParams || werr.Message != "Resource not found" {
				t.Errorf("got %v, want resource not found", err)
			}
		})
	}

	t.Run("paginated", func(t *testing.T) {
		_, url := start(t, nil)
		cs := connect(t, url, nil)
		for i := range 60 {
			callOK[demo.Page](t, cs, "create_page", map[string]any{"workspace_id": "ws_abc123", "title": fmt.Sprint("page ", i)})
		}
		first, err := cs.ListResources(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(first.Resources) != 50 || first.NextCursor == "" {
			t.Fatalf("first page: %d resources, next cursor %q", len(first.Resources), first.NextCursor)
		}
		var uris []string
		for r, err := range cs.Resources(t.Context(), nil) {
			if err != nil {
				t.Fatal(err)
			}
			uris = append(uris, r.URI)
		}
		if len(uris) != 68 || !slices.IsSorted(uris) || len(slices.Compact(slices.Clone(uris))) != 68 {
			t.Errorf("%d uris over all pages, sorted %v", len(uris), slices.IsSorted(uris))
		}
		_, err = cs.ListResources(t.Context(), &mcp.ListResourcesParams{Cursor: "%%%"})
		var werr *jsonrpc.Error
		if !errors.As(err, &werr) || werr.Code != jsonrpc.CodeInvalidParams {
			t.Errorf("bad cursor: got %v, want invalid params", err)
		}
	})
}

func TestPrompts(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)

	list, err := cs.ListPrompts(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Prompts) != 1 || list.Prompts[0].Name != "summarize_page" {
		t.Fatalf("prompts: %+v", list.Prompts)
	}
	wantArgs := []*mcp.PromptArgument{{Name: "page_id", Description: "Page to summarize, e.g. pg_roadmap26.", Required: true}}
	if diff := cmp.Diff(wantArgs, list.Prompts[0].Arguments); diff != "" {
		t.Errorf("arguments (-want +got):\n%s", diff)
	}

	res, err := cs.GetPrompt(t.Context(), &mcp.GetPromptParams{Name: "summarize_page", Arguments: map[string]string{"page_id": "pg_holiday26"}})
	if err != nil {
		t.Fatal(err)
	}
	want := &mcp.GetPromptResult{
		Description: `Summarize page pg_holiday26 "Holiday calendar"`,
		Messages: []*mcp.PromptMessage{
			{Role: "user", Content: &mcp.TextContent{Text: `Summarize the page "Holiday calendar" below in at most three bullet points. Keep names, dates and decisions; leave out everything else.`}},
			{Role: "user", Content: &mcp.EmbeddedResource{Resource: &mcp.ResourceContents{
				URI: "notion://ws_team/pages/pg_holiday26", MIMEType: "text/markdown",
				Text: "# Holiday calendar\n\nOwner: erin\nTags: hr\n\nOffice closed 24 Dec to 1 Jan. Book leave two weeks ahead.\n",
			}}},
		},
	}
	if diff := jsonDiff(t, mustJSON(t, want), res); diff != "" {
		t.Errorf("prompt (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		args map[string]string
		want string
	}{
		{"unknown page", map[string]string{"page_id": "pg_missing01"}, `unknown page "pg_missing01"`},
		{"no page", nil, "missing required argument page_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cs.GetPrompt(t.Context(), &mcp.GetPromptParams{Name: "summarize_page", Arguments: tc.args})
			var werr *jsonrpc.Error
			if !errors.As(err, &werr) || werr.Code != jsonrpc.CodeInvalidParams || werr.Message != tc.want {
				t.Errorf("got %v, want invalid params %q", err, tc.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// notifications records the list_changed notifications a client receives,
// in order.
type notifications chan string

func (n notifications) options() *mcp.ClientOptions {
	return &mcp.ClientOptions{
		ToolListChangedHandler:     func(context.Context, *mcp.ToolListChangedRequest) { n <- "tools" },
		PromptListChangedHandler:   func(context.Context, *mcp.PromptListChangedRequest) { n <- "prompts" },
		ResourceListChangedHandler: func(context.Context, *mcp.ResourceListChangedRequest) { n <- "resources" },
	}
}

func (n notifications) next(t *testing.T) string {
	t.Helper()
	select {
	case got := <-n:
		return got
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return ""
	}
}

func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

func TestSetExtraTool(t *testing.T) {
	s, url := start(t, nil)
	n := make(notifications, 16)
	cs := connect(t, url, n.options())
	// A second session shows the notification is broadcast, not a reply.
	n2 := make(notifications, 16)
	cs2 := connect(t, url, n2.options())

	s.SetExtraTool(true)
	if got := n.next(t); got != "tools" {
		t.Fatalf("notification %q, want tools", got)
	}
	if got := n2.next(t); got != "tools" {
		t.Fatalf("second session: notification %q, want tools", got)
	}
	want := append(demo.Tools(), "ping_workspace")
	slices.Sort(want)
	if diff := cmp.Diff(want, toolNames(t, cs)); diff != "" {
		t.Errorf("tools after SetExtraTool(true) (-want +got):\n%s", diff)
	}
	res, err := cs2.ListTools(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range res.Tools {
		if tool.Name == "ping_workspace" {
			if diff := cmp.Diff(&mcp.ToolAnnotations{Title: "Ping workspace", ReadOnlyHint: true, OpenWorldHint: new(false)}, tool.Annotations); diff != "" {
				t.Errorf("ping_workspace annotations (-want +got):\n%s", diff)
			}
		}
	}
	got, txt := callOK[demo.PingResult](t, cs, "ping_workspace", map[string]any{"workspace_id": "ws_team"})
	if diff := cmp.Diff(demo.PingResult{WorkspaceID: "ws_team", Name: "Team wiki", Pages: 3}, got); diff != "" {
		t.Errorf("ping (-want +got):\n%s", diff)
	}
	if want := "Workspace ws_team (Team wiki) is up with 3 pages."; txt != want {
		t.Errorf("ping text %q, want %q", txt, want)
	}

	s.SetExtraTool(false)
	if got := n.next(t); got != "tools" {
		t.Fatalf("notification %q, want tools", got)
	}
	if diff := cmp.Diff(demo.Tools(), toolNames(t, cs)); diff != "" {
		t.Errorf("tools after SetExtraTool(false) (-want +got):\n%s", diff)
	}
	if _, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "ping_workspace", Arguments: map[string]any{"workspace_id": "ws_team"}}); err == nil {
		t.Error("removed tool still callable")
	}
}

// Writes change the store and nothing else: no list_changed of any kind.
// SetExtraTool serves as a fence: its notification is sent after any a
// write might have caused, on the same stream.
func TestWritesSendNoNotifications(t *testing.T) {
	s, url := start(t, nil)
	n := make(notifications, 16)
	cs := connect(t, url, n.options())
	created, _ := callOK[demo.Page](t, cs, "create_page", map[string]any{"workspace_id": "ws_abc123", "title": "Draft"})
	callOK[demo.Page](t, cs, "update_page", map[string]any{"page_id": created.ID, "body": "text"})
	callOK[demo.DeletePageResult](t, cs, "delete_page", map[string]any{"page_id": created.ID})
	// Outlast the SDK's 10ms debounce of list_changed.
	time.Sleep(50 * time.Millisecond)
	s.SetExtraTool(true)
	if got := n.next(t); got != "tools" {
		t.Errorf("first notification %q, want the fence's tools", got)
	}
	select {
	case got := <-n:
		t.Errorf("unexpected notification %q", got)
	default:
	}
}

// Many sessions reading and writing at once, with the tool list changing
// under them; run with -race.
func TestConcurrentUse(t *testing.T) {
	s, url := start(t, nil)
	const sessions, rounds = 4, 15
	var wg sync.WaitGroup
	for i := range sessions {
		cs := connect(t, url, nil)
		wg.Go(func() {
			// t.Fatal may not be called here, so calls report and stop.
			do := func(tool string, args map[string]any) (*mcp.CallToolResult, bool) {
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: tool, Arguments: args})
				switch {
				case err != nil:
					t.Errorf("%s: %v", tool, err)
					return nil, false
				case res.IsError:
					t.Errorf("%s: %s", tool, text(res.Content))
					return nil, false
				}
				return res, true
			}
			for j := range rounds {
				ws := []string{"ws_abc123", "ws_team"}[j%2]
				res, ok := do("create_page", map[string]any{"workspace_id": ws, "title": fmt.Sprintf("s%d r%d", i, j)})
				if !ok {
					return
				}
				b, _ := json.Marshal(res.StructuredContent)
				var p demo.Page
				if err := json.Unmarshal(b, &p); err != nil {
					t.Error(err)
					return
				}
				for _, c := range []struct {
					tool string
					args map[string]any
				}{
					{"get_pages", map[string]any{"workspace_id": ws, "limit": 3}},
					{"search", map[string]any{"workspace_id": ws, "query": "r"}},
					{"update_page", map[string]any{"page_id": p.ID, "body": "x"}},
					{"delete_page", map[string]any{"page_id": p.ID}},
				} {
					if _, ok := do(c.tool, c.args); !ok {
						return
					}
				}
				if _, err := cs.ListResources(t.Context(), nil); err != nil {
					t.Errorf("list resources: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 2 * rounds {
			s.SetExtraTool(i%2 == 0)
		}
	})
	wg.Wait()

	cs := connect(t, url, nil)
	for ws, want := range map[string][]string{"ws_abc123": abcPages, "ws_team": teamPages} {
		list, _ := callOK[demo.GetPagesResult](t, cs, "get_pages", map[string]any{"workspace_id": ws})
		if diff := cmp.Diff(want, ids(list.Pages)); diff != "" {
			t.Errorf("%s after concurrent create+delete (-want +got):\n%s", ws, diff)
		}
	}
}
