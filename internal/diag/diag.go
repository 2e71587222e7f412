// Package diag reports problems found in YAML files — role files, the
// gateway config — each at its file:line:col with its YAML path, and
// walks YAML nodes collecting every problem rather than stopping at the
// first.
package diag

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Pos is a place in a file.
type Pos struct {
	File      string
	Line, Col int
}

// Problem is one thing wrong with a file.
type Problem struct {
	Pos Pos
	// Path is the YAML path of the offending node, e.g.
	// servers.notion.tools[0].constraints.limit.lte.
	Path string
	Msg  string
}

// String formats the problem as file:line:col: path: message.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Pos.File)
	if p.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", p.Pos.Line, p.Pos.Col)
	}
	b.WriteString(": ")
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found, in file order once sorted.
type Problems []Problem

// Error returns one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Sort puts problems in file, line and column order.
func (ps Problems) Sort() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Col, b.Pos.Col),
		)
	})
}

// Walker collects the problems of one file at a time.
type Walker struct {
	// File names the file being walked in the problems.
	File     string
	Problems Problems
}

// At is n's position in the current file.
func (w *Walker) At(n *yaml.Node) Pos { return Pos{File: w.File, Line: n.Line, Col: n.Column} }

// Errorf records a problem at n (the file itself when n is nil).
func (w *Walker) Errorf(n *yaml.Node, path, format string, args ...any) {
	p := Pos{File: w.File}
	if n != nil {
		p = w.At(n)
	}
	w.Problems = append(w.Problems, Problem{Pos: p, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Fields walks a mapping whose keys must be among allowed (nil allows any
// key), reporting a non-mapping, non-scalar, duplicate and unknown keys,
// and calls fn for every other key in file order.
func (w *Walker) Fields(n *yaml.Node, path string, allowed []string, fn func(key string, k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		w.Errorf(n, path, "must be a mapping, got %s", Describe(n))
		return
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			w.Errorf(k, path, "keys must be scalars, got %s", Describe(k))
			continue
		}
		p := Join(path, k.Value)
		if prev, dup := seen[k.Value]; dup {
			w.Errorf(k, p, "duplicate key (first at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		if allowed != nil && !slices.Contains(allowed, k.Value) {
			w.Errorf(k, p, "unknown field %q (expected one of: %s)", k.Value, strings.Join(allowed, ", "))
			continue
		}
		fn(k.Value, k, v)
	}
}

// List walks a sequence, calling fn with each element and its path.
func (w *Walker) List(n *yaml.Node, path string, fn func(i int, path string, v *yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		w.Errorf(n, path, "must be a list, got %s", Describe(n))
		return
	}
	for i, v := range n.Content {
		fn(i, fmt.Sprintf("%s[%d]", path, i), v)
	}
}

// Str reads a string; YAML numbers and booleans are not strings.
func (w *Walker) Str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		w.Errorf(n, path, "must be a string, got %s", Describe(n))
		return "", false
	}
	return n.Value, true
}

// Integer reads an integer of at least min.
func (w *Walker) Integer(n *yaml.Node, path string, min int) (int, bool) {
	var v int
	if w.LeadingZero(n, path) {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		w.Errorf(n, path, "must be an integer, got %s", Describe(n))
		return 0, false
	}
	if v < min {
		w.Errorf(n, path, "must be at least %d, got %d", min, v)
		return 0, false
	}
	return v, true
}

// leadingZero matches a number written with a leading zero, once YAML's
// underscores are removed.
var leadingZero = regexp.MustCompile(`^([-+]?)0+([0-9]+)$`)

// LeadingZero reports, and returns true for, a number written with a
// leading zero: YAML reads 010 as octal, eight, but 019 as nineteen, and
// a reader may take either for decimal. 10 and 0o10 say which is meant.
// A number with a fraction or an exponent (010.5) is decimal to all.
func (w *Walker) LeadingZero(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" && n.Tag != "!!float" {
		return false
	}
	m := leadingZero.FindStringSubmatch(strings.ReplaceAll(n.Value, "_", ""))
	if m == nil {
		return false
	}
	if len(m[2]) > 1 && strings.Trim(m[2], "01234567") == "" {
		w.Errorf(n, path, "ambiguous leading zero: write %s%s, or %s0o%s for octal", m[1], m[2], m[1], m[2])
	} else {
		w.Errorf(n, path, "ambiguous leading zero: write %s%s", m[1], m[2])
	}
	return true
}

// Boolean reads true or false.
func (w *Walker) Boolean(n *yaml.Node, path string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		w.Errorf(n, path, "must be true or false, got %s", Describe(n))
		return false, false
	}
	return v, true
}

// Duration reads a positive Go duration written as a string.
func (w *Walker) Duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := w.Str(n, path)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		w.Errorf(n, path, "must be a positive duration such as 30s, 1m or 1h30m, got %q", s)
		return 0, false
	}
	return d, true
}

