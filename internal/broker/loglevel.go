//lint:file-ignore SA1019 logging is deprecated from protocol 2026-07-28 on; the gateway serves the versions that have it

package broker

import (
	"context"
	"maps"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// passLogLevel is receiving middleware that gives the agent's
// logging/setLevel to each of its upstream sessions, present and future,
// so that upstreams send what the agent asked for. An upstream's refusal
// is not the agent's error: the gateway itself took the level.
func (b *Broker) passLogLevel(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		r, ok := req.(*mcp.ServerRequest[*mcp.SetLoggingLevelParams])
		if method != "logging/setLevel" || err != nil || !ok {
			return res, err
		}
		as := b.agentSession(r.Session)
		level := string(r.Params.Level)
		as.mu.Lock()
		as.level = level
		ups := maps.Clone(as.ups)
		as.mu.Unlock()
		for name, cs := range ups {
			b.setLogLevel(ctx, name, cs, level)
		}
		return res, err
	}
}

// setLogLevel asks an upstream session for log messages at level and up.
func (b *Broker) setLogLevel(ctx context.Context, server string, cs *mcp.ClientSession, level string) {
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: mcp.LoggingLevel(level)}); err != nil {
		b.log.Debug("upstream did not take the agent's log level", "upstream", server, "err", err)
	}
}
