package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// SyncPolicy says when the file device forces records to stable storage.
// Records that were written but not yet synced survive a crash of the
// process (they are in the kernel) but not of the machine.
type SyncPolicy int

const (
	// SyncOnInterval syncs at most every FileOptions.SyncInterval, from a
	// background goroutine, if anything was written: a power loss can lose
	// up to that interval of records. The default. After a failed sync,
	// writes fail (the device counts as failing) until a sync succeeds.
	SyncOnInterval SyncPolicy = iota
	// SyncAlways syncs after every record, before Write returns: nothing
	// the device acknowledged is lost, at the cost of one fsync per
	// decision (a batch shares one). It does not cover a record the
	// [Logger] accepted but has not yet written: [Logger.Log] returns, and
	// the request is allowed, before then. A failed sync fails the write,
	// though the record stays in the file; see [FileDevice.Write].
	SyncAlways
	// SyncNever leaves it to the kernel (typically up to 30 s) and to Close.
	SyncNever
)

func (p SyncPolicy) String() string {
	switch p {
	case SyncOnInterval:
		return "interval"
	case SyncAlways:
		return "always"
	case SyncNever:
		return "never"
	}
	return "SyncPolicy(" + strconv.Itoa(int(p)) + ")"
}

// UnmarshalText accepts "interval", "always" and "never", for configuration.
func (p *SyncPolicy) UnmarshalText(text []byte) error {
	for _, q := range []SyncPolicy{SyncOnInterval, SyncAlways, SyncNever} {
		if string(text) == q.String() {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("unknown audit sync policy %q (want always, interval or never)", text)
}

// FileOptions configures a [FileDevice]. The zero value is the default.
type FileOptions struct {
	// MaxBytes is the size after which the file is rotated: a record that
	// would make it larger goes to a new file (one larger record on its own
	// is still written). 0 means 100 MiB.
	MaxBytes int64
	// Sync is the fsync policy; the zero value is SyncOnInterval.
	Sync SyncPolicy
	// SyncInterval is the period of SyncOnInterval. 0 means 1 s.
	SyncInterval time.Duration
	// Now names rotated files. nil means time.Now.
	Now func() time.Time
	// Logger receives rotations (with the hash to keep elsewhere), torn
	// lines found at start and background sync failures. nil discards.
	Logger *slog.Logger
}

// FileDevice appends records as hash-chained JSON lines to a file, rotating
// it by size; see the package documentation for the format. The file is
// opened O_APPEND with mode 0600.
//
// The chain survives restarts: a new FileDevice continues from the last
// record of the file, or of the newest rotated file. If the file ends in a
// torn line (a crash mid-write), the file is rotated unchanged, the torn line
// is reported, and the new file continues from the last complete record, so
// nothing is chained over it and [Verify] can tell the crash apart from
// tampering.
//
// Before each write it checks that the path still names the file it has
// open: a file removed or renamed away fails writes until it is moved back,
// or a file created empty in its place takes the chain on.
type FileDevice struct {
	path     string
	maxBytes int64
	policy   SyncPolicy
	now      func() time.Time
	log      *slog.Logger

	mu    sync.Mutex
	f     *os.File    // nil after a failed rotation, reopened by the next Write
	fi    os.FileInfo // f's identity, to tell whether path still names it
	size  int64
	seq   uint64
	hash  string
	dirty bool // written since the last sync
	torn  bool // a failed write may have left a partial line past size
	// unsynced is the background sync's last failure, until a sync
	// succeeds: records written since may never reach the disk, so no
	// more are taken meanwhile.
	unsynced error
	closed   bool
	buf      []byte

	stop chan struct{}
	done chan struct{}
}

// NewFileDevice opens (creating it and its directory if need be) the audit
// file at path and resumes its chain. It fails if the last complete record
// does not verify: chaining onto a corrupt record would hide the corruption.
func NewFileDevice(path string, opts *FileOptions) (*FileDevice, error) {
	var o FileOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxBytes < 0 || o.SyncInterval < 0 {
		return nil, errors.New("audit file: MaxBytes and SyncInterval must not be negative")
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 100 << 20
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	d := &FileDevice{path: path, maxBytes: o.MaxBytes, policy: o.Sync, now: o.Now, log: o.Logger, hash: zeroHash}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit file: %w", err)
	}
	if err := d.resume(); err != nil {
		return nil, err
	}
	if err := d.open(); err != nil {
		return nil, err
	}
	if d.policy == SyncOnInterval {
		d.stop, d.done = make(chan struct{}), make(chan struct{})
		go d.syncLoop(o.SyncInterval)
	}
	return d, nil
}

// resume finds the tip of the chain, setting aside a torn file first.
//
// The current file missing while rotated files exist means its records
// were deleted, unless a rotation was cut short, which leaves the next
// file beside it (see replace): resume finishes such a rotation, and
// refuses to go on from the rotated files otherwise, since the chain
// would then hide the loss. An operator who knows why the file is gone
// creates it, empty, to go on.
func (d *FileDevice) resume() error {
	if err := d.finishRotation(); err != nil {
		return err
	}
	tip, torn, err := lastRecord(d.path)
	if err != nil {
		return err
	}
	if torn > 0 {
		aside, err := d.replace()
		if err != nil {
			return fmt.Errorf("audit file: set aside %s, which ends in a torn line: %w", d.path, err)
		}
		d.log.Error("audit file ends in a torn line (crash while writing?); set it aside unchanged and continuing the chain in a new file",
			"file", aside, "torn_bytes", torn, "last_seq", tip.seq)
	}
	if tip.seq == 0 {
		// The current file has no record: the chain ends in a rotated file.
		rotated, err := rotatedFiles(d.path)
		if err != nil {
			return err
		}
		for i := len(rotated) - 1; i >= 0 && tip.seq == 0; i-- {
			if tip, _, err = lastRecord(rotated[i]); err != nil {
				return err
			}
		}
	}
	if tip.seq > 0 {
		d.seq, d.hash = tip.seq, tip.hash
	}
	return nil
}

// lastRecord returns the last complete record of the file at name (zero if
// there is none or no file) and the length of a torn line after it.
func lastRecord(name string) (tip link, torn int64, err error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return link{}, 0, nil
	}
	if err != nil {
		return link{}, 0, fmt.Errorf("audit file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return link{}, 0, fmt.Errorf("audit file: %w", err)
	}
	end, err := completeEnd(f, fi.Size())
	if err != nil {
		return link{}, 0, fmt.Errorf("audit file: read %s: %w", name, err)
	}
	lines, err := lastLines(f, end, 1)
	if err != nil {
		return link{}, 0, fmt.Errorf("audit file: read %s: %w", name, err)
	}
	if len(lines) == 1 {
		l, kind, detail := checkLine(lines[0])
		if kind != "" {
			return link{}, 0, fmt.Errorf("audit file: %s: last record: %s: %s; refusing to chain onto it (run amg audit verify, then move the file aside)", name, kind, detail)
		}
		tip = l
	}
	return tip, fi.Size() - end, nil
}

func (d *FileDevice) open() error {
	f, err := os.OpenFile(d.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit file: %w", err)
	}
	// Records hold who called what; an existing file made readable by
	// others (a restore, a umask) is tightened rather than trusted.
	if fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return fmt.Errorf("audit file: %w", err)
		}
		d.log.Warn("audit file permissions tightened to 0600", "file", d.path, "was", fi.Mode().Perm().String())
	}
	d.f, d.fi, d.size, d.torn = f, fi, fi.Size(), false
	syncDir(d.path)
	return nil
}

