package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// ReadRecords calls yield with every record of files, in order (oldest
// first, as [ChainFiles] gives them), until yield returns false. The last
// line of a file, if it has no newline, is skipped whether or not it parses
// (a crash or a write in progress leaves one; a record is written with its
// newline), and a warning naming it is written to warn (nil discards it).
// Any other line that is not a record is an error naming its file and line.
//
// ReadRecords does not check the hash chain; [ReadVerified] does.
func ReadRecords(files []string, warn io.Writer, yield func(Record) bool) error {
	if warn == nil {
		warn = io.Discard
	}
	for _, name := range files {
		stop, err := readRecordFile(name, warn, yield)
		if err != nil || stop {
			return err
		}
	}
	return nil
}

// ReadVerified is [ReadRecords] that checks the hash chain as it reads,
// as [Verify] does, in the same pass: it yields only records that checked
// out, and stops at the first broken one with a *[ChainError], so a caller
// must discard what it built from the records when it gets one. As with
// ReadRecords, an incomplete last line of the last file (a write in
// progress, or a crash) is skipped with a warning to warn rather than an
// error; the warnings of Verify (torn lines excused in rotated files) go
// to warn too.
func ReadVerified(files []string, warn io.Writer, yield func(Record) bool) (VerifyResult, error) {
	if warn == nil {
		warn = io.Discard
	}
	res, err := walkChain(nil, files, func(line []byte, name string, lineNo int) (bool, error) {
		var rec Record
		if jerr := json.Unmarshal(line, &rec); jerr != nil {
			return false, fmt.Errorf("%s:%d: not an audit record: %v", name, lineNo, jerr)
		}
		return yield(rec), nil
	})
	var broken *ChainError
	if errors.As(err, &broken) && broken.Kind == BreakTorn && broken.File == files[len(files)-1] {
		fmt.Fprintf(warn, "warning: %s:%d: skipped an incomplete last line\n", broken.File, broken.Line)
		err = nil
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(warn, "warning:", w)
	}
	return res, err
}

// readRecordFile yields the records of one file and reports whether yield
// asked to stop.
func readRecordFile(name string, warn io.Writer, yield func(Record) bool) (stop bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	r := newLineReader(f)
	for lineNo := 1; ; lineNo++ {
		line, complete, err := r.next()
		if err != nil {
			return false, fmt.Errorf("read %s: %w", name, err)
		}
		if line == nil {
			return false, nil
		}
		// A record is written with its newline, so a line without one was
		// never acknowledged, even if it parses. Verify excuses such a
		// line in a rotated file; yielding it would let anyone who can
		// append to that file add a record.
		if !complete {
			fmt.Fprintf(warn, "warning: %s:%d: skipped an incomplete last line\n", name, lineNo)
			return false, nil
		}
		// Unmarshal copies what it keeps (Args included), so the line's
		// buffer may be reused.
		var rec Record
		if jerr := json.Unmarshal(line, &rec); jerr != nil {
			return false, fmt.Errorf("%s:%d: not an audit record: %v", name, lineNo, jerr)
		}
		if !yield(rec) {
			return true, nil
		}
	}
}

// Query selects audit records; zero fields match everything.
type Query struct {
	// From and To are inclusive bounds on Record.Time; a zero bound is open.
	From, To time.Time
	// Agent and Role match Record.Agent and Record.Role exactly.
	Agent, Role string
	// Tool matches "server__tool" (Record.Server+"__"+Record.Tool) exactly,
	// or, when it holds no "__", the bare Record.Tool.
	Tool string
	// Verdict matches Record.Verdict exactly ("allow", "deny",
	// "needs_approval"), except "shadow_deny", which matches the would-be
	// denials of shadow mode: records whose ShadowVerdict is "deny" or
	// "needs_approval", as the shadow counts count them.
	Verdict string
	// DecisionID matches Record.DecisionID exactly. One decision can have
	// several records (the authorization decision, the broker's outcome,
	// approval steps); a search returns all of them.
	DecisionID string
	// Limit is the most records a search returns; 0 or less means
	// [DefaultSearchLimit].
	Limit int
}

// DefaultSearchLimit is the number of records [Search] returns at most
// when Query.Limit is not set.
const DefaultSearchLimit = 100

// verdictShadowDeny is the Query.Verdict that selects shadow denials.
const verdictShadowDeny = "shadow_deny"

