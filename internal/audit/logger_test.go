package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeDevice records decision ids. It fails while err is set, and its
// first Write can be held until the test releases it.
type fakeDevice struct {
	mu     sync.Mutex
	err    error
	got    []string
	tries  int
	closed bool

	hold    chan struct{} // if set, the first Write waits for it to close
	entered chan struct{} // closed when the first Write starts
}

func (d *fakeDevice) Write(rec *Record) error {
	d.mu.Lock()
	d.tries++
	first, hold := d.tries == 1, d.hold
	d.mu.Unlock()
	if first && hold != nil {
		close(d.entered)
		<-hold
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return d.err
	}
	d.got = append(d.got, rec.DecisionID)
	return nil
}

func (d *fakeDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

func (d *fakeDevice) setErr(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err = err
}

func (d *fakeDevice) written() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.got...)
}

func (d *fakeDevice) attempts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tries
}

func newHeld() *fakeDevice {
	return &fakeDevice{hold: make(chan struct{}), entered: make(chan struct{})}
}

// waitFor waits for cond; the deadline only keeps a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func ids(from, to int) []string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, fmt.Sprintf("d%d", i))
	}
	return s
}

var fastRetry = &Options{MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}

func TestLoggerRetriesUntilRecovery(t *testing.T) {
	dev := newHeld()
	dev.setErr(errors.New("disk full"))
	opts := *fastRetry
	opts.QueueSize = 8
	l := NewLogger([]Device{dev}, &opts)
	defer l.Close(context.Background())

	for i := 1; i <= 5; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatalf("Log %d while healthy: %v", i, err)
		}
	}
	close(dev.hold) // the first write fails now
	waitFor(t, "unhealthy", func() bool { return !l.Healthy() })

	err := l.Log(testRecord(6))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Log while unhealthy = %v, want ErrUnavailable", err)
	}
	if want := "audit log unavailable: no audit device can record: device 0: disk full"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	waitFor(t, "retries", func() bool { return dev.attempts() >= 3 })

	dev.setErr(nil)
	waitFor(t, "recovery", func() bool { return len(dev.written()) == 5 })
	if !l.Healthy() {
		t.Error("unhealthy after a write succeeded")
	}
	if err := l.Log(testRecord(7)); err != nil {
		t.Fatalf("Log after recovery: %v", err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(append(ids(1, 5), "d7"), dev.written()); diff != "" {
		t.Errorf("written (-want +got):\n%s", diff)
	}
}

func TestLoggerQueueFull(t *testing.T) {
	dev := newHeld()
	l := NewLogger([]Device{dev}, &Options{QueueSize: 2})
	if err := l.Log(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	<-dev.entered // record 1 is being written: it still counts
	if err := l.Log(testRecord(2)); err != nil {
		t.Fatal(err)
	}
	err := l.Log(testRecord(3))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "queue full") {
		t.Fatalf("Log with a full queue = %v, want ErrUnavailable: queue full", err)
	}
	if !l.Healthy() {
		t.Error("a full queue is not a device failure")
	}
	close(dev.hold)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(1, 2), dev.written()); diff != "" {
		t.Errorf("written (-want +got):\n%s", diff)
	}
}

func TestLoggerCloseDrains(t *testing.T) {
	dev := &fakeDevice{}
	l := NewLogger([]Device{dev}, nil)
	for i := 1; i <= 100; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(1, 100), dev.written()); diff != "" {
		t.Errorf("written (-want +got):\n%s", diff)
	}
	if !dev.closed {
		t.Error("device not closed")
	}
	if err := l.Log(testRecord(101)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Log after Close = %v, want ErrUnavailable", err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestLoggerCloseGivesUp(t *testing.T) {
	dev := newHeld()
	dev.setErr(errors.New("down"))
	l := NewLogger([]Device{dev}, fastRetry)
	for i := 1; i <= 3; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	close(dev.hold)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := l.Close(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "3 records not written") {
		t.Errorf("Close = %v, want 3 records not written", err)
	}
	if !dev.closed {
		t.Error("device not closed")
	}
}