// checkPath makes sure the path still names the open file. A file removed
// or renamed away while open still takes writes, but nobody reads them: not
// Verify, nor replay, nor the shipper, which all follow the path. So while
// the path names no file, Write fails and the logger denies requests,
// keeping the records it accepted until it can write them. The file moved
// back, the chain goes on in it unbroken; a file created empty in its place
// (or one ending with the chain's last record) takes the chain on from its
// last record, as after a restart, and Verify shows where records went.
// Records written before the file was found gone went with it.
func (d *FileDevice) checkPath() error {
	fi, err := os.Stat(d.path)
	switch {
	case err == nil && os.SameFile(fi, d.fi):
		return nil
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("audit file: %s was removed or renamed while open, after seq %d (hash %s): refusing records until it is moved back, or created empty to continue the chain in it",
			d.path, d.seq, d.hash)
	case err != nil:
		return fmt.Errorf("audit file: %w", err)
	}
	tip, torn, err := lastRecord(d.path)
	if err != nil {
		return err
	}
	if torn > 0 || tip.seq != 0 && (tip.seq != d.seq || tip.hash != d.hash) {
		return fmt.Errorf("audit file: %s was replaced while open by a file that does not end where the chain does (seq %d, hash %s); refusing to chain onto it",
			d.path, d.seq, d.hash)
	}
	// Whatever the old file still holds is synced in case it was renamed,
	// not removed; its records are where it went, either way.
	old := errors.Join(d.f.Sync(), d.f.Close())
	d.f, d.dirty = nil, false
	if err := d.open(); err != nil {
		return err
	}
	d.log.Error("audit file was replaced while open; continuing the chain in the new file (records written before this went with the old one)",
		"file", d.path, "last_seq", d.seq, "last_hash", d.hash, "old_file_err", old)
	return nil
}

