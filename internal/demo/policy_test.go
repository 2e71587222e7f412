package demo_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/policy"
)

const policyDir = "../../policies"

// liveCatalog is what `amg policy validate` sees: the demo's tools/list,
// as served over the wire, under the server name the example policies use.
func liveCatalog(t *testing.T, cs *mcp.ClientSession) policy.StaticCatalog {
	t.Helper()
	res, err := cs.ListTools(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var tools []policy.Tool
	for _, tool := range res.Tools {
		schema, err := json.Marshal(tool.InputSchema)
		if err != nil {
			t.Fatal(err)
		}
		pt := policy.Tool{Name: tool.Name, InputSchema: schema}
		if a := tool.Annotations; a != nil {
			pt.Annotations = &policy.Annotations{
				ReadOnly:    new(a.ReadOnlyHint),
				Destructive: a.DestructiveHint,
				Idempotent:  new(a.IdempotentHint),
				OpenWorld:   a.OpenWorldHint,
			}
		}
		tools = append(tools, pt)
	}
	return policy.StaticCatalog{"notion": tools}
}

// The example policies must compile against the live demo server: this is
// what makes `amg serve` with no config work out of the box.
func TestExamplePoliciesMatchDemo(t *testing.T) {
	_, url := start(t, nil)
	cs := connect(t, url, nil)
	cat := liveCatalog(t, cs)

	set, err := policy.LoadDir(policyDir, &policy.Options{Servers: []string{"notion"}, Catalog: cat})
	if err != nil {
		t.Fatalf("example policies do not compile against the demo server:\n%v", err)
	}
	var roles []string
	for _, r := range set.Roles() {
		roles = append(roles, r.Name)
	}
	if diff := cmp.Diff([]string{"notion_editor", "notion_read", "support_shadow"}, roles); diff != "" {
		t.Errorf("roles (-want +got):\n%s", diff)
	}

	t.Run("resource grant covers exactly ws_abc123", func(t *testing.T) {
		read, _ := set.Role("notion_read")
		grants := read.Servers["notion"].Resources
		res, err := cs.ListResources(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Resources {
			matched := false
			for _, g := range grants {
				matched = matched || g.Matches(r.URI)
			}
			if want := strings.HasPrefix(r.URI, "notion://ws_abc123/"); matched != want {
				t.Errorf("%s: granted %v, want %v", r.URI, matched, want)
			}
		}
	})

	t.Run("annotation approval parks only delete_page", func(t *testing.T) {
		editor, _ := set.Role("notion_editor")
		var rule *policy.ApprovalRule
		for _, a := range editor.Approvals {
			if len(a.Annotations) > 0 {
				rule = a
			}
		}
		if rule == nil {
			t.Fatal("notion_editor has no annotation approval rule")
		}
		got := map[string]bool{}
		for _, tool := range cat["notion"] {
			got[tool.Name] = rule.Matches("notion", tool.Name, tool.Annotations)
		}
		want := map[string]bool{"get_pages": false, "search": false, "create_page": false, "update_page": false, "delete_page": true}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("approval matches (-want +got):\n%s", diff)
		}
	})
}

// Guards the test above against passing vacuously: the same policies
// against a server lacking an argument they constrain must fail.
func TestExamplePoliciesCheckTheCatalog(t *testing.T) {
	_, url := start(t, nil)
	cat := liveCatalog(t, connect(t, url, nil))
	for i, tool := range cat["notion"] {
		if tool.Name == "search" {
			cat["notion"][i].InputSchema = json.RawMessage(`{"type":"object","properties":{"query":{"type":"string"},"workspace_id":{"type":"string"}}}`)
		}
	}
	_, err := policy.LoadDir(policyDir, &policy.Options{Servers: []string{"notion"}, Catalog: cat})
	if err == nil || !strings.Contains(err.Error(), `notion_read.yaml:17:11: servers.notion.tools[1].constraints.filter: argument "filter" is not in the input schema of notion__search`) {
		t.Errorf("got %v, want a complaint about filter", err)
	}
}
