package diag

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestWalkerReportsEveryProblemInOrder(t *testing.T) {
	src := "b: 1\na: [x]\nb: 2\nc: { d: soon, e: yes }\n"
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	w := &Walker{File: "f.yaml"}
	w.Fields(doc.Content[0], "", []string{"a", "b", "c"}, func(key string, _, v *yaml.Node) {
		switch key {
		case "a":
			w.Str(v, key)
		case "b":
			w.Integer(v, key, 5)
		case "c":
			w.Fields(v, key, nil, func(k string, _, v *yaml.Node) {
				if k == "d" {
					w.Duration(v, Join(key, k))
				} else {
					w.Boolean(v, Join(key, k))
				}
			})
		}
	})
	var broken yaml.Node
	w.YAMLError(yaml.Unmarshal([]byte("a: [\n"), &broken))
	w.Problems.Sort()
	want := "f.yaml:1:1: invalid YAML: did not find expected node content\n" +
		"f.yaml:1:4: b: must be at least 5, got 1\n" +
		"f.yaml:2:4: a: must be a string, got a list\n" +
		"f.yaml:3:1: b: duplicate key (first at line 1)\n" +
		"f.yaml:4:9: c.d: must be a positive duration such as 30s, 1m or 1h30m, got \"soon\"\n" +
		// YAML 1.2: yes is a string, not a boolean.
		"f.yaml:4:18: c.e: must be true or false, got a string"
	if got := w.Problems.Error(); got != want {
		t.Errorf("problems:\n%s\nwant:\n%s", got, want)
	}
}