// nextPath is where replace makes the next current file before it takes
// the place of the one rotated away.
func (d *FileDevice) nextPath() string { return d.path + ".next" }

// replace moves the current file to a new rotated name, which it returns,
// and puts an empty file in its place. The empty file is made first, so
// that a crash between the two renames leaves it beside the rotated file
// (finishRotation), never a log without its current file.
func (d *FileDevice) replace() (string, error) {
	next, err := os.OpenFile(d.nextPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if err := errors.Join(next.Sync(), next.Close()); err != nil {
		return "", err
	}
	name, err := d.rename()
	if err != nil {
		return "", err
	}
	if err := os.Rename(d.nextPath(), d.path); err != nil {
		return "", err
	}
	syncDir(d.path)
	return name, nil
}

// finishRotation completes a rotation a crash cut short, and refuses a
// log whose current file is gone while rotated files remain.
func (d *FileDevice) finishRotation() error {
	if _, err := os.Lstat(d.path); !errors.Is(err, os.ErrNotExist) {
		return nil // present (or unreadable, which open reports)
	}
	if _, err := os.Lstat(d.nextPath()); err == nil {
		if err := os.Rename(d.nextPath(), d.path); err != nil {
			return fmt.Errorf("audit file: finish an interrupted rotation: %w", err)
		}
		syncDir(d.path)
		d.log.Warn("audit file: finished a rotation cut short (crash while rotating?)", "file", d.path)
		return nil
	}
	rotated, err := rotatedFiles(d.path)
	if err != nil {
		return err
	}
	if len(rotated) > 0 {
		return fmt.Errorf("audit file: %s is missing while rotated files remain (the last is %s): its records may have been deleted; check with amg audit verify, and to go on, create %s empty",
			d.path, rotated[len(rotated)-1], d.path)
	}
	return nil
}

// rename moves the current file to a new rotated name and returns it.
func (d *FileDevice) rename() (string, error) {
	t := d.now()
	name := rotatedName(d.path, t)
	for {
		// Lstat, not a rename that replaces: two rotations in the same
		// nanosecond (or under a frozen test clock) must not clobber a file.
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			break
		}
		t = t.Add(time.Nanosecond)
		name = rotatedName(d.path, t)
	}
	if err := os.Rename(d.path, name); err != nil {
		return "", err
	}
	syncDir(d.path)
	return name, nil
}

// errNotSynced is the error of a write under SyncAlways whose records are
// in the file and chained but whose sync failed: they are to be synced
// again, not written again.
var errNotSynced = errors.New("written but not synced")

// Write appends one record. Under SyncAlways, if only the sync fails, the
// record stays in the file and Write returns an error nonetheless: a
// [FileDevice.Sync] that succeeds makes it durable, where writing it again
// would record it twice.
func (d *FileDevice) Write(rec *Record) error {
	_, err := d.writeRecords(1, func(int) *Record { return rec })
	return err
}

// WriteBatch appends recs with as few write calls as it can: one per
// megabyte or so, and one more where the file rotates. It returns how many
// records, a prefix of recs, are recorded; on error nothing of the others
// is left in the file and the chain continues from the last recorded one.
// Under SyncAlways, if only the sync fails, it returns len(recs) and an
// error, as Write does.
func (d *FileDevice) WriteBatch(recs []Record) (int, error) {
	return d.writeRecords(len(recs), func(i int) *Record { return &recs[i] })
}

// Sync forces what was written to stable storage, whatever the policy.
func (d *FileDevice) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("audit file: closed")
	}
	if !d.dirty || d.f == nil {
		return nil
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("audit file: %w: %w", errNotSynced, err)
	}
	d.dirty, d.unsynced = false, nil
	return nil
}

// maxWrite is about the most a batch writes in one call.
const maxWrite = 1 << 20