// Document returns the root node of data, a file that must hold one YAML
// document; kind names the file in problems ("role" for "empty role
// file"). It reports, and returns nil for, a file that does not parse or
// is empty; a second document is reported too (yaml.Unmarshal would read
// the first and silently drop the rest), and the first one returned.
func (w *Walker) Document(data []byte, kind string) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		w.YAMLError(data, err)
		return nil
	}
	if len(doc.Content) == 0 {
		w.Errorf(nil, "", "empty %s file", kind)
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		w.Errorf(&next, "", "a %s file holds one YAML document, but a second starts here", kind)
	} else if !errors.Is(err, io.EOF) {
		w.YAMLError(data, err)
	}
	return doc.Content[0]
}

// YAMLError records err, a YAML syntax error in data, at the line it
// names. The parser names none for a character YAML does not allow or an
// alias to an unknown anchor: those are found in data.
func (w *Walker) YAMLError(data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Pos{File: w.File}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Col = 1
		msg = strings.TrimPrefix(msg, m[0])
	} else if at := errorAt(data, msg); at >= 0 {
		p.Line, p.Col = lineCol(data, at)
	}
	w.Problems = append(w.Problems, Problem{Pos: p, Msg: "invalid YAML: " + msg})
}

var (
	yamlLine      = regexp.MustCompile(`^line (\d+): `)
	unknownAnchor = regexp.MustCompile(`^unknown anchor '([0-9A-Za-z_-]+)' referenced$`)
)

// errorAt returns the offset in data of the error msg, which the parser
// gave without a line, or -1 when it cannot be found.
func errorAt(data []byte, msg string) int {
	if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
		return unknownAlias(data, m[1])
	}
	if strings.HasSuffix(msg, "unexpected end of stream") {
		// A quoted string the file does not close.
		return len(data)
	}
	return refusedChar(data)
}

// refusedChar returns the offset of the first character of data that
// YAML's reader refuses (invalid UTF-8, a control character), or -1. In
// a file in UTF-16, which the reader decodes first, none is looked for.
func refusedChar(data []byte) int {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) {
		return -1
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if size == 1 && r == utf8.RuneError || !yamlChar(r) {
			return i
		}
		i += size
	}
	return -1
}

// yamlChar reports whether YAML allows r in a file.
func yamlChar(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || r >= 0x20 && r <= 0x7e || r == 0x85 ||
		r >= 0xa0 && r <= 0xd7ff || r >= 0xe000 && r <= 0xfffd || r >= 0x10000 && r <= 0x10ffff
}

// unknownAlias returns the offset of the first alias to the anchor name in
// data, which names none before it, or -1. "*name" may be text in a string
// or a comment too: an alias is told from text by putting '@', which no
// YAML token may start with, in place of its '*' and seeing the parser stop
// at that line. Each try is a parse of data, so only the first few places
// are tried.
func unknownAlias(data []byte, name string) int {
	tries := 16
	for i := 0; i < len(data) && tries > 0; i++ {
		end := i + 1 + len(name)
		if data[i] != '*' || !bytes.HasPrefix(data[i+1:], []byte(name)) || end < len(data) && anchorChar(data[end]) {
			continue
		}
		tries--
		if stopsAt(data, i) {
			return i
		}
	}
	return -1
}

// anchorChar reports whether c may be part of an anchor's name.
func anchorChar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || c == '-'
}

// stopsAt reports whether the YAML parser, with '@' at offset i of data,
// stops there: whether a token starts at i.
func stopsAt(data []byte, i int) bool {
	changed := bytes.Clone(data)
	changed[i] = '@'
	dec := yaml.NewDecoder(bytes.NewReader(changed))
	var err error
	for err == nil {
		var doc yaml.Node
		err = dec.Decode(&doc)
	}
	want := "found character that cannot start any token"
	if line, _ := lineCol(data, i); line > 1 {
		// The parser names no line 1.
		want = "line " + strconv.Itoa(line) + ": " + want
	}
	return err.Error() == "yaml: "+want
}

// lineCol is the line and column, both from 1, of offset i of data, as the
// YAML parser counts them: in characters, after any of its line breaks,
// and not counting a byte order mark.
func lineCol(data []byte, i int) (line, col int) {
	line, col = 1, 1
	j := 0
	if bytes.HasPrefix(data, []byte("\ufeff")) {
		j = 3
	}
	for j < i {
		r, size := utf8.DecodeRune(data[j:])
		j += size
		switch {
		case r == '\r' && j < len(data) && data[j] == '\n':
			continue // the '\n' ends the line
		case r == '\n' || r == '\r' || r == 0x85 || r == 0x2028 || r == 0x2029:
			line, col = line+1, 1
		default:
			col++
		}
	}
	return line, col
}

// Join extends a YAML path with a key.
func Join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Describe names a node's kind for messages: "a mapping", "a number", ….
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	}
	return "a " + strings.TrimPrefix(n.Tag, "!!")
}
