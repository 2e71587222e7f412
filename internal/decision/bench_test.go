package decision

import (
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/decision/decisiontest"
)

func BenchmarkEvaluate(b *testing.B) {
	set := mustCompile(b, decisiontest.BenchPolicy)
	in := &Input{Agent: "agent-1", Role: "bench", Server: "notion", Name: "get_pages", Arguments: args(b, decisiontest.BenchArgs)}
	if res := Evaluate(set, in); res.Verdict != Allow {
		b.Fatalf("benchmark input is not allowed: %s", res.Reason)
	}
	b.ReportAllocs()
	for b.Loop() {
		if Evaluate(set, in).Verdict != Allow {
			b.Fatal("verdict changed")
		}
	}
}

func BenchmarkEvaluateDeny(b *testing.B) {
	set := mustCompile(b, decisiontest.BenchPolicy)
	denied := strings.Replace(decisiontest.BenchArgs, `"limit": 50`, `"limit": "500"`, 1)
	in := &Input{Agent: "agent-1", Role: "bench", Server: "notion", Name: "get_pages", Arguments: args(b, denied)}
	b.ReportAllocs()
	for b.Loop() {
		if Evaluate(set, in).Verdict != Deny {
			b.Fatal("verdict changed")
		}
	}
}