func TestLoggerOneDeviceFailing(t *testing.T) {
	good, bad := &fakeDevice{}, &fakeDevice{err: errors.New("broken pipe")}
	l := NewLogger([]Device{bad, good}, fastRetry)
	for i := 1; i <= 10; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatalf("Log %d: %v", i, err)
		}
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(1, 10), good.written()); diff != "" {
		t.Errorf("good device (-want +got):\n%s", diff)
	}
	if !l.Healthy() {
		t.Error("unhealthy although a device recorded everything")
	}
}

func TestLoggerNoDevices(t *testing.T) {
	l := NewLogger(nil, nil)
	defer l.Close(context.Background())
	if err := l.Log(testRecord(1)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Log with no devices = %v, want ErrUnavailable", err)
	}
	if l.Healthy() {
		t.Error("healthy with no devices")
	}
}

// capture keeps whole records.
type capture struct {
	mu   sync.Mutex
	recs []Record
}

func (c *capture) Write(rec *Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, *rec)
	return nil
}

func (c *capture) Close() error { return nil }

func TestLoggerCopiesAndSanitizes(t *testing.T) {
	c := &capture{}
	l := NewLogger([]Device{c}, nil)
	rec := testRecord(1)
	rec.Time = rec.Time.In(time.FixedZone("CET", 3600))
	rec.Seq, rec.Prev, rec.Hash = 7, "forged", "forged"
	if err := l.Log(rec); err != nil {
		t.Fatal(err)
	}
	rec.DecisionID = "changed after Log"
	bad := testRecord(2)
	bad.Args = json.RawMessage("{\"password\":\n\"x\"}")
	bad.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := l.Log(bad); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	want1 := *testRecord(1)
	want2 := *testRecord(2)
	want2.Args = json.RawMessage(`"` + Unencodable + `"`)
	want2.Time = time.Time{}
	if diff := cmp.Diff([]Record{want1, want2}, c.recs); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if c.recs[0].Time.Location() != time.UTC {
		t.Errorf("time in %v, want UTC", c.recs[0].Time.Location())
	}
}

// TestLoggerToFile runs the whole path: concurrent loggers, a rotating file
// device, and Verify over the result.
func TestLoggerToFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 4 << 10, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLogger([]Device{d}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				if err := l.Log(testRecord(g*1000 + i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	files, res := verifyChain(t, path)
	if res.Records != 400 || len(files) < 2 {
		t.Errorf("%d records in %d files, want 400 in several", res.Records, len(files))
	}
}

// batchCapture records the size of every batch it is handed.
type batchCapture struct {
	mu      sync.Mutex
	batches []int
}

func (b *batchCapture) Write(*Record) error {
	b.mu.Lock()
	b.batches = append(b.batches, 1)
	b.mu.Unlock()
	return nil
}
func (b *batchCapture) WriteBatch(recs []Record) (int, error) {
	b.mu.Lock()
	b.batches = append(b.batches, len(recs))
	b.mu.Unlock()
	return len(recs), nil
}
func (b *batchCapture) Close() error { return nil }

func TestLoggerLingerGathersRecords(t *testing.T) {
	dev := &batchCapture{}
	// A long linger, so that the five records below, logged one after
	// another, certainly arrive within it.
	l := NewLogger([]Device{dev}, &Options{Linger: time.Hour})
	for i := range 5 {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Close cuts the linger short and writes what is queued.
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{5}, dev.batches); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
}

// onPipe moves d onto the write end of a pipe, where writes succeed and
// syncs fail. It returns the read end, and back, which returns d to its
// file (where syncs succeed) and closes the write end.
func onPipe(t *testing.T, d *FileDevice) (r *os.File, back func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	d.mu.Lock()
	file := d.f
	d.f = w
	d.mu.Unlock()
	return r, func() {
		d.mu.Lock()
		d.f = file
		d.mu.Unlock()
		w.Close()
	}
}

// lineIDs returns the decision ids of the JSON lines in data.
func lineIDs(t *testing.T, data []byte) []string {
	var got []string
	for line := range bytes.Lines(data) {
		got = append(got, decisionID(t, line))
	}
	return got
}

// TestLoggerNotSynced shows that with SyncAlways records that were written
// but not synced, alone or in a batch, leave the logger unhealthy until a
// sync succeeds, as records that were not written would, and that they are
// synced again rather than written again.
func TestLoggerNotSynced(t *testing.T) {
	for _, n := range []int{1, 5} {
		t.Run(fmt.Sprintf("%d records", n), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			d, err := NewFileDevice(path, &FileOptions{Sync: SyncAlways, Now: fakeClock()})
			if err != nil {
				t.Fatal(err)
			}
			r, back := onPipe(t, d)
			opts := *fastRetry
			// Ample time for the records below, logged one after
			// another, to make one batch.
			opts.Linger = 50 * time.Millisecond
			l := NewLogger([]Device{d}, &opts)
			gaveUp, cancel := context.WithCancel(context.Background())
			cancel()
			defer l.Close(gaveUp)

			for i := 1; i <= n; i++ {
				if err := l.Log(testRecord(i)); err != nil {
					t.Fatalf("Log %d: %v", i, err)
				}
			}
			waitFor(t, "unhealthy", func() bool { return !l.Healthy() })
			if err := l.Log(testRecord(n + 1)); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not synced") {
				t.Errorf("Log with records not synced = %v, want ErrUnavailable: ... not synced", err)
			}

			back() // to the file, which syncs
			waitFor(t, "recovery", l.Healthy)
			if err := l.Log(testRecord(n + 2)); err != nil {
				t.Fatalf("Log after recovery: %v", err)
			}
			if err := l.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			piped, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			filed, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got := lineIDs(t, append(piped, filed...))
			if diff := cmp.Diff(append(ids(1, n), fmt.Sprintf("d%d", n+2)), got); diff != "" {
				t.Errorf("records written (-want +got):\n%s", diff)
			}
		})
	}
}

