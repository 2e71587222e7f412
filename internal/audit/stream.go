package audit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Log is an audit log as the console reads it: searched newest first, or
// read whole, oldest first, for replay.
type Log interface {
	// Search returns the latest records that match q, newest first, at
	// most q.Limit of them, and whether older matches were left out.
	Search(ctx context.Context, q Query) (recs []Record, more bool, err error)
	// Records calls yield with every record, oldest first, until yield
	// returns false. It stops with ctx's error when ctx ends first.
	Records(ctx context.Context, yield func(Record) bool) error
}

// FileLog is the audit log a file device writes at a path, its rotated
// files included: one replica's decisions.
type FileLog string

// Search implements Log; see [Search].
func (f FileLog) Search(_ context.Context, q Query) ([]Record, bool, error) {
	return Search(string(f), q)
}

// Records implements Log; see [ReadVerified]: a file whose hash chain is
// broken is an error, so that what is built from its records is not
// taken for the gateway's decisions.
func (f FileLog) Records(ctx context.Context, yield func(Record) bool) error {
	files, err := ChainFiles(string(f))
	if err != nil {
		return err
	}
	var ended error
	_, err = ReadVerified(files, nil, func(rec Record) bool {
		if ended = ctx.Err(); ended != nil {
			return false
		}
		return yield(rec)
	})
	return cmp.Or(err, ended)
}

// StreamArgsMax bounds the arguments of a record's copy in the stream, in
// bytes: an agent's arguments may be as long as a request body, and the
// stream is capped by its count of records, in the Redis every replica
// needs. Longer ones are left out, and the copy says how long they were
// ([Record.ArgsCut]); the file keeps them, and its seq and hash stay
// those of the record as the file holds it.
const StreamArgsMax = 16 << 10

// Stream is the audit records of every replica of a gateway in one Redis
// stream. Each replica ships the records of its own file there
// ([Stream.Ship]), so that the console searches and replays the decisions
// of all of them, whichever serves it.
//
// The files stay the record of authority, with their hash chains: the
// stream holds the latest records only (about MaxLen of them, trimmed by
// Redis), each as the line its file holds, and gets them a moment after the
// file does. A replica that cannot reach Redis keeps deciding and
// recording to its file, and ships what it missed when Redis is back.
//
// Layout, under the key:
//
//	<key>           stream; each entry has the fields replica and record
//	                (the line of the replica's file, its arguments left
//	                out when over StreamArgsMax)
//	<key>:shipped   hash: replica -> seq and hash (SEQ:HASH, as an Anchor)
//	                of the last record it shipped, written by the script
//	                that adds the entries
type Stream struct {
	client  redis.UniversalClient
	key     string
	maxLen  int64
	replica string
	poll    time.Duration
	log     *slog.Logger
	tail    func(ctx context.Context, path string, opts *TailOptions, emit func([]byte) error) error // Tail; tests replace it
}

// DefaultStreamKey and DefaultStreamMaxLen are a Stream's defaults. The
// braces are a Redis Cluster hash tag: the stream and its positions share
// one slot, which the shipping script needs.
const (
	DefaultStreamKey    = "amg:{audit}:records"
	DefaultStreamMaxLen = 100_000
)

// StreamOptions tune a Stream; nil means the defaults.
type StreamOptions struct {
	// Key is the stream's key; "" means DefaultStreamKey.
	Key string
	// MaxLen is about how many records the stream keeps; 0 means
	// DefaultStreamMaxLen.
	MaxLen int64
	// Replica names the replica whose file Ship ships. Each replica needs
	// its own, the same across its restarts; only Ship needs one.
	Replica string
	// Poll is how often Ship looks for new records; 0 means 250 ms.
	Poll   time.Duration
	Logger *slog.Logger
}

// NewStream returns the stream in client, which may be a single server, a
// failover or a cluster client.
func NewStream(client redis.UniversalClient, opts *StreamOptions) *Stream {
	s := &Stream{client: client, key: DefaultStreamKey, maxLen: DefaultStreamMaxLen, poll: 250 * time.Millisecond,
		log: slog.New(slog.DiscardHandler), tail: Tail}
	if opts != nil {
		if opts.Key != "" {
			s.key = opts.Key
		}
		if opts.MaxLen > 0 {
			s.maxLen = opts.MaxLen
		}
		if opts.Poll > 0 {
			s.poll = opts.Poll
		}
		if opts.Logger != nil {
			s.log = opts.Logger
		}
		s.replica = opts.Replica
	}
	return s
}

