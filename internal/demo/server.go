// Package demo is AMG's built-in demo upstream: a small, deterministic,
// in-memory MCP server shaped like a Notion workspace.
//
// `amg serve` with no configuration puts it behind the gateway, so that a
// new user can connect a real MCP client and watch allowed calls, denied
// calls and hidden tools without installing anything else. Its tools,
// argument names and argument types are exactly those the example
// policies under policies/ grant for the server "notion", so those
// policies validate against its live tool list.
//
// The server holds two workspaces, ws_abc123 and ws_team, with a handful
// of pages each. It offers the tools get_pages, search, create_page,
// update_page and delete_page, the prompt summarize_page, and every page
// as the resource notion://<workspace_id>/pages/<page_id>. Mutations change
// only the in-memory store; restarting the process restores the seed.
package demo

import (
	"log/slog"
	"net/http"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Options configures a Server. The zero value is ready to use.
type Options struct {
	// Logger receives the SDK's and the server's logs. Nil discards them.
	Logger *slog.Logger
}

// Server is the demo MCP server. It is safe for concurrent use and may
// serve any number of sessions at once.
type Server struct {
	mcp     *mcp.Server
	handler http.Handler
	store   *store
	log     *slog.Logger

	extraMu sync.Mutex
	extra   bool
}

// ServerName is the name the demo server gives at initialize.
const ServerName = "amg-demo-notion"

const instructions = `A demo workspace built into AMG. Workspaces: ws_abc123 (Acme Product) and ws_team (Team wiki).
List pages with get_pages, find them with search, and read one as the resource notion://<workspace_id>/pages/<page_id>.
Changes are kept in memory only.`

// NewServer returns a demo server holding the seed workspaces.
func NewServer(opts *Options) *Server {
	var o Options
	if opts != nil {
		o = *opts
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{store: newStore(), log: log}
	impl := &mcp.Implementation{Name: ServerName, Title: "AMG demo workspace (Notion-like)", Version: "v0.1.0"}
	s.mcp = mcp.NewServer(impl, &mcp.ServerOptions{
		Instructions: instructions,
		Logger:       log,
		// Capabilities are spelled out because the inferred ones would
		// promise resources/list_changed, which this server never sends:
		// gateway tests rely on create_page and delete_page changing the
		// store and nothing else, notifications included. Tools keep the
		// inferred listChanged for SetExtraTool.
		Capabilities: &mcp.ServerCapabilities{
			Prompts:   &mcp.PromptCapabilities{},
			Resources: &mcp.ResourceCapabilities{},
		},
	})
	s.addTools()
	s.addResources()
	s.addPrompts()
	s.handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.mcp },
		&mcp.StreamableHTTPOptions{Logger: log})
	return s
}

// MCP returns the underlying SDK server, e.g. to serve it over another
// transport.
func (s *Server) MCP() *mcp.Server { return s.mcp }

// Handler returns the Streamable HTTP handler serving this server, meant
// to be mounted at /mcp. It keeps sessions (Mcp-Session-Id) so that
// clients can hold the GET stream on which tools/list_changed arrives.
func (s *Server) Handler() http.Handler { return s.handler }

// SetExtraTool adds (true) or removes (false) the read-only tool
// ping_workspace. The SDK then sends notifications/tools/list_changed to
// every connected session, which is what gateway tests use it for.
// Setting the state it already has does nothing and sends nothing.
func (s *Server) SetExtraTool(enabled bool) {
	s.extraMu.Lock()
	defer s.extraMu.Unlock()
	if s.extra == enabled {
		return
	}
	s.extra = enabled
	if enabled {
		s.addPing()
	} else {
		s.mcp.RemoveTools(toolPing)
	}
}
