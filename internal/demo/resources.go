package demo

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const (
	pageTemplate    = "notion://{workspace_id}/pages/{page_id}"
	markdown        = "text/markdown"
	resourcePage    = 50 // resources per resources/list page
	promptSummarize = "summarize_page"
)

// addResources makes every page readable and listable without
// registering one SDK resource per page: registering would make each
// create_page and delete_page broadcast resources/list_changed. Reads go
// through a resource template, which the SDK matches before calling
// readPage; listings are answered from the store by a middleware, since
// the SDK lists only registered resources.
func (s *Server) addResources() {
	s.mcp.AddResourceTemplate(&mcp.ResourceTemplate{
		Name:        "page",
		Title:       "Workspace page",
		Description: "A page of a workspace as markdown: title, owner, tags and body.",
		MIMEType:    markdown,
		URITemplate: pageTemplate,
	}, s.readPage)
	s.mcp.AddReceivingMiddleware(s.listPages)
}

func (s *Server) listPages(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		lr, ok := req.(*mcp.ListResourcesRequest)
		if method != "resources/list" || !ok {
			return next(ctx, method, req)
		}
		var cursor string
		if lr.Params != nil {
			cursor = lr.Params.Cursor
		}
		return s.pageResources(cursor)
	}
}

// pageResources lists pages by URI; the cursor is the last URI listed, so
// a listing stays consistent while pages are created and deleted.
func (s *Server) pageResources(cursor string) (*mcp.ListResourcesResult, error) {
	var after string
	if cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("invalid cursor %q", cursor)}
		}
		after = string(raw)
	}
	res := &mcp.ListResourcesResult{Resources: []*mcp.Resource{}}
	res.CacheScope = "public" // as the SDK sets on the lists it builds itself
	for _, p := range s.store.all() {
		if p.URI <= after {
			continue
		}
		if len(res.Resources) == resourcePage {
			res.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(res.Resources[len(res.Resources)-1].URI))
			break
		}
		res.Resources = append(res.Resources, &mcp.Resource{
			URI:         p.URI,
			Name:        p.ID,
			Title:       p.Title,
			Description: fmt.Sprintf("Page of workspace %s owned by %s.", p.WorkspaceID, p.Owner),
			MIMEType:    markdown,
		})
	}
	return res, nil
}

func (s *Server) readPage(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	uri := req.Params.URI
	p, ok := s.lookup(uri)
	if !ok {
		return nil, mcp.ResourceNotFoundError(uri)
	}
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: markdown, Text: renderMarkdown(p)}}}, nil
}

// lookup finds the page a URI names; a page id under the wrong workspace
// is not found, so that a grant on one workspace's URIs cannot reach
// another's pages.
func (s *Server) lookup(uri string) (Page, bool) {
	ws, id, ok := parsePageURI(uri)
	if !ok {
		return Page{}, false
	}
	p, err := s.store.get(id)
	if err != nil || p.WorkspaceID != ws {
		return Page{}, false
	}
	return p, true
}

func renderMarkdown(p Page) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\nOwner: %s\n", p.Title, p.Owner)
	if len(p.Tags) > 0 {
		fmt.Fprintf(&b, "Tags: %s\n", strings.Join(p.Tags, ", "))
	}
	if p.Body != "" {
		fmt.Fprintf(&b, "\n%s\n", p.Body)
	}
	return b.String()
}

func (s *Server) addPrompts() {
	s.mcp.AddPrompt(&mcp.Prompt{
		Name:        promptSummarize,
		Title:       "Summarize page",
		Description: "Asks the model for a short summary of one page, with the page attached.",
		Arguments: []*mcp.PromptArgument{{
			Name:        "page_id",
			Description: "Page to summarize, e.g. pg_roadmap26.",
			Required:    true,
		}},
	}, s.summarizePage)
}

// summarizePage fails with invalid params rather than a result: prompts,
// unlike tools, have no error result in MCP.
func (s *Server) summarizePage(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	id := req.Params.Arguments["page_id"]
	if id == "" {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "missing required argument page_id"}
	}
	p, err := s.store.get(id)
	if err != nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: err.Error()}
	}
	return &mcp.GetPromptResult{
		Description: fmt.Sprintf("Summarize page %s %q", p.ID, p.Title),
		Messages: []*mcp.PromptMessage{
			{Role: "user", Content: &mcp.TextContent{Text: fmt.Sprintf(
				"Summarize the page %q below in at most three bullet points. Keep names, dates and decisions; leave out everything else.", p.Title)}},
			{Role: "user", Content: &mcp.EmbeddedResource{Resource: &mcp.ResourceContents{URI: p.URI, MIMEType: markdown, Text: renderMarkdown(p)}}},
		},
	}, nil
}