func (s *Stream) shippedKey() string { return s.key + ":shipped" }

// streamPage is how many entries one read of the stream fetches.
const streamPage = 1000

// Search implements Log over the stream, newest shipped first: records of
// different replicas stand in the order they reached Redis.
func (s *Stream) Search(ctx context.Context, q Query) ([]Record, bool, error) {
	if q.Limit <= 0 {
		q.Limit = DefaultSearchLimit
	}
	var out []Record
	more := false
	err := s.newestFirst(ctx, func(m redis.XMessage) (bool, error) {
		rec, err := entryRecord(m)
		if err != nil {
			return false, err
		}
		if !q.Match(&rec) {
			return true, nil
		}
		if len(out) == q.Limit {
			more = true
			return false, nil
		}
		out = append(out, rec)
		return true, nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("audit search: %w", err)
	}
	return out, more, nil
}

// newestFirst calls each with the stream's entries, newest first, a page
// at a time, until each returns false or an error, which it returns.
func (s *Stream) newestFirst(ctx context.Context, each func(redis.XMessage) (bool, error)) error {
	for end := "+"; ; {
		page, err := s.client.XRevRangeN(ctx, s.key, end, "-", streamPage).Result()
		if err != nil {
			return err
		}
		for _, m := range page {
			if more, err := each(m); !more || err != nil {
				return err
			}
		}
		if len(page) < streamPage {
			return nil
		}
		end = "(" + page[len(page)-1].ID
	}
}

// Records implements Log over the stream, oldest shipped first.
func (s *Stream) Records(ctx context.Context, yield func(Record) bool) error {
	for start := "-"; ; {
		page, err := s.client.XRangeN(ctx, s.key, start, "+", streamPage).Result()
		if err != nil {
			return fmt.Errorf("read audit stream: %w", err)
		}
		for _, m := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			rec, err := entryRecord(m)
			if err != nil {
				return fmt.Errorf("read audit stream: %w", err)
			}
			if !yield(rec) {
				return nil
			}
		}
		if len(page) < streamPage {
			return nil
		}
		start = "(" + page[len(page)-1].ID
	}
}

// Tail calls emit with the last n records of the stream, oldest first,
// each as the line its replica's file holds and valid only during the
// call; with follow, it then calls emit with each record as it arrives,
// until ctx ends, when it returns nil. It returns the first error from
// emit or from Redis.
func (s *Stream) Tail(ctx context.Context, n int, follow bool, emit func(line []byte) error) error {
	last := "0-0" // the id after which follow reads: the stream's start when it is empty
	backlog, err := s.client.XRevRangeN(ctx, s.key, "+", "-", int64(max(n, 1))).Result()
	if err != nil {
		return fmt.Errorf("tail audit stream: %w", err)
	}
	if len(backlog) > 0 {
		last = backlog[0].ID
	}
	backlog = backlog[:min(n, len(backlog))]
	for i := len(backlog) - 1; i >= 0; i-- {
		if err := emitEntry(backlog[i], emit); err != nil {
			return err
		}
	}
	for follow {
		// A bounded block, so that an ended ctx is noticed within it.
		streams, err := s.client.XRead(ctx, &redis.XReadArgs{Streams: []string{s.key, last}, Count: streamPage, Block: time.Second}).Result()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == redis.Nil:
			continue
		case err != nil:
			return fmt.Errorf("tail audit stream: %w", err)
		}
		for _, m := range streams[0].Messages {
			if err := emitEntry(m, emit); err != nil {
				return err
			}
			last = m.ID
		}
	}
	return nil
}

