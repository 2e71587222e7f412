package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a [Logger]. The zero value is the default.
type Options struct {
	// QueueSize bounds the records accepted but not yet written. 0 means
	// 4096. Records in the queue are lost if the process dies, whatever the
	// devices' sync policy: even under SyncAlways, the request of a record
	// Log accepted may be allowed before the record is written.
	QueueSize int
	// Logger receives device failures and recoveries. nil discards.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between retries of a record
	// no device could write; it doubles from one to the other. 0 means 10 ms
	// and 1 s.
	MinBackoff, MaxBackoff time.Duration
	// Linger is how long the writer waits, once a record arrives, for
	// others to join it in one write. It trades that much delay in the
	// log (not in the request) for far fewer wake-ups and write calls
	// when requests arrive one at a time. 0 means 1 ms; negative, none.
	Linger time.Duration
}

// Logger writes records to its devices from a bounded queue, in order, on
// one goroutine. A record counts as written when at least one device wrote
// it (as with Vault's audit devices, a device failing beside a working one
// misses that record, and the miss is logged). A record that no device could
// write is retried, with backoff, until one can or Close gives up; meanwhile
// the logger is unhealthy and refuses new records, so requests are denied
// rather than left unaudited. A record a device wrote but could not sync,
// as its sync policy requires, is not written yet: only its sync is retried.
// A device whose Write blocks holds up the others, so a device that may
// block must give up on a write itself, as [NewWriterDevice] does.
// Its methods are safe for concurrent use.
type Logger struct {
	devices  []device
	size     int
	log      *slog.Logger
	min, max time.Duration
	linger   time.Duration
	closing  chan struct{} // closed by Close, to cut a linger short

	// The queue is a slice the writer swaps out whole, so that under load
	// it takes one lock per batch rather than one per record, and Log does
	// not contend with it record by record as it would on a channel.
	mu     sync.Mutex
	wake   *sync.Cond // signalled when queue gains a record or closed is set
	queue  []Record
	spare  []Record // the writer's previous batch, reused
	closed bool
	// pending counts records accepted and not yet written, queued or in
	// the writer's batch. Log checks and increments it under mu, so it never
	// exceeds size; the writer decrements it without the lock.
	pending atomic.Int64

	full    error                 // returned when the queue is full
	healthy atomic.Bool           // Log refuses records while false
	down    atomic.Pointer[error] // why the logger is unhealthy

	abort chan struct{} // closed when Close's context expires
	done  chan struct{} // closed when the writer goroutine returns
}

type device struct {
	Device
	name    string
	failing bool  // only touched by the writer goroutine
	missed  int64 // records written elsewhere while this device was failing
	// unsynced is set while the device holds the record being written
	// but could not sync it: the record is then synced, not written again.
	unsynced bool
}

