// Package benchrun holds what the benchmark commands share: the
// concurrency levels flag and an optional CPU profile of a run.
package benchrun

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// Levels parses a comma-separated list of concurrency levels, each at
// least 1.
func Levels(s string) ([]int, error) {
	var cs []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad concurrency %q", f)
		}
		cs = append(cs, n)
	}
	return cs, nil
}

// Profile starts a CPU profile written to path ("" means none) and returns
// what stops it; stop may be called more than once.
func Profile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