// Head returns the last record replica shipped to the stream, as an
// Anchor for its file's chain: its seq and hash, from the positions the
// replicas ship to, or a later record of the replica's the stream holds.
// The stream is outside the replica's files, so their tail cannot be cut or
// rewritten without the anchor telling. A stream holding two different
// records of the replica under one seq is an error: its file was rewritten
// after the first was shipped.
func (s *Stream) Head(ctx context.Context, replica string) (Anchor, error) {
	pos, err := s.position(ctx, replica)
	if err != nil {
		return Anchor{}, fmt.Errorf("audit stream head: %w", err)
	}
	if pos.Seq == 0 {
		return Anchor{}, fmt.Errorf("replica %q has shipped no audit records to %s", replica, s.key)
	}
	head := pos
	seen := map[uint64]string{} // seq -> hash of every record of the replica the stream holds
	if pos.Hash != "" {
		seen[pos.Seq] = pos.Hash
	}
	err = s.newestFirst(ctx, func(m redis.XMessage) (bool, error) {
		if r, _ := m.Values["replica"].(string); r != replica {
			return true, nil
		}
		l, err := entryLink(m)
		if err != nil {
			return false, fmt.Errorf("entry %s of replica %q: %w", m.ID, replica, err)
		}
		if h, ok := seen[l.seq]; ok && h != l.hash {
			return false, fmt.Errorf("replica %q shipped two different records with seq %d (hashes %s and %s): "+
				"its audit file was rewritten after the first was shipped", replica, l.seq, h, l.hash)
		}
		seen[l.seq] = l.hash
		if l.seq >= head.Seq {
			head = Anchor{Seq: l.seq, Hash: l.hash}
		}
		return true, nil
	})
	if err != nil {
		return Anchor{}, fmt.Errorf("audit stream head: %w", err)
	}
	return head, nil
}

// position is the last record the replica shipped, as the stream's
// positions hold it: zero if it shipped none, without a hash if it was
// shipped by a version that wrote the seq alone.
func (s *Stream) position(ctx context.Context, replica string) (Anchor, error) {
	v, err := s.client.HGet(ctx, s.shippedKey(), replica).Result()
	if err == redis.Nil {
		return Anchor{}, nil
	}
	if err != nil {
		return Anchor{}, err
	}
	a, err := ParseAnchor(v)
	if err != nil {
		return Anchor{}, fmt.Errorf("%s: position of replica %q: %w", s.shippedKey(), replica, err)
	}
	return a, nil
}

// entryLink is the chain fields of the record of a stream entry, checked
// as its file's line; those of a copy whose arguments were left out are
// the file's, and cannot be checked.
func entryLink(m redis.XMessage) (link, error) {
	line, err := entryLine(m)
	if err != nil {
		return link{}, err
	}
	l, kind, detail := checkLine([]byte(line))
	if kind == BreakHash {
		var cut struct {
			ArgsCut int    `json:"args_cut"`
			Seq     uint64 `json:"seq"`
			Prev    string `json:"prev"`
			Hash    string `json:"hash"`
		}
		if json.Unmarshal([]byte(line), &cut) == nil && cut.ArgsCut > 0 {
			return link{seq: cut.Seq, prev: cut.Prev, hash: cut.Hash}, nil
		}
	}
	if kind != "" {
		return link{}, fmt.Errorf("%s: %s", kind, detail)
	}
	return l, nil
}

// streamLine is the copy of a file's line the stream holds: the line,
// without its arguments when they are over StreamArgsMax.
func streamLine(line []byte) string {
	if len(line) <= StreamArgsMax {
		return string(line)
	}
	var rec Record
	if err := json.Unmarshal(line, &rec); err != nil || len(rec.Args) <= StreamArgsMax {
		return string(line)
	}
	rec.ArgsCut, rec.Args = len(rec.Args), nil
	return string(rec.appendJSON(nil))
}

// emitEntry emits the record of a stream entry as its replica's file
// holds it, with "replica" first: replicas number and chain their records
// each on its own, so a line names the chain it is in.
func emitEntry(m redis.XMessage, emit func(line []byte) error) error {
	line, err := entryLine(m)
	if err != nil {
		return fmt.Errorf("tail audit stream: %w", err)
	}
	replica, _ := m.Values["replica"].(string)
	if replica == "" || !strings.HasPrefix(line, `{"`) {
		return emit([]byte(line))
	}
	name, _ := json.Marshal(replica)
	return emit([]byte(`{"replica":` + string(name) + "," + line[1:]))
}

// entryLine is the record of a stream entry, as its replica's file holds it.
func entryLine(m redis.XMessage) (string, error) {
	line, ok := m.Values["record"].(string)
	if !ok {
		return "", fmt.Errorf("entry %s: no record field", m.ID)
	}
	return line, nil
}

