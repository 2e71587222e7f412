package policy

import (
	"strings"

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
			p := c.celPos(n, e.Location.Line(), e.Location.Column())
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

// celPos maps a line and 0-based column inside an expression to the role
// file. Quoted scalars shift by their opening quote; a literal block
// starts on the line after its indicator, its lines indented by as much as
// its first. A folded block's lines are joined, so a place in it is given
// as the block's indicator.
func (c *compiler) celPos(n *yaml.Node, line, col int) Pos {
	p := Pos{File: c.File, Line: n.Line, Col: n.Column}
	switch n.Style {
	case yaml.LiteralStyle:
		p.Line = n.Line + line
		p.Col = c.indent(n.Line+1) + col + 1
	case yaml.FoldedStyle:
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		if line == 1 {
			p.Col = n.Column + 1 + col
		}
	default:
		if line == 1 {
			p.Col = n.Column + col
		}
	}
	return p
}

// indent is how many spaces start line of the file: the file is split
// once, however many positions are asked for.
func (c *compiler) indent(line int) int {
	if c.lines == nil {
		c.lines = strings.Split(string(c.data), "\n")
	}
	if line < 1 || line > len(c.lines) {
		return 0
	}
	l := c.lines[line-1]
	return len(l) - len(strings.TrimLeft(l, " "))
}