// Records accepted while audit.log is gone are held, and requests denied,
// until it is back: none goes to a file nobody reads.
func TestLoggerFileRemovedWhileRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	dev, err := NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLogger([]Device{dev}, fastRetry)
	for i := 1; i <= 3; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "records 1-3 written", func() bool { return l.pending.Load() == 0 })
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(testRecord(4)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unhealthy", func() bool { return !l.Healthy() })
	if err := l.Log(testRecord(5)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Log with audit.log gone = %v, want ErrUnavailable", err)
	}
	writeLines(t, path, nil)
	waitFor(t, "healthy", l.Healthy)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := fileIDs(t, path)
	if diff := cmp.Diff([]string{"d4"}, got); diff != "" {
		t.Errorf("records in the new audit.log (-want +got):\n%s", diff)
	}
}

// fileIDs is the decision ids of the records in the file at path.
func fileIDs(t *testing.T, path string) []string {
	t.Helper()
	var ids []string
	for _, line := range readLines(t, path) {
		ids = append(ids, decisionID(t, []byte(line)))
	}
	return ids
}

// blockedWriter is stdout piped to a reader that stopped reading: once
// the pipe is full, every write blocks.
type blockedWriter struct{ release chan struct{} }

func (w blockedWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

// A writer device that blocks must not hold up the file: records go on
// being written there and accepted.
func TestLoggerBlockedWriterDoesNotHoldFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	file, err := NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	stdout := blockedWriter{make(chan struct{})}
	defer close(stdout.release)
	l := NewLogger([]Device{file, NewWriterDevice(stdout)}, &Options{QueueSize: 4})
	for i := 1; i <= 20; i++ {
		if err := l.Log(testRecord(i)); err != nil {
			t.Fatalf("Log %d: %v", i, err)
		}
		waitFor(t, fmt.Sprintf("record %d written", i), func() bool { return l.pending.Load() == 0 })
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := fileIDs(t, path)
	if diff := cmp.Diff(ids(1, 20), got); diff != "" {
		t.Errorf("records in the file (-want +got):\n%s", diff)
	}
}

// Close returns once its context is done even while a device's Write has
// not returned, and closes the device when it does.
func TestLoggerCloseWhileWriteStuck(t *testing.T) {
	dev := newHeld()
	l := NewLogger([]Device{dev}, nil)
	if err := l.Log(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	<-dev.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	closed := make(chan error, 1)
	go func() { closed <- l.Close(ctx) }()
	var err error
	waitFor(t, "Close to return", func() bool {
		select {
		case err = <-closed:
			return true
		default:
			return false
		}
	})
	if want := "audit: close: 1 records not written, a device write not returning: context canceled"; err == nil || err.Error() != want {
		t.Errorf("Close = %v, want %q", err, want)
	}
	close(dev.hold)
	waitFor(t, "device closed", func() bool {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		return dev.closed
	})
}

func TestWriterDeviceBlocked(t *testing.T) {
	w := blockedWriter{make(chan struct{})}
	d := NewWriterDevice(w)
	defer d.Close()
	if err := d.Write(testRecord(1)); err == nil || !strings.Contains(err.Error(), "no return after") {
		t.Fatalf("Write to a blocked writer = %v, want a timeout", err)
	}
	if err := d.Write(testRecord(2)); err == nil || !strings.Contains(err.Error(), "has not returned") {
		t.Fatalf("Write while the last is stuck = %v, want it refused", err)
	}
	close(w.release)
	waitFor(t, "the writer to recover", func() bool { return d.Write(testRecord(3)) == nil })
}

// lateWriter is a log pipeline whose first write returns only once release
// is closed, with err; until then it holds the device's next writes too.
type lateWriter struct {
	release chan struct{}
	err     error

	mu    sync.Mutex
	first bool // the first write has begun
	out   bytes.Buffer
}

func (w *lateWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	first := !w.first
	w.first = true
	w.mu.Unlock()
	if first {
		<-w.release
		if w.err != nil {
			return 0, w.err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

func (w *lateWriter) written(t *testing.T) []string {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var ids []string
	for _, line := range strings.SplitAfter(w.out.String(), "\n") {
		if line != "" {
			ids = append(ids, decisionID(t, []byte(line)))
		}
	}
	return ids
}

// A write that times out and then returns without error recorded its
// record: the retry of that record is not written again, while a record
// after it, or the retry after a late write that failed, is written.
func TestWriterDeviceLateWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error // the late write's
		retry int   // the record written once it has returned
		want  []string
	}{
		{"went through, same record retried", nil, 1, []string{"d1", "d2"}},
		{"went through, next record", nil, 3, []string{"d1", "d3", "d2"}},
		{"failed, same record retried", errors.New("broken pipe"), 1, []string{"d1", "d2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &lateWriter{release: make(chan struct{}), err: tc.err}
			d := NewWriterDevice(w)
			defer d.Close()
			if err := d.Write(testRecord(1)); err == nil || !strings.Contains(err.Error(), "no return after") {
				t.Fatalf("Write to a held writer = %v, want a timeout", err)
			}
			close(w.release)
			var err error
			waitFor(t, "the late write to return", func() bool {
				err = d.Write(testRecord(tc.retry))
				return !errors.Is(err, errWriterStuck)
			})
			if err != nil {
				t.Fatalf("Write of record %d once the late write returned = %v", tc.retry, err)
			}
			if err := d.Write(testRecord(2)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, w.written(t)); diff != "" {
				t.Errorf("records written (-want +got):\n%s", diff)
			}
		})
	}
}

// The logger retries a record whose stdout write timed out; once that
// write goes through, the record is in the pipeline once.
func TestLoggerWriterLateWriteNotRepeated(t *testing.T) {
	w := &lateWriter{release: make(chan struct{})}
	l := NewLogger([]Device{NewWriterDevice(w)}, fastRetry)
	if err := l.Log(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the write to time out", func() bool { return !l.Healthy() })
	close(w.release)
	waitFor(t, "the retry to succeed", l.Healthy)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"d1"}, w.written(t)); diff != "" {
		t.Errorf("records written (-want +got):\n%s", diff)
	}
}

func TestLoggerLogAll(t *testing.T) {
	dev := newHeld()
	l := NewLogger([]Device{dev}, &Options{QueueSize: 3})
	defer l.Close(context.Background())
	if err := l.Log(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	<-dev.entered // record 1 is being written: room for 2 more
	if err := l.LogAll([]*Record{testRecord(2), testRecord(3), testRecord(4)}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("LogAll of 3 with room for 2 = %v, want ErrUnavailable", err)
	}
	if err := l.LogAll([]*Record{testRecord(5), testRecord(6)}); err != nil {
		t.Fatalf("LogAll of 2 with room for 2: %v", err)
	}
	close(dev.hold)
	waitFor(t, "records written", func() bool { return len(dev.written()) == 3 })
	if diff := cmp.Diff([]string{"d1", "d5", "d6"}, dev.written()); diff != "" {
		t.Errorf("written (-want +got):\n%s", diff)
	}
}