// entryRecord decodes the record of a stream entry.
func entryRecord(m redis.XMessage) (Record, error) {
	var rec Record
	line, err := entryLine(m)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		return rec, fmt.Errorf("entry %s: not an audit record: %v", m.ID, err)
	}
	rec.Replica, _ = m.Values["replica"].(string)
	return rec, nil
}

// shipLine is a line of the file to ship, with its seq and hash.
type shipLine struct {
	seq  uint64
	hash string
	line string
}

// shipBatch bounds how many records one call of shipScript ships.
const shipBatch = 500

// Ship appends to the stream every record of the audit log at path (the
// file a FileDevice writes) that this replica has not shipped before, then
// each record as it is appended, until ctx ends, when it returns nil.
//
// Where it got to is written with the records, by the script that ships
// them only if they come after it, so a restart, or a batch sent again
// after a late reply, resumes after the last record shipped, without loss
// or repetition; of a backlog longer than the stream keeps, only the last
// MaxLen records are shipped. The backlog is read forward, a batch at a
// time. While Redis fails, Ship retries with backoff and the file keeps the
// records.
//
// A file that no longer holds the last record shipped, as it was shipped
// (its end cut, or rewritten and chained anew), is not shipped: Ship logs
// an error and waits for ctx to end, leaving the stream's anchor where it
// was for `amg audit verify --redis` to find the difference. A new data
// directory ships under a new replica name, from seq 1.
func (s *Stream) Ship(ctx context.Context, path string) error {
	if s.replica == "" {
		return fmt.Errorf("audit stream: no replica name to ship %s under", path)
	}
	wait := newBackoff()
	for ctx.Err() == nil {
		err := s.shipFrom(ctx, path)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errNotShipped) {
			s.log.Error("not shipping audit records to Redis: the audit file differs from what this replica shipped; "+
				"check it with amg audit verify --redis, and start the replica with a new data directory (a new replica.id) to ship again",
				"file", path, "replica", s.replica, "err", err)
			<-ctx.Done()
			break
		}
		s.log.Error("shipping audit records to Redis failed; retrying", "file", path, "err", err)
		wait.sleep(ctx)
	}
	return nil
}

// shipFrom ships what the last run left, reading the files forward, then
// follows the file; it returns when ctx ends or the log cannot be read.
func (s *Stream) shipFrom(ctx context.Context, path string) error {
	var pos Anchor
	for wait := newBackoff(); ; wait.sleep(ctx) {
		var err error
		if pos, err = s.position(ctx, s.replica); err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("cannot read the audit stream's position; retrying", "err", err)
	}
	if err := s.checkShipped(ctx, path, pos); err != nil {
		return err
	}
	shipped := pos.Seq
	tip, err := lastSeq(path)
	if err != nil {
		return err
	}
	// Of a backlog longer than the stream keeps, only its end would stay.
	if tip > shipped+uint64(s.maxLen) {
		shipped = tip - uint64(s.maxLen)
	}
	for {
		if shipped, err = s.catchUp(ctx, path, shipped); err != nil {
			return err
		}
		if shipped, err = s.follow(ctx, path, shipped); !errors.Is(err, errSeqGap) {
			return err
		}
	}
}

// errNotShipped is a file that no longer holds the last record shipped
// from it as it was shipped.
var errNotShipped = errors.New("audit stream: the file differs from what was shipped")

// checkShipped checks that the log at path still holds pos, the last
// record shipped from it: a file cut or rewritten since would otherwise
// ship its new end over the old, and move the anchor that tells.
func (s *Stream) checkShipped(ctx context.Context, path string, pos Anchor) error {
	if pos.Seq == 0 {
		return nil
	}
	if pos.Hash == "" {
		// A position written with the seq alone: the record in the
		// stream, if it is still there, has the hash.
		if err := s.fillHash(ctx, &pos); err != nil {
			return err
		}
	}
	l, found, err := recordAt(path, pos.Seq)
	switch {
	case err != nil:
		return err
	case !found:
		return fmt.Errorf("%w: the last record shipped has seq %d, which %s no longer holds: records were cut from its end", errNotShipped, pos.Seq, path)
	case l.seq == 0:
		s.log.Warn("the audit file begins after the last record shipped, which it cannot be checked against", "file", path, "shipped", pos.Seq)
	case pos.Hash != "" && l.hash != pos.Hash:
		return fmt.Errorf("%w: seq %d of %s has hash %s, but the record shipped has %s: it or a record before it was rewritten",
			errNotShipped, pos.Seq, path, l.hash, pos.Hash)
	}
	return nil
}

