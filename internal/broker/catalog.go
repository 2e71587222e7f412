package broker

import (
	"encoding/json"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/policy"
)

// Names returns the upstream names, in the order they are configured.
func (b *Broker) Names() []string { return append([]string(nil), b.names...) }

// Tools returns server's tools as its tool list last said, with ok false
// while its catalogue session is not connected. The broker is thereby a
// live [policy.Catalog], for checking grants and reading annotations.
func (b *Broker) Tools(server string) (tools []policy.Tool, ok bool) {
	u := b.ups[server]
	if u == nil {
		return nil, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.catalog == nil {
		return nil, false
	}
	tools = make([]policy.Tool, 0, len(u.tools))
	for _, t := range u.tools {
		schema, _ := json.Marshal(t.InputSchema)
		tools = append(tools, policy.Tool{Name: t.Name, InputSchema: schema, Annotations: annotations(t)})
	}
	return tools, true
}

var _ policy.Catalog = (*Broker)(nil)

// annotations converts the annotations a tool declared, nil when none.
func annotations(t *mcp.Tool) *policy.Annotations {
	a := t.Annotations
	if a == nil {
		return nil
	}
	ro, id := a.ReadOnlyHint, a.IdempotentHint
	return &policy.Annotations{ReadOnly: &ro, Destructive: a.DestructiveHint, Idempotent: &id, OpenWorld: a.OpenWorldHint}
}
