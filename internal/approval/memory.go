package approval

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Memory is a Store for one process (standalone mode). Approvals do not
// survive a restart; neither do the agents' requests waiting on them. Like
// Redis, it forgets: a decided approval Retention after its decision, a
// pending one PendingGrace past its expiry, so a long-running gateway
// does not keep every request body it ever parked.
type Memory struct {
	mu      sync.Mutex
	all     map[string]*Approval
	decided map[string]chan struct{} // closed when the approval leaves Pending
	forget  map[string]time.Time     // when each approval is forgotten
	opts    MemoryOptions
}

var _ Store = (*Memory)(nil)

// MemoryOptions tune a Memory store; nil means the defaults.
type MemoryOptions struct {
	// Retention and PendingGrace are as in RedisOptions; 0 means
	// DefaultRetention and DefaultPendingGrace.
	Retention    time.Duration
	PendingGrace time.Duration
	// Now is the store's clock, which times forgetting as Redis's clock
	// does; nil means time.Now.
	Now func() time.Time
}

// NewMemory returns an empty in-memory store.
func NewMemory(opts *MemoryOptions) *Memory {
	m := &Memory{all: map[string]*Approval{}, decided: map[string]chan struct{}{}, forget: map[string]time.Time{}}
	if opts != nil {
		m.opts = *opts
	}
	if m.opts.Retention <= 0 {
		m.opts.Retention = DefaultRetention
	}
	if m.opts.PendingGrace <= 0 {
		m.opts.PendingGrace = DefaultPendingGrace
	}
	if m.opts.Now == nil {
		m.opts.Now = time.Now
	}
	return m
}

// live returns the approval with id unless it is unknown or forgotten.
// The caller holds m.mu.
func (m *Memory) live(id string) (*Approval, bool) {
	a, ok := m.all[id]
	if !ok || !m.opts.Now().Before(m.forget[id]) {
		return nil, false
	}
	return a, true
}

// prune drops the approvals whose time has come, waking the waiters of
// one still pending (they find it gone). The caller holds m.mu.
func (m *Memory) prune() {
	now := m.opts.Now()
	for id, at := range m.forget {
		if !now.Before(at) {
			if m.all[id].State == Pending {
				close(m.decided[id])
			}
			delete(m.all, id)
			delete(m.decided, id)
			delete(m.forget, id)
		}
	}
}

func (m *Memory) Create(_ context.Context, a *Approval) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune()
	if _, dup := m.all[a.ID]; dup {
		return fmt.Errorf("create approval %s: already exists", a.ID)
	}
	if a.State != Pending {
		return fmt.Errorf("create approval %s: state %s, want pending", a.ID, a.State)
	}
	c := *a
	m.all[a.ID] = &c
	m.decided[a.ID] = make(chan struct{})
	// As Redis does: the approval's lifetime plus the grace, from now.
	m.forget[a.ID] = m.opts.Now().Add(max(a.Expires.Sub(a.Created), 0) + m.opts.PendingGrace)
	return nil
}

func (m *Memory) Get(_ context.Context, id string) (*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.live(id)
	if !ok {
		return nil, ErrNotFound
	}
	c := *a
	return &c, nil
}

func (m *Memory) List(_ context.Context, state State) ([]*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Approval
	for id, a := range m.all {
		if _, ok := m.live(id); ok && (state == "" || a.State == state) {
			c := *a
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *Approval) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// CountPending implements Store.
func (m *Memory) CountPending(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for id, a := range m.all {
		if _, ok := m.live(id); ok && a.State == Pending {
			n++
		}
	}
	return n, nil
}

// Recent looks at every approval the store keeps: in one process's memory
// that costs little next to copying them, which it does for n only.
func (m *Memory) Recent(_ context.Context, n int) ([]*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var decided []*Approval
	for id, a := range m.all {
		if _, ok := m.live(id); ok && a.State != Pending {
			decided = append(decided, a)
		}
	}
	slices.SortFunc(decided, func(a, b *Approval) int {
		return cmp.Or(b.DecidedAt.Compare(a.DecidedAt), cmp.Compare(b.ID, a.ID))
	})
	decided = decided[:min(max(n, 0), len(decided))]
	out := make([]*Approval, len(decided))
	for i, a := range decided {
		c := *a
		out[i] = &c
	}
	return out, nil
}

func (m *Memory) Finish(_ context.Context, id string, to State, by, reason string, at time.Time) (*Approval, error) {
	if err := checkFinish(to); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.live(id)
	if !ok {
		return nil, ErrNotFound
	}
	if a.State != Pending {
		return nil, ErrNotPending
	}
	if decides(to) && !at.Before(a.Expires) {
		return nil, ErrExpired
	}
	a.State, a.DecidedBy, a.Reason, a.DecidedAt = to, by, reason, at.UTC()
	if to != Approved {
		a.Body = nil
	}
	m.forget[id] = m.opts.Now().Add(m.opts.Retention)
	close(m.decided[id])
	c := *a
	return &c, nil
}

func (m *Memory) Execute(_ context.Context, id string, body []byte) (*Approval, error) {
	return m.leaveApproved(id, func(a *Approval) error {
		if !bytes.Equal(a.Body, body) {
			return ErrAltered
		}
		a.State = Executed
		return nil
	})
}

func (m *Memory) Void(_ context.Context, id, reason string) (*Approval, error) {
	return m.leaveApproved(id, func(a *Approval) error {
		a.State, a.VoidReason, a.Body = Voided, reason, nil
		return nil
	})
}

// leaveApproved applies move to the approved approval id, and returns it
// as move left it.
func (m *Memory) leaveApproved(id string, move func(*Approval) error) (*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.live(id)
	if !ok {
		return nil, ErrNotFound
	}
	if a.State != Approved {
		return nil, ErrNotApproved
	}
	if err := move(a); err != nil {
		return nil, err
	}
	c := *a
	return &c, nil
}

func (m *Memory) Wait(ctx context.Context, id string) (*Approval, error) {
	m.mu.Lock()
	_, ok := m.live(id)
	ch := m.decided[id]
	m.mu.Unlock()
	if !ok {
		return nil, ErrNotFound
	}
	select {
	case <-ch:
		return m.Get(ctx, id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// decides reports whether moving to to is a decision, which must come
// before the approval expires.
func decides(to State) bool { return to == Approved || to == Denied }

// checkFinish refuses a transition Finish does not make.
func checkFinish(to State) error {
	switch to {
	case Approved, Denied, Expired, Cancelled:
		return nil
	}
	return fmt.Errorf("finish approval: cannot move to %q", to)
}
