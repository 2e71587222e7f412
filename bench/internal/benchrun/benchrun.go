// Package benchrun holds what the benchmark commands share: the
// concurrency levels flag and optional CPU and allocation profiles of a
// run.
package benchrun

import (
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
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

// Common is the flags every benchmark command takes: -c, the concurrency
// levels, -cpuprofile and -memprofile.
type Common struct {
	levels, cpuprofile, memprofile *string
}

// Flags registers the common flags on the command line.
func Flags() *Common {
	return &Common{
		levels:     flag.String("c", "1,32", "concurrency levels, comma-separated"),
		cpuprofile: flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file"),
		memprofile: flag.String("memprofile", "", "write a profile of the whole run's allocations to this file"),
	}
}

// Start, after flag.Parse, returns the concurrency levels and starts the
// CPU profile if one was asked for; stop ends it and may be called more
// than once. A bad flag ends the command.
func (c *Common) Start() (levels []int, stop func()) {
	levels, err := Levels(*c.levels)
	if err != nil {
		log.Fatal(err)
	}
	stopCPU, err := Profile(*c.cpuprofile)
	if err != nil {
		log.Fatal(err)
	}
	if *c.memprofile != "" {
		// Every allocation, so that rare and frequent ones weigh as they
		// do in the run.
		runtime.MemProfileRate = 1
	}
	var once sync.Once
	return levels, func() {
		once.Do(func() {
			stopCPU()
			if *c.memprofile != "" {
				if err := writeAllocs(*c.memprofile); err != nil {
					log.Print(err)
				}
			}
		})
	}
}

// writeAllocs writes the allocations made so far to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
