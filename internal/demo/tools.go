package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Tool names. The example policies under policies/ grant these by name;
// renaming one breaks `amg policy validate` against the demo.
const (
	toolGetPages   = "get_pages"
	toolSearch     = "search"
	toolCreatePage = "create_page"
	toolUpdatePage = "update_page"
	toolDeletePage = "delete_page"
	toolPing       = "ping_workspace"
)

// Tools returns the names of the standard tools, sorted. The extra tool
// toggled by [Server.SetExtraTool] is not among them.
func Tools() []string {
	names := []string{toolGetPages, toolSearch, toolCreatePage, toolUpdatePage, toolDeletePage}
	slices.Sort(names)
	return names
}

const defaultLimit = 20

// The input schemas are written out rather than inferred from the Go
// types: they are the contract the example policies are validated
// against, so they should read exactly as a client sees them, with
// "additionalProperties": false so that the SDK rejects arguments the
// gateway has not been told about.
var (
	getPagesSchema = json.RawMessage(`{
	"type": "object",
	"properties": {
		"workspace_id": {"type": "string", "description": "Workspace whose pages to list, e.g. ws_abc123."},
		"limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Maximum number of pages to return (1-100, default 20)."},
		"cursor": {"type": "string", "description": "The next_cursor of a previous get_pages result, to continue the listing."}
	},
	"required": ["workspace_id"],
	"additionalProperties": false
}`)

	searchSchema = json.RawMessage(`{
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
}`)

	createPageSchema = json.RawMessage(`{
	"type": "object",
	"properties": {
		"workspace_id": {"type": "string", "description": "Workspace to create the page in, e.g. ws_abc123."},
		"title": {"type": "string", "minLength": 1, "maxLength": 200, "description": "Title of the new page."},
		"body": {"type": "string", "maxLength": 20000, "description": "Markdown body of the new page; empty if omitted."}
	},
	"required": ["workspace_id", "title"],
	"additionalProperties": false
}`)

	updatePageSchema = json.RawMessage(`{
	"type": "object",
	"properties": {
		"page_id": {"type": "string", "description": "Page to change, e.g. pg_roadmap26."},
		"title": {"type": "string", "minLength": 1, "maxLength": 200, "description": "New title; unchanged if omitted."},
		"body": {"type": "string", "maxLength": 20000, "description": "New markdown body, replacing the old one; unchanged if omitted."}
	},
	"required": ["page_id"],
	"additionalProperties": false
}`)

	deletePageSchema = json.RawMessage(`{
	"type": "object",
	"properties": {
		"page_id": {"type": "string", "description": "Page to delete, e.g. pg_roadmap26."}
	},
	"required": ["page_id"],
	"additionalProperties": false
}`)

	pingSchema = json.RawMessage(`{
	"type": "object",
	"properties": {
		"workspace_id": {"type": "string", "description": "Workspace to check, e.g. ws_abc123."}
	},
	"required": ["workspace_id"],
	"additionalProperties": false
}`)
)

type getPagesIn struct {
	WorkspaceID string `json:"workspace_id"`
	Limit       int    `json:"limit,omitempty"`
	Cursor      string `json:"cursor,omitempty"`
}

