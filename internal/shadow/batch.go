package shadow

import (
	"context"
	"crypto/rand"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Store is where counts are kept: SQLite, Redis or Memory. Add with
// neither calls nor denials stores nothing.
type Store interface {
	Add(ctx context.Context, role string, t time.Time, calls, denials int64) error
	Counts(ctx context.Context, from, to time.Time) ([]Count, error)
}

// Batch adds counts up in memory and writes them to a store every
// interval, so that a request in shadow mode costs no write of its own:
// every call of a shadow role is counted, and a write to SQLite or a
// round trip to Redis per call would cost each of them more than its
// decision. Counts a write failed to store are kept for the next one,
// which sends that write again as it was, before the counts that came
// since: a store that may have stored a write it reported failed (Redis,
// whose reply was lost; SQLite, whose context ended as it committed)
// knows it by its id (see onceAdder), and does not count it twice.
// What the store does not hold yet, this process's Counts adds in; other
// processes see it after the next write (a Counts during a write may miss
// what is being written, for that moment). Close writes what is left.
type Batch struct {
	store    Store
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex
	pending map[[2]string]Count // by role and day
	unsent  []write             // writes that failed, to send again

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// write is one role's counts of one day as a Batch writes them, under an
// id that it keeps when it sends the write again.
type write struct {
	id string
	Count
}

// onceAdder is a Store that knows a write sent again: AddOnce with the id
// of a write it added before adds nothing, and Applied tells which of
// some writes it added.
type onceAdder interface {
	AddOnce(ctx context.Context, id, role string, t time.Time, calls, denials int64) error
	Applied(ctx context.Context, ids []string) (map[string]bool, error)
}

var _ onceAdder = (*Redis)(nil)

// DefaultBatchInterval is how often a Batch writes by default.
const DefaultBatchInterval = 5 * time.Second

// NewBatch starts a Batch writing to store every interval (0 means
// DefaultBatchInterval). log receives write failures; nil discards them.
func NewBatch(store Store, interval time.Duration, log *slog.Logger) *Batch {
	if interval <= 0 {
		interval = DefaultBatchInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Batch{store: store, log: log, interval: interval, pending: map[[2]string]Count{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	return b
}

// Add counts calls decided in shadow mode for role at t, denials of them
// would-be denials, in memory. It never fails.
func (b *Batch) Add(_ context.Context, role string, t time.Time, calls, denials int64) error {
	if calls == 0 && denials == 0 {
		return nil
	}
	k := [2]string{role, Day(t)}
	b.mu.Lock()
	b.pending[k] = add(b.pending[k], Count{Role: k[0], Day: k[1], N: denials, Calls: calls})
	b.mu.Unlock()
	return nil
}

// Counts returns the store's counts with this process's unwritten ones
// added in: those pending, and the writes that failed, but not those of
// them the store holds all the same (a lost reply, a deadline that passed
// as the write committed), which it tells by their ids.
func (b *Batch) Counts(ctx context.Context, from, to time.Time) ([]Count, error) {
	stored, err := b.store.Counts(ctx, from, to)
	if err != nil {
		return nil, err
	}
	lo, hi := Day(from), Day(to)
	at := make(map[[2]string]int, len(stored))
	for i, c := range stored {
		at[[2]string{c.Role, c.Day}] = i
	}
	addIn := func(c Count) {
		if c.Day < lo || c.Day > hi {
			return
		}
		k := [2]string{c.Role, c.Day}
		if i, ok := at[k]; ok {
			stored[i] = add(stored[i], c)
		} else {
			at[k] = len(stored)
			stored = append(stored, c)
		}
	}
	b.mu.Lock()
	for _, c := range b.pending {
		addIn(c)
	}
	unsent := slices.Clone(b.unsent)
	b.mu.Unlock()
	var applied map[string]bool
	if s, ok := b.store.(onceAdder); ok && len(unsent) > 0 {
		ids := make([]string, len(unsent))
		for i, w := range unsent {
			ids[i] = w.id
		}
		if applied, err = s.Applied(ctx, ids); err != nil {
			return nil, err
		}
	}
	for _, w := range unsent {
		if !applied[w.id] {
			addIn(w.Count)
		}
	}
	sortCounts(stored)
	return stored, nil
}

func (b *Batch) run() {
	defer close(b.done)
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.flush(context.Background())
		case <-b.stop:
			return
		}
	}
}

// flush writes what is pending. The writes that failed before are sent
// again first, and while one still fails what came since stays pending,
// added up.
func (b *Batch) flush(ctx context.Context) error {
	b.mu.Lock()
	again := b.unsent
	b.unsent = nil
	b.mu.Unlock()
	if err := b.send(ctx, again); err != nil {
		return err
	}
	b.mu.Lock()
	writes := make([]write, 0, len(b.pending))
	for _, c := range b.pending {
		writes = append(writes, write{id: rand.Text(), Count: c})
	}
	b.pending = map[[2]string]Count{}
	b.mu.Unlock()
	return b.send(ctx, writes)
}

// send writes writes to the store, keeping those that fail to send again.
func (b *Batch) send(ctx context.Context, writes []write) error {
	var first error
	for _, w := range writes {
		wctx, cancel := context.WithTimeout(ctx, b.interval)
		var err error
		if s, ok := b.store.(onceAdder); ok {
			err = s.AddOnce(wctx, w.id, w.Role, dayTime(w.Day), w.Calls, w.N)
		} else {
			err = b.store.Add(wctx, w.Role, dayTime(w.Day), w.Calls, w.N)
		}
		cancel()
		if err == nil {
			continue
		}
		if first == nil {
			first = err
			b.log.Warn("shadow counts not written; kept for the next write", "err", err)
		}
		b.mu.Lock()
		b.unsent = append(b.unsent, w)
		b.mu.Unlock()
	}
	return first
}

// dayTime is noon of a day as Day writes it, a time on that day whatever
// the store does with it.
func dayTime(day string) time.Time {
	t, _ := time.Parse(time.DateOnly, day)
	return t.Add(12 * time.Hour)
}

// Close stops the periodic writes and writes what is pending, within
// ctx. It returns the error of that last write, whose counts are lost.
func (b *Batch) Close(ctx context.Context) error {
	b.once.Do(func() { close(b.stop) })
	<-b.done
	return b.flush(ctx)
}
