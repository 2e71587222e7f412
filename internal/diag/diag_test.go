package diag

import (
	"fmt"
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
	w.YAMLError([]byte("a: [\n"), yaml.Unmarshal([]byte("a: [\n"), &broken))
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

// YAML reads an integer with a leading zero as octal, and one with an 8 or
// a 9 in it as decimal: every number written so is refused, whatever it
// is read into.
func TestLeadingZero(t *testing.T) {
	tests := []struct {
		value string
		want  string // the problem; empty: none
	}{
		{"010", "ambiguous leading zero: write 10, or 0o10 for octal"},
		{"019", "ambiguous leading zero: write 19"},
		{"-010", "ambiguous leading zero: write -10, or -0o10 for octal"},
		{"+0_10", "ambiguous leading zero: write +10, or +0o10 for octal"},
		{"0010", "ambiguous leading zero: write 10, or 0o10 for octal"},
		{"07", "ambiguous leading zero: write 7"},
		{"00", "ambiguous leading zero: write 0"},
		{"!!int 010", "ambiguous leading zero: write 10, or 0o10 for octal"},
		{"!!float 010", "ambiguous leading zero: write 10, or 0o10 for octal"},
		{"0", ""},
		{"10", ""},
		{"-0", ""},
		{"0o10", ""},
		{"0x10", ""},
		{"010.5", ""},
		{"0.5", ""},
		{"0e3", ""},
		{`"010"`, ""},
		{"'010'", ""},
		{"!!str 010", ""},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte("v: "+tt.value+"\n"), &doc); err != nil {
				t.Fatal(err)
			}
			w := &Walker{File: "f.yaml"}
			got := w.LeadingZero(doc.Content[0].Content[1], "v")
			want := ""
			if tt.want != "" {
				want = fmt.Sprintf("f.yaml:1:4: v: %s", tt.want)
			}
			if got != (tt.want != "") || w.Problems.Error() != want {
				t.Errorf("LeadingZero = %v, problems %q; want %q", got, w.Problems.Error(), want)
			}
		})
	}
}

// The parser names no line for a character YAML refuses, an alias to an
// unknown anchor or a file that ends inside a quoted string: the place is
// found in the file.
func TestYAMLErrorsHaveLines(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"control character", "role: r\nmode: \"enforce\x01\"\n",
			"f.yaml:2:15: invalid YAML: control characters are not allowed"},
		{"invalid UTF-8", "role: r\n\xff: x\n",
			"f.yaml:2:1: invalid YAML: invalid leading UTF-8 octet"},
		{"columns in characters, CRLF line breaks", "role: r\r\ndescription: \"é\x85\"\r\n",
			"f.yaml:2:16: invalid YAML: invalid leading UTF-8 octet"},
		{"after a byte order mark", "\ufeffrole: \x7f\n",
			"f.yaml:1:7: invalid YAML: control characters are not allowed"},
		{"in a second document", "role: r\n---\nrole: s\nmode: \x01\n",
			"f.yaml:4:7: invalid YAML: control characters are not allowed"},
		{"unknown anchor", "role: r\nservers: *x\n",
			"f.yaml:2:10: invalid YAML: unknown anchor 'x' referenced"},
		{"unknown anchor on line 1", "role: *x\n",
			"f.yaml:1:7: invalid YAML: unknown anchor 'x' referenced"},
		{"unknown anchor after its name in text", "role: r\ndescription: \"*x and &x\" # *x\nnotes: |\n  *x\nservers: [a, *x]\n",
			"f.yaml:5:14: invalid YAML: unknown anchor 'x' referenced"},
		{"unknown anchor after a longer one", "role: &xy r\nmode: *xy\nservers: *x\n",
			"f.yaml:3:10: invalid YAML: unknown anchor 'x' referenced"},
		{"end of the file in a quoted string", "\"",
			"f.yaml:1:2: invalid YAML: found unexpected end of stream"},
		// Nothing to find: the file itself.
		{"UTF-16", "\xfe\xff\x00r\x00\x01",
			"f.yaml: invalid YAML: control characters are not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &Walker{File: "f.yaml"}
			if root := w.Document([]byte(tt.src), "role"); root != nil && len(w.Problems) == 0 {
				t.Fatal("parsed, want a problem")
			}
			if got := w.Problems.Error(); got != tt.want {
				t.Errorf("problems:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}
