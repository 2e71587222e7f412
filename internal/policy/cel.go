package policy

import (
	"strings"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"
)

// celCostLimit bounds the work one expression may do per evaluation, so a
// policy cannot stall the decision path with a runaway comprehension;
// celInterruptEvery is how many comprehension steps pass between checks
// of the evaluation's deadline.
const (
	celCostLimit      = 10_000
	celInterruptEvery = 100
)

// CEL variables available to a grant's cel expression.
const (
	CELArgs   = "args"
	CELAgent  = "agent"
	CELRole   = "role"
	CELServer = "server"
	CELTool   = "tool"
)

func newCELEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(CELArgs, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(CELAgent, cel.StringType),
		cel.Variable(CELRole, cel.StringType),
		cel.Variable(CELServer, cel.StringType),
		cel.Variable(CELTool, cel.StringType),
	)
}

// celExpr compiles a grant's cel expression once, reporting each CEL error
// at its own place in the role file.
func (c *compiler) celExpr(n *yaml.Node, path string) *Expr {
	src, ok := c.Str(n, path)
	if !ok {
		return nil
	}
	if c.celEnv == nil {
		env, err := newCELEnv()
		if err != nil {
			c.Errorf(n, path, "cel environment: %v", err)
			return nil
		}
		c.celEnv = env
	}
	ast, iss := c.celEnv.Compile(src)
	if iss.Err() != nil {
		for _, e := range iss.Errors() {
			p := c.celPos(n, src, e.Location.Line(), e.Location.Column())
			c.Problems = append(c.Problems, Problem{Pos: p, Path: path, Msg: "cel: " + e.Message})
		}
		return nil
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		c.Errorf(n, path, "cel expression must return bool, got %s", ast.OutputType())
		return nil
	}
	// The cost limit charges a comparison of lists or maps by their size
	// at the top, not by what they nest, which an agent chooses: checking
	// for interruption in comprehensions lets the evaluation's deadline
	// (see decision.evalCEL) bound that too.
	prg, err := c.celEnv.Program(ast, cel.CostLimit(celCostLimit), cel.EvalOptions(cel.OptOptimize),
		cel.InterruptCheckFrequency(celInterruptEvery))
	if err != nil {
		c.Errorf(n, path, "cel: %v", err)
		return nil
	}
	return &Expr{Source: src, Program: prg}
}

// celPos maps a line and 0-based column inside an expression src to the
// role file. A literal block's lines are the file's, behind the block's
// indentation; a flow scalar is walked from its start (see flowPos).
// Where no exact place can be given, as in a folded block, it is the
// scalar's own.
func (c *compiler) celPos(n *yaml.Node, src string, line, col int) Pos {
	p := Pos{File: c.File, Line: n.Line, Col: n.Column}
	lines := strings.Split(src, "\n")
	if line < 1 || line > len(lines) || col < 0 || col > utf8.RuneCountInString(lines[line-1]) {
		return p
	}
	switch n.Style {
	case yaml.LiteralStyle:
		raw, body := c.line(n.Line+line), lines[line-1]
		indent := strings.TrimSuffix(raw, body)
		if strings.HasSuffix(raw, body) && strings.Trim(indent, " ") == "" {
			return Pos{File: c.File, Line: n.Line + line, Col: len(indent) + col + 1}
		}
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle, 0:
		off := col + line - 1
		for _, l := range lines[:line-1] {
			off += utf8.RuneCountInString(l)
		}
		if q, ok := c.flowPos(n, off); ok {
			return q
		}
	}
	return p
}

// flowPos finds the rune at offset off of a flow scalar's value in the
// file, walking the scalar's source: an escape, or a quote written twice,
// is one rune of the value, and a line break with the blanks around it is
// one space, or one newline for each blank line it spans. It reports false
// if off falls within such a break or past the scalar's end.
func (c *compiler) flowPos(n *yaml.Node, off int) (Pos, bool) {
	quote := map[yaml.Style]rune{yaml.DoubleQuotedStyle: '"', yaml.SingleQuotedStyle: '\''}[n.Style]
	line, raw, i := n.Line, []rune(c.line(n.Line)), n.Column-1
	// next moves to the first non-blank of the next line.
	next := func() bool {
		if line++; line > len(c.lines) {
			return false
		}
		raw = []rune(c.line(line))
		i = len(raw) - len([]rune(strings.TrimLeft(string(raw), " \t")))
		return true
	}
	if quote != 0 {
		if i >= len(raw) || raw[i] != quote {
			return Pos{}, false
		}
		i++
	}
	for off > 0 && i <= len(raw) {
		rest := raw[i:]
		switch {
		case strings.TrimLeft(string(rest), " \t") == "":
			breaks := 0
			for next() && i == len(raw) {
				breaks++
			}
			if line > len(c.lines) {
				return Pos{}, false
			}
			off -= max(breaks, 1)
			continue
		case rest[0] == quote && (quote == '"' || len(rest) == 1 || rest[1] != '\''):
			return Pos{}, false
		case rest[0] == quote:
			i += 2
		case quote == '"' && rest[0] == '\\' && len(rest) == 1:
			if !next() {
				return Pos{}, false
			}
			continue
		case quote == '"' && rest[0] == '\\':
			i += 2 + hexDigits[rest[1]]
		default:
			i++
		}
		off--
	}
	if off != 0 || i > len(raw) {
		return Pos{}, false
	}
	return Pos{File: c.File, Line: line, Col: i + 1}, true
}

// hexDigits is how many hex digits follow each escape that takes them in
// a double-quoted YAML scalar.
var hexDigits = map[rune]int{'x': 2, 'u': 4, 'U': 8}

// line is line i of the file without its line break: the file is split
// once, however many places are asked for.
func (c *compiler) line(i int) string {
	if c.lines == nil {
		c.lines = strings.Split(string(c.data), "\n")
	}
	if i < 1 || i > len(c.lines) {
		return ""
	}
	return strings.TrimSuffix(c.lines[i-1], "\r")
}
