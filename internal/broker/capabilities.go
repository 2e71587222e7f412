//lint:file-ignore SA1019 logging is deprecated from protocol 2026-07-28 on; the gateway serves the versions that have it

package broker

import (
	"context"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/decision"
)

// announce is receiving middleware of role's server that tells an agent,
// at initialize or server/discover, the capabilities of the upstreams the
// role sees (see capabilities) rather than all the broker can relay: an
// agent that subscribes to a resource, asks for a completion or sets a
// log level is to do so only where an upstream it reaches can.
func (b *Broker) announce(role string) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			res, err := next(ctx, method, req)
			if err != nil {
				return res, err
			}
			switch r := res.(type) {
			case *mcp.InitializeResult:
				r.Capabilities = b.capabilities(role, r.Capabilities)
			case *mcp.DiscoverResult:
				r.Capabilities = b.capabilities(role, r.Capabilities)
			}
			return res, err
		}
	}
}

// capabilities are what role's agents are told the gateway serves: the
// union of what the upstreams the role sees anything of (under the
// current policy) declared, as their catalogue sessions last said, over
// base, the role server's own. Tools are always served: their list, which
// the policy filters, may change, as upstreams come and go. Prompts and
// resources come with list changes, which the broker relays; resource
// subscriptions, completions and logging only if one of those upstreams
// declared them. An upstream never reached declared nothing yet; one
// reached before and gone since, what it declared then.
func (b *Broker) capabilities(role string, base *mcp.ServerCapabilities) *mcp.ServerCapabilities {
	var c mcp.ServerCapabilities
	if base != nil {
		c = *base
	}
	c.Tools = &mcp.ToolCapabilities{ListChanged: true}
	c.Prompts, c.Resources, c.Completions, c.Logging = nil, nil, nil, nil
	set := b.policies.Current()
	for _, name := range b.names {
		if !decision.ServerVisible(set, role, name) {
			continue
		}
		u := b.ups[name]
		u.mu.Lock()
		declared := u.caps
		u.mu.Unlock()
		if declared == nil {
			continue
		}
		if declared.Prompts != nil {
			c.Prompts = &mcp.PromptCapabilities{ListChanged: true}
		}
		if declared.Resources != nil {
			if c.Resources == nil {
				c.Resources = &mcp.ResourceCapabilities{ListChanged: true}
			}
			c.Resources.Subscribe = c.Resources.Subscribe || declared.Resources.Subscribe
		}
		if declared.Completions != nil {
			c.Completions = &mcp.CompletionCapabilities{}
		}
		if declared.Logging != nil {
			c.Logging = &mcp.LoggingCapabilities{}
		}
	}
	return &c
}