// NewLogger starts a logger writing to devices, which it owns: Close closes
// them. With no devices every Log fails: there is nowhere to record a
// decision, so none may be allowed.
func NewLogger(devices []Device, opts *Options) *Logger {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 4096
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Linger == 0 {
		o.Linger = time.Millisecond
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 10 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Second
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	l := &Logger{
		size:    o.QueueSize,
		log:     o.Logger,
		min:     o.MinBackoff,
		linger:  o.Linger,
		max:     o.MaxBackoff,
		full:    fmt.Errorf("%w: queue full (%d records waiting)", ErrUnavailable, o.QueueSize),
		abort:   make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	l.wake = sync.NewCond(&l.mu)
	for i, d := range devices {
		name := fmt.Sprintf("device %d", i)
		if s, ok := d.(fmt.Stringer); ok {
			name = s.String()
		}
		l.devices = append(l.devices, device{Device: d, name: name})
	}
	if len(devices) == 0 {
		l.setUnhealthy("no audit device configured")
	} else {
		l.healthy.Store(true)
	}
	go l.run()
	return l
}

// Log accepts a copy of rec for writing and returns at once. It returns an
// error wrapping [ErrUnavailable] when the record cannot be accepted — the
// queue is full, no device can currently record, or the logger is closed —
// and the caller must then deny the request. A nil error means the record
// will be written while the process lives (or reported lost by Close).
func (l *Logger) Log(rec *Record) error {
	if !l.healthy.Load() {
		return *l.down.Load()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.room(1); err != nil {
		return err
	}
	l.enqueue(rec)
	return nil
}

// LogAll is Log for records that stand or fall together, such as those of
// the calls of one JSON-RPC batch: it accepts copies of all of them or,
// returning the error Log would, of none, so that a request refused for
// want of room for its last record leaves no record saying it was allowed.
func (l *Logger) LogAll(recs []*Record) error {
	if !l.healthy.Load() {
		return *l.down.Load()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.room(len(recs)); err != nil {
		return err
	}
	for _, rec := range recs {
		l.enqueue(rec)
	}
	return nil
}

// room reports why n more records cannot be queued, if they cannot. l.mu
// must be held.
func (l *Logger) room(n int) error {
	switch {
	case l.closed:
		return errClosed
	case l.pending.Load()+int64(n) > int64(l.size):
		return l.full
	}
	return nil
}

// enqueue queues a copy of rec. l.mu must be held, and room checked.
func (l *Logger) enqueue(rec *Record) {
	l.queue = append(l.queue, *rec)
	r := &l.queue[len(l.queue)-1]
	r.Time = r.Time.UTC()
	r.Seq, r.Prev, r.Hash = 0, "", ""
	l.pending.Add(1)
	if len(l.queue) == 1 {
		l.wake.Signal()
	}
}

var errClosed = fmt.Errorf("%w: audit logger closed", ErrUnavailable)

// Healthy reports whether the last record was written by some device. It is
// false from the first record no device could write until one can again.
func (l *Logger) Healthy() bool { return l.healthy.Load() }

// Queued is how many records wait to be written.
func (l *Logger) Queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue)
}

// Close stops accepting records, writes those queued (retrying as usual) and
// closes the devices. If ctx ends first it stops writing and returns an
// error counting the records that were not written. It returns then even
// if a device's Write has not returned: the devices are closed once it
// does, and failures to close them are logged.
func (l *Logger) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closing)
	l.wake.Signal()
	l.mu.Unlock()

	select {
	case <-l.done:
		return l.closeDevices()
	case <-ctx.Done():
	}
	close(l.abort)
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-l.done:
		return errors.Join(fmt.Errorf("audit: close: %d records not written: %w", l.pending.Load(), ctx.Err()),
			l.closeDevices())
	case <-t.C:
	}
	go func() {
		<-l.done
		if err := l.closeDevices(); err != nil {
			l.log.Error("audit: closing devices after a stuck write returned", "err", err)
		}
	}()
	return fmt.Errorf("audit: close: %d records not written, a device write not returning: %w", l.pending.Load(), ctx.Err())
}

// closeGrace is how long Close, its context done, waits for the writer to
// finish the device write it is in.
const closeGrace = 50 * time.Millisecond

func (l *Logger) closeDevices() error {
	var err error
	for _, d := range l.devices {
		if cerr := d.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("audit: close %s: %w", d.name, cerr))
		}
	}
	return err
}

func (l *Logger) run() {
	defer close(l.done)
	for {
		l.mu.Lock()
		for len(l.queue) == 0 && !l.closed {
			l.wake.Wait()
		}
		if len(l.queue) == 0 {
			l.mu.Unlock()
			return
		}
		if l.linger > 0 && !l.closed {
			l.mu.Unlock()
			t := time.NewTimer(l.linger)
			select {
			case <-t.C:
			case <-l.closing:
				t.Stop()
			}
			l.mu.Lock()
		}
		batch := l.queue
		l.queue, l.spare = l.spare[:0], nil
		l.mu.Unlock()

		done := l.writeBatch(batch)
		for i := range batch {
			if i >= done && (l.aborted() || !l.write(&batch[i])) {
				return
			}
			batch[i] = Record{} // drop references to the caller's Args
			l.pending.Add(-1)
		}
		l.mu.Lock()
		l.spare = batch[:0]
		l.mu.Unlock()
	}
}

// aborted reports whether Close gave up on the records left.
func (l *Logger) aborted() bool {
	select {
	case <-l.abort:
		return true
	default:
		return false
	}
}

