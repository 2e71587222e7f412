//lint:file-ignore SA1019 logging is deprecated from protocol 2026-07-28 on; the gateway serves the versions that have it

package broker

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// passLogLevel is receiving middleware that gives the agent's
// logging/setLevel to each of its upstream sessions, present and future,
// so that upstreams send what the agent asked for. An upstream's refusal
// is not the agent's error: the gateway itself took the level. The
// upstreams are asked together, so that the agent waits for the slowest
// of them (each within its call timeout), not for each in turn.
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
		var wg sync.WaitGroup
		for name, cs := range ups {
			wg.Go(func() { b.setLogLevel(ctx, b.ups[name], cs, level) })
		}
		wg.Wait()
		return res, err
	}
}

// logLevels rank MCP's log levels, least severe first.
var logLevels = map[mcp.LoggingLevel]int{"debug": 0, "info": 1, "notice": 2, "warning": 3,
	"error": 4, "critical": 5, "alert": 6, "emergency": 7}

// wantsLog reports whether the agent asked for the log message of params:
// it set a level with logging/setLevel, and the message's is that or more
// severe, as the SDK's server judges the messages it sends.
func (as *agentSession) wantsLog(params json.RawMessage) bool {
	var p mcp.LoggingMessageParams
	if json.Unmarshal(params, &p) != nil {
		return false
	}
	as.mu.Lock()
	set := as.level
	as.mu.Unlock()
	least, ok := logLevels[mcp.LoggingLevel(set)]
	got, known := logLevels[p.Level]
	return ok && known && got >= least
}

// setLogLevel asks an upstream session with u for log messages at level
// and up, within u's call timeout. It is best effort: an upstream that
// refuses, or does not answer, is logged, and sends what it sends.
func (b *Broker) setLogLevel(ctx context.Context, u *upstream, cs *mcp.ClientSession, level string) {
	ctx, cancel := context.WithTimeout(ctx, u.CallTimeout)
	defer cancel()
	err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: mcp.LoggingLevel(level)})
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		b.log.Warn("upstream did not take the agent's log level in time", "upstream", u.Name, "err", errorText(err, false))
	default:
		b.log.Debug("upstream did not take the agent's log level", "upstream", u.Name, "err", errorText(err, false))
	}
}
