package policy

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkCompileBrokenCEL compiles a role file of 2,000 grants whose
// CEL blocks do not compile: each error is placed in the file, which
// must not cost a pass over the whole file.
func BenchmarkCompileBrokenCEL(b *testing.B) {
	var src strings.Builder
	src.WriteString("role: r\nservers:\n  notion:\n    tools:\n")
	for i := range 2000 {
		fmt.Fprintf(&src, "      - name: t%d\n        constraints:\n          q: {}\n        cel: |\n          args.q == \"a\" &&\n            nope%d\n", i, i)
	}
	files := []File{{Name: "role.yaml", Data: []byte(src.String())}}
	for b.Loop() {
		if _, err := Compile(files, nil); err == nil {
			b.Fatal("broken CEL compiled")
		}
	}
}
