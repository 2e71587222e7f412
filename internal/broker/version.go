package broker

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/mcpfilter"
)

// An agent session speaks the protocol version it agreed at initialize.
// Its agent names that version in the MCP-Protocol-Version header of every
// later request, from 2025-06-18 on; the header came with that version, so
// a request without it is taken, by authz and the go-sdk alike, as one of
// 2025-03-26, the version with JSON-RPC batches. A request naming another
// version the gateway speaks is served, as the go-sdk serves it (the
// official conformance suite sends 2025-03-26 on a session of the newest
// version). What the version decides on a session, whether a body may be
// a batch, is the session's own: authz cannot know it, and neither the
// header nor its absence may stand for it.

// agree notes the protocol version the session of an initialize agreed,
// res the SDK's answer to it: what the role server answered, which an
// adopting replica learns as it replays the initialize. A token's state
// (stateless.go) agrees none.
func (b *Broker) agree(ctx context.Context, ss *mcp.ServerSession, res mcp.Result) {
	init, ok := res.(*mcp.InitializeResult)
	if _, stateless := ctx.Value(tokenStateKey{}).(*tokenRef); !ok || stateless {
		return
	}
	b.agentSession(ss).version.Store(init.ProtocolVersion)
}

// speaksSessionVersion reports whether request r on agent session as (nil
// when it names none, or one unknown here), whose body is body, speaks
// the session's protocol version; if not, it refuses the request, and
// records why: a session that agreed none (its initialize failed), or a
// batch the session's version has not (sent without the header, which
// authz takes as 2025-03-26's, or under a header naming 2025-03-26).
func (b *Broker) speaksSessionVersion(w http.ResponseWriter, r *http.Request, d authz.Decision, as *agentSession, body []byte) bool {
	if as == nil {
		return true
	}
	agreed, _ := as.version.Load().(string)
	var code, why string
	switch {
	case agreed == "":
		code, why = CodeSessionRequired, "the session agreed no protocol version: begin a session with initialize"
	case !authz.BatchesAllowed(agreed) && r.Method == http.MethodPost && isBatch(body):
		code, why = string(authz.CodeMalformedRequest), fmt.Sprintf("JSON-RPC batches are not allowed in protocol %q, this session's version", agreed)
	default:
		return true
	}
	b.record(d, code, why)
	writeRPCError(w, http.StatusBadRequest, requestID(body), mcpfilter.CodeInvalidRequest, why)
	return false
}

// isBatch reports whether body, which authz parsed as JSON-RPC, is a
// batch: a JSON array.
func isBatch(body []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("["))
}