func (d *FileDevice) writeRecords(n int, rec func(int) *Record) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errors.New("audit file: closed")
	}
	if d.f == nil {
		if err := d.open(); err != nil {
			return 0, err
		}
	} else if err := d.checkPath(); err != nil {
		return 0, err
	}
	if d.unsynced != nil {
		// What the background sync could not make durable, this one
		// may; until one does, nothing more is acknowledged.
		if err := d.f.Sync(); err != nil {
			return 0, fmt.Errorf("audit file: the last sync failed, and syncing again: %w", err)
		}
		d.dirty, d.unsynced = false, nil
	}
	if d.torn {
		// Remove what a failed write left, so the retry does not start
		// mid-line. Those bytes were never acknowledged.
		if err := d.f.Truncate(d.size); err != nil {
			return 0, fmt.Errorf("audit file: remove partial record: %w", err)
		}
		d.torn = false
	}
	// Lines are chained into buf and written together; seq and hash run
	// ahead of d.seq and d.hash until the write that holds them succeeds.
	buf := d.buf[:0]
	seq, hash := d.seq, d.hash
	written, pending := 0, 0
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		m, err := d.f.Write(buf)
		if err != nil {
			if m > 0 {
				d.torn = d.f.Truncate(d.size) != nil
			}
			return fmt.Errorf("audit file: %w", err)
		}
		d.size += int64(m)
		d.seq, d.hash, d.dirty = seq, hash, true
		written, pending, buf = written+pending, 0, buf[:0]
		return nil
	}
	var err error
	for i := range n {
		r := *rec(i)
		r.Seq, r.Prev, r.Hash = seq+1, hash, ""
		// The record is hashed as encoded without its hash, then the
		// hash goes in before its closing brace.
		start := len(buf)
		buf = r.appendJSON(buf)
		sum := sha256.Sum256(buf[start:])
		buf = append(buf[:len(buf)-1], hashKey...)
		buf = hex.AppendEncode(buf, sum[:])
		buf = append(buf, '"', '}', '\n')
		// A line that would take the file past its size starts a new one
		// (a record larger than that alone still gets written).
		if before := d.size + int64(start); before > 0 && before+int64(len(buf)-start) > d.maxBytes {
			line := len(buf) - start
			buf = buf[:start]
			if err = flush(); err != nil {
				break
			}
			if err = d.rotate(); err != nil {
				break
			}
			buf = buf[:copy(buf[:cap(buf)], buf[start:start+line])]
		}
		// The next record's prev: the hash as the line ends with it.
		seq, hash = r.Seq, string(buf[len(buf)-len(`"}`+"\n")-hex.EncodedLen(len(sum)):len(buf)-len(`"}`+"\n")])
		pending++
		// A large batch goes out in writes of about maxWrite bytes rather
		// than one buffer the size of the batch.
		if len(buf) >= maxWrite {
			if err = flush(); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = flush()
	}
	d.buf = buf
	if err == nil && d.policy == SyncAlways {
		// The lines are in the file and chained, and stay there if the
		// sync fails: the caller is to retry Sync, not the write.
		if err := d.f.Sync(); err != nil {
			return written, fmt.Errorf("audit file: %w: %w", errNotSynced, err)
		}
		d.dirty, d.unsynced = false, nil
	}
	return written, err
}

// rotate closes the current file and renames it. On failure the device
// stays usable: the next Write reopens the path and tries again.
func (d *FileDevice) rotate() error {
	syncErr := d.f.Sync()
	closeErr := d.f.Close()
	d.f, d.dirty = nil, false
	if err := errors.Join(syncErr, closeErr); err != nil {
		return fmt.Errorf("audit file: rotate: %w", err)
	}
	name, err := d.replace()
	if err != nil {
		return fmt.Errorf("audit file: rotate: %w", err)
	}
	d.log.Info("audit file rotated", "file", name, "last_seq", d.seq, "last_hash", d.hash)
	return d.open()
}

func (d *FileDevice) syncLoop(every time.Duration) {
	defer close(d.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.mu.Lock()
		if d.dirty && d.f != nil {
			if err := d.f.Sync(); err != nil {
				d.log.Error("audit file sync failed; refusing records until a sync succeeds", "file", d.path, "err", err)
				d.unsynced = err
			} else {
				d.dirty, d.unsynced = false, nil
			}
		}
		d.mu.Unlock()
	}
}

// Close syncs and closes the file.
func (d *FileDevice) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	if d.stop != nil {
		close(d.stop)
		<-d.done
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return nil
	}
	err := errors.Join(d.f.Sync(), d.f.Close())
	d.f = nil
	d.log.Info("audit file closed", "file", d.path, "last_seq", d.seq, "last_hash", d.hash)
	if err != nil {
		return fmt.Errorf("audit file: close: %w", err)
	}
	return nil
}

// String names the device in logs.
func (d *FileDevice) String() string { return "file " + d.path }

// syncDir makes a created or renamed file's directory entry durable. It is
// best effort: not every system can sync a directory, and the data itself
// is synced separately.
func syncDir(path string) {
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		_ = dir.Sync()
		dir.Close()
	}
}

var _ io.Closer = (*FileDevice)(nil)
