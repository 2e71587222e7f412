package policy

import (
	"encoding/json"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Catalog is the live tool list of the upstream servers, used to check a
// policy against what the servers really offer.
type Catalog interface {
	// Tools returns the tools of the named server; ok is false when the
	// catalogue does not know the server.
	Tools(server string) (tools []Tool, ok bool)
}

// Tool is one upstream tool as its server describes it.
type Tool struct {
	Name        string
	InputSchema json.RawMessage
	Annotations *Annotations
}

// StaticCatalog is a Catalog held in memory: server name to tools.
type StaticCatalog map[string][]Tool

var _ Catalog = StaticCatalog(nil)

// Tools implements Catalog.
func (s StaticCatalog) Tools(server string) ([]Tool, bool) {
	t, ok := s[server]
	return t, ok
}

// schema is the part of a JSON Schema the checks need.
type schema struct {
	Type       any                `json:"type"`
	Properties map[string]*schema `json:"properties"`
	Items      *schema            `json:"items"`
}

// checkTool checks a grant against the server's tool list: the tool exists,
// every named argument is in its input schema, and every matcher fits the
// argument's declared type.
func (c *compiler) checkTool(g *Grant, tools []Tool, n *yaml.Node, path string) {
	var tool *Tool
	for i := range tools {
		if tools[i].Name == g.Name {
			tool = &tools[i]
			break
		}
	}
	if tool == nil {
		c.Errorf(n, path, "server %q has no tool %q", g.Server, g.Name)
		return
	}
	var root schema
	if err := json.Unmarshal(tool.InputSchema, &root); err != nil {
		c.Errorf(n, path, "tool %q has an unreadable input schema: %v", g.Name, err)
		return
	}
	c.checkSchema(g.Args, &root, g, path)
}

func (c *compiler) checkSchema(f *Field, s *schema, g *Grant, path string) {
	for _, name := range f.Names {
		child := f.Fields[name]
		prop, ok := s.Properties[name]
		if !ok {
			c.Problems = append(c.Problems, Problem{Pos: child.pos, Path: path + ".constraints." + child.Path,
				Msg: fmt.Sprintf("argument %q is not in the input schema of %s__%s", child.Path, g.Server, g.Name)})
			continue
		}
		c.checkType(child, prop, g, path)
		c.checkSchema(child, prop, g, path)
	}
	if f.Each != nil && s.Items != nil {
		c.checkType(f.Each, s.Items, g, path)
		c.checkSchema(f.Each, s.Items, g, path)
	}
}

func (c *compiler) checkType(f *Field, s *schema, g *Grant, path string) {
	declared, ok := schemaTypes(s.Type)
	if !ok || declared&f.types != 0 {
		return
	}
	var ops []string
	for _, m := range f.Matchers {
		ops = append(ops, m.Op.String())
	}
	if f.Each != nil {
		ops = append(ops, "each")
	}
	c.Problems = append(c.Problems, Problem{Pos: f.pos, Path: path + ".constraints." + f.Path,
		Msg: fmt.Sprintf("%s needs %s, but the input schema of %s__%s says %q is %s",
			strings.Join(ops, ", "), f.types, g.Server, g.Name, f.Path, declared)})
}