// batchWriter is a device that can take many records in one write.
type batchWriter interface {
	WriteBatch(recs []Record) (int, error)
}

// syncer is a device that can retry the sync of records it wrote.
type syncer interface {
	Sync() error
}

// writeBatch hands the whole batch to a sole device that takes batches,
// which turns a write call per record into one per batch under load. It
// returns how many records, a prefix, are done with; write takes the rest
// one by one, with the usual health accounting.
func (l *Logger) writeBatch(batch []Record) int {
	if len(l.devices) != 1 || len(batch) < 2 {
		return 0
	}
	d := &l.devices[0]
	bw, ok := d.Device.(batchWriter)
	if !ok || d.failing {
		return 0
	}
	for i := range batch {
		l.sanitize(&batch[i])
	}
	n, err := bw.WriteBatch(batch)
	switch {
	case n > 0 && errors.Is(err, errNotSynced):
		// The records are in the file; only the sync failed. The last one
		// is left to write, which syncs the device rather than writing it
		// again, with the usual health accounting, and that sync covers
		// the records before it.
		l.log.Warn("audit batch written but not synced; retrying the sync", "device", d.name, "err", err)
		_, d.unsynced = d.Device.(syncer)
		return n - 1
	case err != nil:
		l.log.Warn("audit batch write failed; retrying record by record", "device", d.name, "written", n, "err", err)
	}
	return n
}

// write writes rec to every device, retrying until one takes it. It returns
// false if Close gave up first.
func (l *Logger) write(rec *Record) bool {
	l.sanitize(rec)
	wait := l.min
	for {
		var errs []error
		ok := false
		for i := range l.devices {
			d := &l.devices[i]
			var err error
			if d.unsynced {
				err = d.Device.(syncer).Sync()
			} else if err = d.Write(rec); errors.Is(err, errNotSynced) {
				_, d.unsynced = d.Device.(syncer)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", d.name, err))
				if !d.failing {
					d.failing = true
					l.log.Error("audit device failing", "device", d.name, "err", err)
				}
				continue
			}
			ok = true
			if d.failing {
				d.failing = false
				l.log.Info("audit device recovered", "device", d.name, "missed_records", d.missed)
				d.missed = 0
			}
		}
		if ok {
			for i := range l.devices {
				if l.devices[i].failing {
					l.devices[i].missed++
				}
				// The next record's write syncs this one too.
				l.devices[i].unsynced = false
			}
			if !l.healthy.Load() {
				l.log.Info("audit log healthy again")
				l.healthy.Store(true)
			}
			return true
		}
		if len(l.devices) == 0 {
			return false
		}
		why, sep := "no audit device can record", ": "
		for _, err := range errs {
			why, sep = why+sep+err.Error(), "; "
		}
		if l.healthy.Load() {
			l.log.Error("audit log unhealthy: denying requests until a device can record", "err", why)
		}
		l.setUnhealthy(why)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-l.abort:
			t.Stop()
			return false
		}
		wait = min(2*wait, l.max)
	}
}

func (l *Logger) setUnhealthy(why string) {
	// Built once here rather than in every refused Log: an outage is when
	// Log is called hardest.
	err := fmt.Errorf("%w: %s", ErrUnavailable, why)
	l.down.Store(&err)
	l.healthy.Store(false)
}

// sanitize fixes what would break the one-record-per-line format or make
// every device fail on this record forever: arguments holding a line break,
// a time JSON cannot hold. Neither comes from the Redactor or a real clock;
// both are replaced rather than passed on. Args are otherwise written as
// they are: they must be JSON from the Redactor, and checking that here
// again would cost more than deciding the request did.
func (l *Logger) sanitize(rec *Record) {
	if bytes.IndexByte(rec.Args, '\n') >= 0 || bytes.IndexByte(rec.Args, '\r') >= 0 {
		l.log.Error("audit record arguments hold a line break; replaced", "decision_id", rec.DecisionID)
		rec.Args = json.RawMessage(`"` + Unencodable + `"`)
	}
	if y := rec.Time.Year(); y < 0 || y > 9999 {
		l.log.Error("audit record time out of range; replaced by zero", "decision_id", rec.DecisionID, "year", y)
		rec.Time = time.Time{}
	}
}