// GetPagesResult is the structured result of get_pages.
type GetPagesResult struct {
	WorkspaceID string        `json:"workspace_id"`
	Pages       []PageSummary `json:"pages"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

type searchFilter struct {
	Owner string   `json:"owner,omitempty"`
	Tags  []string `json:"tags,omitempty"`
}

type searchIn struct {
	Query       string        `json:"query"`
	WorkspaceID string        `json:"workspace_id"`
	Filter      *searchFilter `json:"filter,omitempty"`
}

// SearchResult is the structured result of search.
type SearchResult struct {
	WorkspaceID string        `json:"workspace_id"`
	Query       string        `json:"query"`
	Pages       []PageSummary `json:"pages"`
}

type createPageIn struct {
	WorkspaceID string `json:"workspace_id"`
	Title       string `json:"title"`
	Body        string `json:"body,omitempty"`
}

type updatePageIn struct {
	PageID string  `json:"page_id"`
	Title  *string `json:"title,omitempty"`
	Body   *string `json:"body,omitempty"`
}

type deletePageIn struct {
	PageID string `json:"page_id"`
}

// DeletePageResult is the structured result of delete_page.
type DeletePageResult struct {
	Deleted PageSummary `json:"deleted"`
}

type pingIn struct {
	WorkspaceID string `json:"workspace_id"`
}

// PingResult is the structured result of ping_workspace.
type PingResult struct {
	WorkspaceID string `json:"workspace_id"`
	Name        string `json:"name"`
	Pages       int    `json:"pages"`
}

func (s *Server) addTools() {
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolGetPages,
		Title:       "List pages",
		Description: "Lists the pages of a workspace, oldest first, with their owners and tags. Results are paginated: pass next_cursor back as cursor to get the following pages.",
		InputSchema: getPagesSchema,
		Annotations: &mcp.ToolAnnotations{Title: "List pages", ReadOnlyHint: true, OpenWorldHint: new(false)},
	}, s.getPages)
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolSearch,
		Title:       "Search pages",
		Description: "Finds the pages of a workspace whose title or body contains the query (ignoring case), optionally only those of one owner or carrying given tags.",
		InputSchema: searchSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Search pages", ReadOnlyHint: true, OpenWorldHint: new(false)},
	}, s.search)
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolCreatePage,
		Title:       "Create page",
		Description: "Creates a page in a workspace and returns it with its new id.",
		InputSchema: createPageSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Create page", DestructiveHint: new(false), IdempotentHint: false, OpenWorldHint: new(false)},
	}, s.createPage)
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolUpdatePage,
		Title:       "Update page",
		Description: "Changes the title and/or body of a page; fields not given stay as they are.",
		InputSchema: updatePageSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Update page", DestructiveHint: new(false), IdempotentHint: true, OpenWorldHint: new(false)},
	}, s.updatePage)
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolDeletePage,
		Title:       "Delete page",
		Description: "Deletes a page permanently.",
		InputSchema: deletePageSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Delete page", DestructiveHint: new(true), IdempotentHint: true, OpenWorldHint: new(false)},
	}, s.deletePage)
}

// addPing registers the extra tool. It is built afresh each time because
// the SDK may keep what it is given.
func (s *Server) addPing() {
	mcp.AddTool(s.mcp, &mcp.Tool{
		Name:        toolPing,
		Title:       "Ping workspace",
		Description: "Checks that a workspace exists and reports how many pages it holds.",
		InputSchema: pingSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Ping workspace", ReadOnlyHint: true, OpenWorldHint: new(false)},
	}, s.ping)
}

func textResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}

func writeSummaries(b *strings.Builder, pages []PageSummary) {
	for _, p := range pages {
		tags := "none"
		if len(p.Tags) > 0 {
			tags = strings.Join(p.Tags, ", ")
		}
		fmt.Fprintf(b, "\n- %s %q (owner %s; tags: %s)", p.ID, p.Title, p.Owner, tags)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Errors returned by the handlers become tool results with isError set:
// the SDK does that for typed handlers, which is what MCP asks of tool
// failures so that the model can read and correct them.

func (s *Server) getPages(_ context.Context, _ *mcp.CallToolRequest, in getPagesIn) (*mcp.CallToolResult, GetPagesResult, error) {
	limit := in.Limit
	if limit == 0 {
		limit = defaultLimit
	}
	pages, next, err := s.store.list(in.WorkspaceID, limit, in.Cursor)
	if err != nil {
		return nil, GetPagesResult{}, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s in workspace %s:", plural(len(pages), "page", "pages"), in.WorkspaceID)
	writeSummaries(&b, pages)
	if next != "" {
		fmt.Fprintf(&b, "\nMore pages follow: call get_pages again with cursor %q.", next)
	}
	return textResult(b.String()), GetPagesResult{WorkspaceID: in.WorkspaceID, Pages: pages, NextCursor: next}, nil
}

func (s *Server) search(_ context.Context, _ *mcp.CallToolRequest, in searchIn) (*mcp.CallToolResult, SearchResult, error) {
	var f searchFilter
	if in.Filter != nil {
		f = *in.Filter
	}
	pages, err := s.store.search(in.WorkspaceID, in.Query, f.Owner, f.Tags)
	if err != nil {
		return nil, SearchResult{}, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s in workspace %s match %q:", plural(len(pages), "page", "pages"), in.WorkspaceID, in.Query)
	writeSummaries(&b, pages)
	return textResult(b.String()), SearchResult{WorkspaceID: in.WorkspaceID, Query: in.Query, Pages: pages}, nil
}

func (s *Server) createPage(_ context.Context, _ *mcp.CallToolRequest, in createPageIn) (*mcp.CallToolResult, Page, error) {
	p, err := s.store.create(in.WorkspaceID, in.Title, in.Body)
	if err != nil {
		return nil, Page{}, err
	}
	s.log.Debug("demo page created", "page_id", p.ID, "workspace_id", p.WorkspaceID)
	return textResult(fmt.Sprintf("Created page %s %q in workspace %s (%s).", p.ID, p.Title, p.WorkspaceID, p.URI)), p, nil
}

func (s *Server) updatePage(_ context.Context, _ *mcp.CallToolRequest, in updatePageIn) (*mcp.CallToolResult, Page, error) {
	if in.Title == nil && in.Body == nil {
		return nil, Page{}, fmt.Errorf("nothing to update on page %q: give a title, a body or both", in.PageID)
	}
	p, err := s.store.update(in.PageID, in.Title, in.Body)
	if err != nil {
		return nil, Page{}, err
	}
	s.log.Debug("demo page updated", "page_id", p.ID)
	return textResult(fmt.Sprintf("Updated page %s %q in workspace %s.", p.ID, p.Title, p.WorkspaceID)), p, nil
}

func (s *Server) deletePage(_ context.Context, _ *mcp.CallToolRequest, in deletePageIn) (*mcp.CallToolResult, DeletePageResult, error) {
	p, err := s.store.delete(in.PageID)
	if err != nil {
		return nil, DeletePageResult{}, err
	}
	s.log.Debug("demo page deleted", "page_id", p.ID)
	return textResult(fmt.Sprintf("Deleted page %s %q from workspace %s.", p.ID, p.Title, p.WorkspaceID)), DeletePageResult{Deleted: p.summary()}, nil
}

func (s *Server) ping(_ context.Context, _ *mcp.CallToolRequest, in pingIn) (*mcp.CallToolResult, PingResult, error) {
	name, n, err := s.store.info(in.WorkspaceID)
	if err != nil {
		return nil, PingResult{}, err
	}
	return textResult(fmt.Sprintf("Workspace %s (%s) is up with %s.", in.WorkspaceID, name, plural(n, "page", "pages"))),
		PingResult{WorkspaceID: in.WorkspaceID, Name: name, Pages: n}, nil
}