// Match reports whether r satisfies every set field of q. Limit plays no
// part.
func (q Query) Match(r *Record) bool {
	switch {
	case !q.From.IsZero() && r.Time.Before(q.From),
		!q.To.IsZero() && r.Time.After(q.To),
		q.Agent != "" && r.Agent != q.Agent,
		q.Role != "" && r.Role != q.Role,
		q.DecisionID != "" && r.DecisionID != q.DecisionID,
		q.Tool != "" && !matchTool(q.Tool, r),
		q.Verdict != "" && !matchVerdict(q.Verdict, r):
		return false
	}
	return true
}

func matchTool(tool string, r *Record) bool {
	if !strings.Contains(tool, "__") {
		return r.Tool == tool
	}
	// tool == r.Server + "__" + r.Tool, without building the string.
	n := len(r.Server)
	return len(tool) == n+2+len(r.Tool) && tool[:n] == r.Server && tool[n:n+2] == "__" && tool[n+2:] == r.Tool
}

func matchVerdict(verdict string, r *Record) bool {
	if verdict == verdictShadowDeny {
		return r.ShadowVerdict == "deny" || r.ShadowVerdict == "needs_approval"
	}
	return r.Verdict == verdict
}

// rotationSlack is how long before q.From a rotated file must have been
// rotated for [Search] to skip it unread. A file is rotated after its last
// record is written, and records are stamped before they are written, so
// with one clock no record of it is later than its rotation time. The slack
// keeps records found when that clock was stepped back, or when the
// records' times run somewhat ahead of the clock that named the file.
const rotationSlack = time.Hour

// searchAttempts bounds how often [Search] reads the log again because it
// was rotated during the read.
const searchAttempts = 3

// Search returns the last written records of the audit log at path (its
// rotated files included, see [ChainFiles]) that match q, newest first, at
// most q.Limit of them, and whether older matches were left out because of
// that limit. Search reads the whole log, except rotated files that were
// rotated well before q.From, but holds no more than the limit in memory.
//
// A log that does not exist has no records. An incomplete last line of a
// file (a crash or a write in progress) is skipped, even if it parses; any
// other line that is not a record is an error naming its file and line. The
// log may be written and rotated while Search reads it: if it was rotated
// meanwhile, Search reads it again, a few times at most.
func Search(path string, q Query) (recs []Record, more bool, err error) {
	if q.Limit <= 0 {
		q.Limit = DefaultSearchLimit
	}
	for attempt := 1; ; attempt++ {
		var files []string
		if files, err = ChainFiles(path); err != nil {
			return nil, false, fmt.Errorf("audit search: %w", err)
		}
		if searchListed != nil {
			searchListed()
		}
		recs, more, err = search(path, files, q)
		if attempt == searchAttempts {
			break
		}
		// A rotation, or the removal of an old file, changes the list.
		// It may have hidden records (the current file was renamed before
		// it was opened) or failed the read (a file vanished).
		if now, lerr := ChainFiles(path); lerr == nil && slices.Equal(now, files) {
			break
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("audit search: %w", err)
	}
	return recs, more, nil
}

// searchListed, when a test sets it, runs after [Search] lists the files
// it is about to read, to rotate the log under it.
var searchListed func()

// search reads files, the log at path, keeping the last q.Limit matches in
// a ring, and returns them newest first.
func search(path string, files []string, q Query) ([]Record, bool, error) {
	files = files[skippable(path, files, q.From):]
	var ring []Record
	next, matched := 0, 0 // next is where the oldest kept match is once the ring is full
	err := ReadRecords(files, nil, func(r Record) bool {
		if !q.Match(&r) {
			return true
		}
		matched++
		if len(ring) < q.Limit {
			ring = append(ring, r)
			return true
		}
		ring[next] = r
		next = (next + 1) % len(ring)
		return true
	})
	if err != nil {
		return nil, false, err
	}
	n := len(ring)
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = ring[((next-1-i)%n+n)%n]
	}
	return recs, matched > n, nil
}

// skippable returns how many of the leading files of the log at path are
// rotated files that cannot hold a record at or after from: those rotated,
// by the time in their name, more than rotationSlack before it.
func skippable(path string, files []string, from time.Time) int {
	if from.IsZero() {
		return 0
	}
	n := 0
	for _, name := range files {
		rotated, ok := rotatedAt(path, name)
		if !ok || !rotated.Add(rotationSlack).Before(from) {
			break
		}
		n++
	}
	return n
}