// fillHash sets a.Hash to that of the replica's record a.Seq in the
// stream, if it still holds it.
func (s *Stream) fillHash(ctx context.Context, a *Anchor) error {
	return s.newestFirst(ctx, func(m redis.XMessage) (bool, error) {
		if r, _ := m.Values["replica"].(string); r != s.replica {
			return true, nil
		}
		if l, err := entryLink(m); err == nil && l.seq == a.Seq {
			a.Hash = l.hash
			return false, nil
		}
		return true, nil
	})
}

// recordAt finds record seq in the log at path. found is false when the
// log ends before it; a zero link with found set means the log begins
// after it (its older files were removed).
func recordAt(path string, seq uint64) (l link, found bool, err error) {
	files, err := ChainFiles(path)
	if err != nil {
		return link{}, false, err
	}
	for i, name := range files {
		if tip, _, err := lastRecord(name); err != nil || tip.seq < seq {
			if err != nil {
				return link{}, false, err
			}
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			return link{}, false, err
		}
		defer f.Close()
		r := newLineReader(f)
		for first := i == 0; ; first = false {
			line, complete, err := r.next()
			if err != nil {
				return link{}, false, fmt.Errorf("read %s: %w", name, err)
			}
			if !complete {
				return link{}, false, nil
			}
			n, ok := lineSeq(line)
			switch {
			case !ok:
				return link{}, false, fmt.Errorf("a line of %s has no seq", name)
			case n > seq && first:
				return link{}, true, nil // the log begins after it
			case n > seq:
				return link{}, false, nil // a gap where it was
			case n < seq:
				continue
			}
			l, kind, detail := checkLine(line)
			if kind != "" {
				return link{}, false, fmt.Errorf("%s: seq %d: %s: %s", name, seq, kind, detail)
			}
			return l, true, nil
		}
	}
	return link{}, false, nil
}

// errSeqGap is a record that does not follow the last one shipped: the
// records between went by unseen (the file rotated twice between two
// looks), and the files have them.
var errSeqGap = errors.New("audit stream: records missed while following")

// catchUp ships the complete records of the log at path after seq after,
// file by file, and returns the seq of the last one shipped.
func (s *Stream) catchUp(ctx context.Context, path string, after uint64) (uint64, error) {
	files, err := ChainFiles(path)
	if err != nil {
		return after, err
	}
	for _, name := range files {
		if after, err = s.catchUpFile(ctx, name, after); err != nil {
			return after, err
		}
	}
	return after, nil
}

func (s *Stream) catchUpFile(ctx context.Context, name string, after uint64) (uint64, error) {
	if last, _, err := lastRecord(name); err != nil || last.seq <= after {
		return after, err
	}
	f, err := os.Open(name)
	if err != nil {
		return after, err
	}
	defer f.Close()
	r := newLineReader(f)
	batch := make([]shipLine, 0, shipBatch)
	for {
		line, complete, err := r.next()
		if err != nil {
			return after, fmt.Errorf("read %s: %w", name, err)
		}
		if !complete { // the end, or a record being written: follow has it
			break
		}
		seq, ok := lineSeq(line)
		if !ok {
			return after, fmt.Errorf("a line of %s has no seq", name)
		}
		if seq <= after {
			continue
		}
		if batch = append(batch, shipLine{seq: seq, hash: recordedHash(line), line: streamLine(line)}); len(batch) == shipBatch {
			if err := s.shipRetrying(ctx, batch); err != nil {
				return after, err
			}
			after, batch = seq, batch[:0]
		}
	}
	if len(batch) > 0 {
		if err := s.shipRetrying(ctx, batch); err != nil {
			return after, err
		}
		after = batch[len(batch)-1].seq
	}
	return after, nil
}

// followSlack is how many records before the file's end follow looks at
// again, for those appended between the catch-up's reading and follow's
// opening of the file; it skips those already shipped.
const followSlack = 1000

