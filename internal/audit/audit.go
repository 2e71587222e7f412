// Package audit records every gateway decision, durably and tamper-evidently,
// without ever persisting a secret.
//
// The pieces, in the order a decision meets them:
//
//   - A [Redactor] turns a call's arguments into JSON in which the values of
//     sensitive keys and of the role's redaction globs are replaced by an HMAC
//     under a per-install key ([LoadOrCreateKey]), so equality can still be
//     checked but the value cannot be read back.
//   - A [Logger] takes a [Record] without blocking and writes it from a
//     bounded queue to its devices. It never drops a record silently: when the
//     queue is full or no device can record, [Logger.Log] returns
//     [ErrUnavailable] and the caller must deny the request.
//   - A [FileDevice] appends JSON lines to a file whose records form a SHA-256
//     hash chain that continues across rotated files; [Verify] checks it.
//     [NewWriterDevice] writes plain JSON lines to any io.Writer (stdout).
//
// # Chain format
//
// Each line the file device writes is one JSON object: the [Record] fields,
// then "seq" (1 for the first record of an install, +1 per record, continued
// across rotation), "prev" (the previous record's hash; 64 zeros for seq 1)
// and, last, "hash". The hash is computed over the exact bytes written, never
// over a re-marshalled record:
//
//	body = the line without its trailing `,"hash":"<64 hex>"}` and newline, plus "}"
//	hash = lowercase hex of SHA-256(body)
//
// So a verifier strips a fixed 75-byte suffix, appends "}", hashes, and
// compares; body is also the JSON the record marshals to without its hash
// (args stand as the redactor gave them, which may keep the agent's own
// spacing). A SHA-256 chain proves that records were not altered, removed or
// reordered relative to each other; it cannot stop someone who may rewrite
// the file from cutting its end or recomputing every hash after a change.
// An [Anchor] kept elsewhere does: the last seq and hash, printed by `amg
// audit verify`, logged at each rotation and on close, and shipped to the
// Redis stream by every replica ([Stream.Head]).
package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// FileName and KeyFileName are the default names of the audit file and of
// the HMAC key file inside the gateway's data directory.
const (
	FileName    = "audit.log"
	KeyFileName = "audit.key"
)

// ErrUnavailable is returned by [Logger.Log] when the record cannot be
// accepted: the queue is full, no device can record, or the logger is
// closed. The caller must deny the request it was about to allow.
var ErrUnavailable = errors.New("audit log unavailable")

// Record is one decision. Field names are the JSON keys of the audit log, a
// format that replay, the console and external pipelines read.
type Record struct {
	Time       time.Time `json:"ts"`
	DecisionID string    `json:"decision_id"`
	Agent      string    `json:"agent,omitempty"`
	Role       string    `json:"role,omitempty"`
	// TokenID is the public ID of the agent's token, when the token is
	// known: an agent may hold several, and one may have leaked.
	TokenID string `json:"token_id,omitempty"`
	Server  string `json:"server,omitempty"`
	Tool    string `json:"tool,omitempty"`
	Method  string `json:"method,omitempty"`
	// Args must already be redacted, and be JSON as [Redactor.Redact] and
	// [Redactor.RedactRaw] give it: it is written as it is. The logger
	// keeps a reference to it, so it must not be modified after Log.
	Args json.RawMessage `json:"args,omitempty"`
	// ArgsCut, in a record read from the Redis stream, is the size of
	// arguments too large for it (over StreamArgsMax bytes): they were
	// left out of the stream's copy, and the replica's file holds them.
	ArgsCut        int    `json:"args_cut,omitempty"`
	PolicyVersion  string `json:"policy_version,omitempty"`
	Verdict        string `json:"verdict"`
	ShadowVerdict  string `json:"shadow_verdict,omitempty"`
	Rule           string `json:"rule,omitempty"`
	Code           string `json:"code"`
	Reason         string `json:"reason,omitempty"`
	LatencyMicros  int64  `json:"latency_us"`
	UpstreamStatus string `json:"upstream_status,omitempty"`
	UpstreamMicros int64  `json:"upstream_latency_us,omitempty"`
	TraceID        string `json:"trace_id,omitempty"`
	ApprovalID     string `json:"approval_id,omitempty"`

	// Replica is the replica that recorded it, for a record read from the
	// stream replicas share (see Stream); it is no part of a file's line.
	Replica string `json:"-"`

	// Seq, Prev and Hash are the hash chain, filled in by the file device
	// (see the package documentation); anything a caller sets here is
	// discarded by [Logger.Log]. Hash must stay the last field: the chain
	// format relies on it being the last key of the line.
	Seq  uint64 `json:"seq,omitempty"`
	Prev string `json:"prev,omitempty"`
	Hash string `json:"hash,omitempty"`
}

