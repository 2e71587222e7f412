package approval

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Memory is a Store for one process (standalone mode). Approvals do not
// survive a restart; neither do the agents' requests waiting on them.
type Memory struct {
	mu      sync.Mutex
	all     map[string]*Approval
	decided map[string]chan struct{} // closed when the approval leaves Pending
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{all: map[string]*Approval{}, decided: map[string]chan struct{}{}}
}

func (m *Memory) Create(_ context.Context, a *Approval) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.all[a.ID]; dup {
		return fmt.Errorf("create approval %s: already exists", a.ID)
	}
	if a.State != Pending {
		return fmt.Errorf("create approval %s: state %s, want pending", a.ID, a.State)
	}
	c := *a
	m.all[a.ID] = &c
	m.decided[a.ID] = make(chan struct{})
	return nil
}

func (m *Memory) Get(_ context.Context, id string) (*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.all[id]
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
	for _, a := range m.all {
		if state == "" || a.State == state {
			c := *a
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *Approval) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

func (m *Memory) Finish(_ context.Context, id string, to State, by, reason string, at time.Time) (*Approval, error) {
	if err := checkFinish(to); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.all[id]
	if !ok {
		return nil, ErrNotFound
	}
	if a.State != Pending {
		return nil, ErrNotPending
	}
	a.State, a.DecidedBy, a.Reason, a.DecidedAt = to, by, reason, at.UTC()
	close(m.decided[id])
	c := *a
	return &c, nil
}

func (m *Memory) Execute(_ context.Context, id string) (*Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.all[id]
	if !ok {
		return nil, ErrNotFound
	}
	if a.State != Approved {
		return nil, ErrNotApproved
	}
	a.State = Executed
	c := *a
	return &c, nil
}

func (m *Memory) Wait(ctx context.Context, id string) (*Approval, error) {
	m.mu.Lock()
	ch, ok := m.decided[id]
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

// checkFinish refuses a transition Finish does not make.
func checkFinish(to State) error {
	switch to {
	case Approved, Denied, Expired, Cancelled:
		return nil
	}
	return fmt.Errorf("finish approval: cannot move to %q", to)
}