// follow ships each record appended to the log at path after seq after,
// in order, until ctx ends, the file cannot be followed, or a record does
// not follow the one before it (errSeqGap); it returns the seq of the
// last record shipped.
func (s *Stream) follow(ctx context.Context, path string, after uint64) (uint64, error) {
	lines := make(chan shipLine, shipBatch)
	tctx, stop := context.WithCancel(ctx)
	defer stop()
	tailed := make(chan error, 1)
	go func() {
		defer close(lines)
		next := after + 1
		tailed <- s.tail(tctx, path, &TailOptions{Lines: followSlack, Follow: true, Poll: s.poll}, func(line []byte) error {
			seq, ok := lineSeq(line)
			switch {
			case !ok:
				return fmt.Errorf("a line of %s has no seq", path)
			case seq < next:
				return nil // shipped before
			case seq > next:
				return errSeqGap
			}
			next++
			select {
			case lines <- shipLine{seq: seq, hash: recordedHash(line), line: streamLine(line)}:
				return nil
			case <-tctx.Done():
				return tctx.Err()
			}
		})
	}()
	batch := make([]shipLine, 0, shipBatch)
	for l := range lines {
		batch = append(batch[:0], l)
	more:
		for len(batch) < shipBatch {
			select {
			case l, ok := <-lines:
				if !ok {
					break more
				}
				batch = append(batch, l)
			default:
				break more
			}
		}
		if err := s.shipRetrying(ctx, batch); err != nil {
			return after, err
		}
		after = batch[len(batch)-1].seq
	}
	return after, <-tailed
}

// shipRetrying ships batch, retrying with backoff until it is shipped or
// ctx ends.
func (s *Stream) shipRetrying(ctx context.Context, batch []shipLine) error {
	for wait := newBackoff(); ; wait.sleep(ctx) {
		err := s.ship(ctx, batch)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("cannot ship audit records to Redis; retrying", "records", len(batch), "err", err)
	}
}

// shipScript appends to the stream (KEYS[1]) the records of a batch that
// come after the replica's position (KEYS[2], field ARGV[1]), and moves
// the position to the last, at once: a batch sent again, because the
// reply to one that ran came too late, adds nothing. ARGV[2] is MaxLen;
// then come seq, hash and line of each record.
var shipScript = redis.NewScript(`
local pos = redis.call('HGET', KEYS[2], ARGV[1])
local shipped = pos and tonumber(string.match(pos, '^%d+')) or 0
local last
for i = 3, #ARGV, 3 do
	if tonumber(ARGV[i]) > shipped then
		redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'replica', ARGV[1], 'record', ARGV[i+2])
		last = i
	end
end
if last then
	redis.call('HSET', KEYS[2], ARGV[1], ARGV[last] .. ':' .. ARGV[last+1])
end
return 0
`)

// ship appends the records of batch not shipped yet to the stream and
// records how far it got, in one script.
func (s *Stream) ship(ctx context.Context, batch []shipLine) error {
	args := make([]any, 0, 2+3*len(batch))
	args = append(args, s.replica, s.maxLen)
	for _, l := range batch {
		args = append(args, l.seq, l.hash, l.line)
	}
	return shipScript.Run(ctx, s.client, []string{s.key, s.shippedKey()}, args...).Err()
}

// seqKey starts the seq of a file device's line: the chain's fields come
// last, so its last occurrence is the record's own, whatever the
// arguments before it hold.
var seqKey = []byte(`,"seq":`)

// lineSeq is the seq of a line a file device wrote.
func lineSeq(line []byte) (uint64, bool) {
	i := bytes.LastIndex(line, seqKey)
	if i < 0 {
		return 0, false
	}
	digits := line[i+len(seqKey):]
	if j := bytes.IndexByte(digits, ','); j >= 0 {
		digits = digits[:j]
	}
	seq, err := strconv.ParseUint(string(digits), 10, 64)
	return seq, err == nil && seq > 0
}

// lastSeq is the seq of the last complete record of the audit log at
// path; 0 if it has none.
func lastSeq(path string) (uint64, error) {
	files, err := ChainFiles(path)
	if err != nil {
		return 0, err
	}
	for i := len(files) - 1; i >= 0; i-- {
		tip, _, err := lastRecord(files[i])
		if err != nil {
			return 0, err
		}
		if tip.seq > 0 {
			return tip.seq, nil
		}
	}
	return 0, nil
}

// backoff doubles a wait from 50 ms to 5 s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 50 * time.Millisecond} }

func (b *backoff) sleep(ctx context.Context) {
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	b.d = min(2*b.d, 5*time.Second)
}
