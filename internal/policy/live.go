package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Live holds the current policy set of a directory. A reload that fails
// to compile keeps the last good set; with no good set at all, Current is
// nil and everything is denied.
type Live struct {
	dir  string
	opts Options

	cur atomic.Pointer[Set]

	mu   sync.Mutex // serialises reloads
	seq  uint64
	last Status
}

// Status is the outcome of the last reload.
type Status struct {
	At time.Time
	// Version is the version being served (zero if none).
	Version Version
	// Err is the last reload's failure, nil if it succeeded.
	Err error
	// Misfits are what the policy of the last reload that compiled names
	// and the upstreams do not offer (see CheckAgainst), nil if nothing.
	Misfits error
}

// NewLive returns a Live for dir; call Reload to load it.
func NewLive(dir string, opts *Options) *Live {
	l := &Live{dir: dir}
	if opts != nil {
		l.opts = *opts
	}
	return l
}

// CheckAgainst makes every later reload check the grants against the
// gateway's live catalogue (Options.Upstreams): a grant for a tool an
// upstream does not have, or a constraint on an argument it does not
// take, is then reported in Status.Misfits. It does not stop the reload:
// what an upstream lists is not the operator's to fix at once, and a
// reload held back by it would hold back a revocation too.
func (l *Live) CheckAgainst(upstreams Catalog) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts.Upstreams = upstreams
}

// Current returns the set being served, or nil.
func (l *Live) Current() *Set { return l.cur.Load() }

// Status returns the outcome of the last reload.
func (l *Live) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Reload compiles the directory again. An unchanged directory keeps its
// version; a changed one that compiles is served with the next sequence.
func (l *Live) Reload() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.apply(l.compile())
}

func (l *Live) compile() (*Set, error) {
	opts := l.opts
	opts.Sequence = l.seq + 1
	return LoadDir(l.dir, &opts)
}

// apply makes a compile's outcome the last reload's, serving set if it
// compiled and differs from the set served. The caller holds mu.
func (l *Live) apply(set *Set, err error) error {
	l.last = Status{At: time.Now(), Err: err}
	if cur := l.cur.Load(); cur != nil {
		l.last.Version = cur.Version()
	}
	if err != nil {
		return err
	}
	l.last.Misfits = set.Misfits()
	if cur := l.cur.Load(); cur != nil && cur.Version().Hash == set.Version().Hash {
		return nil
	}
	l.seq++
	l.cur.Store(set)
	l.last.Version = set.Version()
	return nil
}

// Watch reloads every interval until ctx ends, calling report after each
// reload that changed the version, or whose failure or misfits differ
// from the last reported: one that stands is reported once.
//
// A change is taken once the directory has held still for an interval:
// when two looks in a row compile it alike (see settle). A file caught
// while it is being written, empty after its truncation or cut short, is
// then neither served nor reported; cut short, a role could have lost an
// approval rule or a constraint. Reload, asked for, takes the directory
// as it is.
func (l *Live) Watch(ctx context.Context, interval time.Duration, report func(Status)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	reported := l.Status()
	var s settle
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			before := l.Current()
			if !l.look(&s) {
				continue
			}
			st := l.Status()
			changed := l.Current() != before || errText(st.Err) != errText(reported.Err) || errText(st.Misfits) != errText(reported.Misfits)
			if report != nil && changed {
				reported = st
				report(st)
			}
		}
	}
}

// settle is what Watch's last look at the directory found: the outcome
// of its compile, taken if the next look finds the same.
type settle struct{ held string }

// look compiles the directory and takes the outcome (see apply) if it is
// the served set's, or the same as the last look's: it reports whether it
// took it.
func (l *Live) look(s *settle) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	set, err := l.compile()
	seen := "error: " + errText(err)
	if err == nil {
		seen = "set: " + set.Version().Hash
	}
	cur := l.cur.Load()
	unchanged := err == nil && cur != nil && cur.Version().Hash == set.Version().Hash
	if seen != s.held && !unchanged {
		s.held = seen
		return false
	}
	s.held = ""
	l.apply(set, err)
	return true
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
