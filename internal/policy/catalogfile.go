package policy

import (
	"encoding/json"
	"fmt"
	"os"
)

// LoadCatalog reads a catalogue file: a JSON object mapping each server
// name to the "tools" array of its tools/list result, as MCP servers
// return it. It lets `amg policy validate` check a policy offline.
func LoadCatalog(name string) (StaticCatalog, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read catalogue: %w", err)
	}
	var raw map[string][]struct {
		Name        string          `json:"name"`
		InputSchema json.RawMessage `json:"inputSchema"`
		Annotations *struct {
			ReadOnlyHint    *bool `json:"readOnlyHint"`
			DestructiveHint *bool `json:"destructiveHint"`
			IdempotentHint  *bool `json:"idempotentHint"`
			OpenWorldHint   *bool `json:"openWorldHint"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("read catalogue %s: %w", name, err)
	}
	cat := StaticCatalog{}
	for server, tools := range raw {
		cat[server] = make([]Tool, 0, len(tools))
		for _, t := range tools {
			tool := Tool{Name: t.Name, InputSchema: t.InputSchema}
			if a := t.Annotations; a != nil {
				tool.Annotations = &Annotations{ReadOnly: a.ReadOnlyHint, Destructive: a.DestructiveHint, Idempotent: a.IdempotentHint, OpenWorld: a.OpenWorldHint}
			}
			cat[server] = append(cat[server], tool)
		}
	}
	return cat, nil
}
