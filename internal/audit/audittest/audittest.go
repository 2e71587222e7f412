// Package audittest keeps audit records in memory, for the tests of what
// the gateway's parts record.
package audittest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/audit"
)

// Recorder is an auditor that keeps every record it is given, in order,
// and refuses them all with Err when that is set. It is safe for
// concurrent use; set Err before it is.
type Recorder struct {
	Err error

	mu   sync.Mutex
	recs []audit.Record
}

// Log keeps a copy of rec, unless Err is set.
func (r *Recorder) Log(rec *audit.Record) error {
	if r.Err != nil {
		return r.Err
	}
	r.mu.Lock()
	r.recs = append(r.recs, *rec)
	r.mu.Unlock()
	return nil
}

// LogAll keeps copies of recs, unless Err is set.
func (r *Recorder) LogAll(recs []*audit.Record) error {
	if r.Err != nil {
		return r.Err
	}
	r.mu.Lock()
	for _, rec := range recs {
		r.recs = append(r.recs, *rec)
	}
	r.mu.Unlock()
	return nil
}

// All returns the records kept so far.
func (r *Recorder) All() []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

// Codes returns the codes of the records kept so far.
func (r *Recorder) Codes() []string {
	var out []string
	for _, rec := range r.All() {
		out = append(out, rec.Code)
	}
	return out
}

// Last returns the latest record; with none, the test fails.
func (r *Recorder) Last(t testing.TB) audit.Record {
	t.Helper()
	recs := r.All()
	if len(recs) == 0 {
		t.Fatal("no audit record")
	}
	return recs[len(recs)-1]
}

// Await waits until at least n records were kept and returns them; the
// test fails if that takes over 10 s.
func (r *Recorder) Await(t testing.TB, n int) []audit.Record {
	t.Helper()
	for range 1000 {
		if recs := r.All(); len(recs) >= n {
			return recs
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d audit records", n)
	return nil
}