// Device is where records end up. The logger calls Write from a single
// goroutine; Write must not modify rec nor keep it after returning, and must
// return an error unless the record was recorded (a failed record is retried,
// so a device that half-wrote one must undo or tolerate the retry).
type Device interface {
	Write(rec *Record) error
	Close() error
}

// NewWriterDevice returns a device writing each record as one JSON line to w,
// without a hash chain: for stdout and log collectors. It does not close w.
//
// A write that has not returned after [WriterTimeout] fails the record, as
// does every record until that write returns, so that a reader that
// stopped reading (a full pipe) makes the device fail rather than hold up
// the logger and, with it, the other devices. A write that returns late
// without error did record its record: if the next record is the same
// one, retried, it is not written again.
func NewWriterDevice(w io.Writer) Device {
	d := &writerDevice{w: w, timeout: WriterTimeout, lines: make(chan []byte), done: make(chan error, 1)}
	go d.run()
	return d
}

// WriterTimeout is how long a [NewWriterDevice] write may take before the
// record counts as not written.
const WriterTimeout = 100 * time.Millisecond

type writerDevice struct {
	mu      sync.Mutex
	w       io.Writer
	timeout time.Duration
	timer   *time.Timer
	buf     []byte
	lines   chan []byte // to run, which writes them to w
	done    chan error  // from run, one per line
	stuck   bool        // a line is still being written after its timeout
	// late is that line, so that the retry of its record, should the write
	// go through after all, is not written again.
	late   []byte
	closed bool
}

var errWriterStuck = errors.New("write audit record: the previous write has not returned (is the reader still reading?)")

func (d *writerDevice) Write(rec *Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("write audit record: closed")
	}
	var written []byte // the line of a write that timed out, then went through
	if d.stuck {
		select {
		case err := <-d.done:
			if err == nil {
				written = d.late
			}
			d.stuck, d.late = false, nil
		default:
			return errWriterStuck
		}
	}
	// One Write call per line, so lines from concurrent writers to a shared
	// stdout do not interleave mid-record.
	d.buf = append(rec.appendJSON(d.buf[:0]), '\n')
	if written != nil && bytes.Equal(d.buf, written) {
		// The logger retrying the record whose write timed out: it was
		// recorded, if late.
		return nil
	}
	d.lines <- d.buf
	if d.timer == nil {
		d.timer = time.NewTimer(d.timeout)
	} else {
		d.timer.Reset(d.timeout)
	}
	select {
	case err := <-d.done:
		d.timer.Stop()
		if err != nil {
			return fmt.Errorf("write audit record: %w", err)
		}
		return nil
	case <-d.timer.C:
		// The line stays run's until its write returns.
		d.stuck, d.late, d.buf = true, d.buf, nil
		return fmt.Errorf("write audit record: no return after %v (is the reader still reading?)", d.timeout)
	}
}

func (d *writerDevice) run() {
	for line := range d.lines {
		_, err := d.w.Write(line)
		d.done <- err
	}
}

// Close returns at once, even while a write is stuck: that write's
// goroutine ends when the write returns.
func (d *writerDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.lines)
	}
	return nil
}

func (d *writerDevice) String() string { return "writer" }

var (
	_ Device = (*writerDevice)(nil)
	_ Device = (*FileDevice)(nil)
)
