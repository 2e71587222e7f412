package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	hashKey = `,"hash":"`
	// hashSuffixLen is the length of `,"hash":"<64 hex>"}` ending every line.
	hashSuffixLen = len(hashKey) + 2*sha256.Size + len(`"}`)
	// rotatedLayout names rotated files after the time of rotation, in a
	// fixed-width form so that sorting names sorts them oldest first, shell
	// globs included.
	rotatedLayout = "20060102T150405.000000000Z"
)

// zeroHash is the prev of seq 1.
var zeroHash = strings.Repeat("0", 2*sha256.Size)

// BreakKind says how a chain is broken.
type BreakKind string

// The ways a chain can break, in the order a line is checked.
const (
	BreakTorn   BreakKind = "torn line"     // the file does not end with a newline
	BreakJSON   BreakKind = "bad JSON"      // the line is not a JSON object
	BreakRecord BreakKind = "bad record"    // chain fields missing or malformed
	BreakHash   BreakKind = "hash mismatch" // the line was altered after it was written
	BreakSeq    BreakKind = "seq gap"       // records removed, duplicated or reordered
	BreakPrev   BreakKind = "prev mismatch" // the record does not link to the one before it
	// The chain disagrees with an Anchor: a record was rewritten and the
	// chain recomputed after it, or records were cut from its end.
	BreakAnchor BreakKind = "anchor mismatch"
)

// Anchor is a record of the chain as it was seen at some time and kept
// outside the audit files: the gateway's log (every rotation and close
// logs last_seq and last_hash), the Redis stream the replicas ship their
// records to, or an operator's note of `amg audit verify`. A chain
// checks out on its own even when records were cut from its end, or
// its tail rewritten and chained anew; with an anchor it must still hold
// record Seq, with hash Hash.
type Anchor struct {
	Seq  uint64
	Hash string // "" checks only that the chain reaches Seq
}

func (a Anchor) String() string {
	if a.Hash == "" {
		return strconv.FormatUint(a.Seq, 10)
	}
	return strconv.FormatUint(a.Seq, 10) + ":" + a.Hash
}

// ParseAnchor parses an anchor written SEQ:HASH, or SEQ alone.
func ParseAnchor(s string) (Anchor, error) {
	seq, hash, _ := strings.Cut(s, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil || n == 0 {
		return Anchor{}, fmt.Errorf("anchor %q: want SEQ:HASH, SEQ a record's seq (from 1)", s)
	}
	if hash != "" && !isHash(hash) {
		return Anchor{}, fmt.Errorf("anchor %q: the hash is not 64 lowercase hex digits", s)
	}
	return Anchor{Seq: n, Hash: hash}, nil
}

// ChainError locates the first broken record. Line is 1-based.
type ChainError struct {
	File   string
	Line   int
	Kind   BreakKind
	Detail string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Kind, e.Detail)
}

// link is what a checked line contributes to the chain.
type link struct {
	seq  uint64
	prev string
	hash string
}

// checkLine checks one line (without its newline) on its own: well-formed,
// carrying chain fields, and hashing to its hash.
func checkLine(line []byte) (link, BreakKind, string) {
	if len(line) == 0 {
		return link{}, BreakJSON, "empty line"
	}
	var f struct {
		Seq  *uint64 `json:"seq"`
		Prev *string `json:"prev"`
		Hash *string `json:"hash"`
	}
	if err := json.Unmarshal(line, &f); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return link{}, BreakRecord, err.Error()
		}
		return link{}, BreakJSON, err.Error()
	}
	switch {
	case f.Seq == nil || *f.Seq == 0:
		return link{}, BreakRecord, `no "seq" (not written by the audit file device?)`
	case f.Prev == nil || !isHash(*f.Prev):
		return link{}, BreakRecord, `"prev" is missing or not 64 lowercase hex digits`
	case f.Hash == nil:
		return link{}, BreakRecord, `no "hash"`
	}
	recorded := recordedHash(line)
	if recorded == "" {
		return link{}, BreakRecord, `"hash" is not the last key or not 64 lowercase hex digits`
	}
	if computed := lineHash(line[:len(line)-hashSuffixLen]); computed != recorded {
		return link{}, BreakHash, fmt.Sprintf("hash is %s, but the line hashes to %s (the record was altered)", recorded, computed)
	}
	return link{seq: *f.Seq, prev: *f.Prev, hash: recorded}, "", ""
}

// recordedHash is the hash a line ends with, `,"hash":"<64 hex>"}`; ""
// if it does not end so.
func recordedHash(line []byte) string {
	n := len(line)
	if n < hashSuffixLen || string(line[n-hashSuffixLen:n-hashSuffixLen+len(hashKey)]) != hashKey || string(line[n-2:]) != `"}` {
		return ""
	}
	if h := string(line[n-2-2*sha256.Size : n-2]); isHash(h) {
		return h
	}
	return ""
}

// lineHash is the hash of a record whose line, before its hash suffix, is
// head: SHA-256 over head followed by "}".
func lineHash(head []byte) string {
	h := sha256.New()
	h.Write(head)
	h.Write([]byte{'}'})
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// VerifyResult summarises a chain that verified, or the part of it that
// verified before the first break.
type VerifyResult struct {
	Records int
	// FirstSeq and FirstPrev are where the files start: seq 1 and 64 zeros
	// for the beginning of the chain, later for files that continue an
	// older one (whose deletion Verify cannot see).
	FirstSeq  uint64
	FirstPrev string
	LastSeq   uint64
	LastHash  string
	// Anchored counts the anchors the chain was checked against.
	Anchored int
	// Warnings lists torn lines left by a crash at the end of a file after
	// which the device started a new file continuing from the last complete
	// record (or still empty), so that nothing was chained over them.
	Warnings []string
}

// Verify checks the hash chain running through files, given oldest first
// (see [ChainFiles]). It returns a *[ChainError] for the first broken
// record, any other error if a file cannot be read.
func Verify(files ...string) (VerifyResult, error) {
	return VerifyAnchored(nil, files...)
}

// VerifyAnchored is Verify that also checks the chain against anchors: a
// record with an anchor's seq must have its hash, and the chain must
// reach the latest anchor. Two anchors with different hashes for one seq
// cannot both hold, and are a break before any record is read. An anchor
// before the first record of files (whose older files were removed)
// cannot be checked, and is a warning.
func VerifyAnchored(anchors []Anchor, files ...string) (VerifyResult, error) {
	return walkChain(anchors, files, nil)
}

// walkChain checks the chain through files as [VerifyAnchored] says, and
// calls each, when not nil, with every line that checked out, in order,
// until it returns false or an error (which walkChain returns). The line
// is valid only until each returns.
func walkChain(anchors []Anchor, files []string, each func(line []byte, file string, lineNo int) (bool, error)) (VerifyResult, error) {
	var res VerifyResult
	want := map[uint64]string{}
	for _, a := range anchors {
		switch h, ok := want[a.Seq]; {
		case !ok || h == "":
			want[a.Seq] = a.Hash
		case a.Hash != "" && a.Hash != h:
			// The chain can match at most one of them: whichever it is,
			// the other was kept from a chain since rewritten, or the
			// chain was rewritten after it.
			return res, &ChainError{File: strings.Join(files, ", "), Kind: BreakAnchor, Detail: fmt.Sprintf(
				"anchors disagree on seq %d: one says %s, another %s: the chain or the record an anchor was taken from was rewritten", a.Seq, h, a.Hash)}
		}
	}
	var last struct {
		link
		file string
		line int
	}
	// torn is a torn end of an earlier file, excused if the next record
	// continues the chain or if no record follows it, but not when the
	// torn file is the last one (a write may be in progress there).
	var torn *ChainError
	for i, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return res, fmt.Errorf("verify audit chain: %w", err)
		}
		r := newLineReader(f)
		lineNo := 0
		for {
			line, complete, err := r.next()
			if err != nil {
				f.Close()
				return res, fmt.Errorf("verify audit chain: read %s: %w", name, err)
			}
			if line == nil {
				break
			}
			lineNo++
			if !complete {
				torn = &ChainError{File: name, Line: lineNo, Kind: BreakTorn,
					Detail: fmt.Sprintf("%d bytes without a newline at the end of the file (a crash mid-write, a truncation, or a write in progress)", len(line))}
				if i == len(files)-1 {
					f.Close()
					return res, torn
				}
				break
			}
			l, kind, detail := checkLine(line)
			if kind == "" {
				kind, detail = follows(l, last.link, res.Records == 0, last.file, last.line)
			}
			if kind != "" {
				f.Close()
				if torn != nil {
					return res, torn
				}
				return res, &ChainError{File: name, Line: lineNo, Kind: kind, Detail: detail}
			}
			if torn != nil {
				res.Warnings = append(res.Warnings, fmt.Sprintf("%s: skipped; the chain continues at %s:%d", torn, name, lineNo))
				torn = nil
			}
			if h, ok := want[l.seq]; ok {
				if h != "" && h != l.hash {
					f.Close()
					return res, &ChainError{File: name, Line: lineNo, Kind: BreakAnchor, Detail: fmt.Sprintf(
						"seq %d has hash %s, but an anchor says %s: this record or one before it was rewritten, and the chain recomputed", l.seq, l.hash, h)}
				}
				res.Anchored++
				delete(want, l.seq)
			}
			if res.Records == 0 {
				res.FirstSeq, res.FirstPrev = l.seq, l.prev
			}
			res.Records++
			res.LastSeq, res.LastHash = l.seq, l.hash
			last.link, last.file, last.line = l, name, lineNo
			if each != nil {
				if more, err := each(line, name, lineNo); err != nil || !more {
					f.Close()
					return res, err
				}
			}
		}
		f.Close()
	}
	if torn != nil {
		// Only empty files follow the torn one: the device set it aside at
		// a restart and has written nothing to the new file yet.
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s: skipped; the chain continues in %s, which holds no record yet", torn, files[len(files)-1]))
	}
	for _, seq := range slices.Sorted(maps.Keys(want)) {
		switch {
		case res.Records > 0 && seq < res.FirstSeq:
			res.Warnings = append(res.Warnings, fmt.Sprintf("anchor seq %d comes before these files, which begin at seq %d: not checked", seq, res.FirstSeq))
		case res.Records == 0:
			return res, &ChainError{File: strings.Join(files, ", "), Kind: BreakAnchor,
				Detail: fmt.Sprintf("no records, but an anchor names seq %d: records were removed", seq)}
		default:
			return res, &ChainError{File: last.file, Line: last.line, Kind: BreakAnchor,
				Detail: fmt.Sprintf("the chain ends at seq %d, but an anchor names seq %d: records were cut from its end", res.LastSeq, seq)}
		}
	}
	return res, nil
}

// follows checks that l comes right after prev. With first set there is no
// previous record: l may start the chain or continue one not given.
func follows(l, prev link, first bool, prevFile string, prevLine int) (BreakKind, string) {
	switch {
	case first && l.seq == 1 && l.prev != zeroHash:
		return BreakPrev, fmt.Sprintf("prev is %s, but seq 1 starts the chain and must have prev %s", l.prev, zeroHash)
	case first:
		return "", ""
	case l.seq != prev.seq+1:
		return BreakSeq, fmt.Sprintf("seq %d follows seq %d (%s:%d)", l.seq, prev.seq, prevFile, prevLine)
	case l.prev != prev.hash:
		return BreakPrev, fmt.Sprintf("prev is %s, but the previous record (%s:%d) has hash %s", l.prev, prevFile, prevLine, prev.hash)
	}
	return "", ""
}

// lineReader reads lines of any length, telling a torn last line apart.
type lineReader struct {
	r   io.Reader
	buf []byte
	off int  // start of unread data in buf
	eof bool // r is exhausted
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{r: r, buf: make([]byte, 0, 64<<10)}
}

// next returns the next line without its newline, whether it had one, and
// nil at the end. The line is valid until the next call.
func (lr *lineReader) next() (line []byte, complete bool, err error) {
	for {
		if i := bytes.IndexByte(lr.buf[lr.off:], '\n'); i >= 0 {
			line = lr.buf[lr.off : lr.off+i]
			lr.off += i + 1
			return line, true, nil
		}
		if lr.eof {
			if lr.off == len(lr.buf) {
				return nil, false, nil
			}
			line = lr.buf[lr.off:]
			lr.off = len(lr.buf)
			return line, false, nil
		}
		// Keep the partial line and read more after it.
		n := copy(lr.buf, lr.buf[lr.off:])
		lr.buf, lr.off = lr.buf[:n], 0
		if cap(lr.buf)-n < 4<<10 {
			lr.buf = slices.Grow(lr.buf, cap(lr.buf))
		}
		m, err := lr.r.Read(lr.buf[n:cap(lr.buf)])
		lr.buf = lr.buf[:n+m]
		if errors.Is(err, io.EOF) {
			lr.eof = true
		} else if err != nil {
			return nil, false, err
		}
	}
}

// rotatedName is what path is renamed to when it is rotated at t.
func rotatedName(path string, t time.Time) string {
	return path + "." + t.UTC().Format(rotatedLayout)
}

// ChainFiles returns the files of the audit log at path in chain order: its
// rotated files, oldest first, then path itself if it exists. This is what
// [Verify] wants to check a whole log.
func ChainFiles(path string) ([]string, error) {
	files, err := rotatedFiles(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err == nil {
		files = append(files, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return files, nil
}

// rotatedFiles lists path's rotated files, oldest first.
func rotatedFiles(path string) ([]string, error) {
	dir, _ := filepath.Split(path)
	entries, err := os.ReadDir(filepath.Clean(dir + "."))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list rotated audit files: %w", err)
	}
	var files []string
	for _, e := range entries {
		// rotatedAt checks the name: path's, a dot and a rotation time.
		if _, ok := rotatedAt(path, dir+e.Name()); ok && !e.IsDir() {
			files = append(files, dir+e.Name())
		}
	}
	slices.Sort(files)
	return files, nil
}

// rotatedAt is when the log at path was rotated into file, by the time in
// the file's name; ok is false for a file that is not one of its rotated
// files.
func rotatedAt(path, file string) (at time.Time, ok bool) {
	stamp, ok := strings.CutPrefix(file, path+".")
	if !ok {
		return time.Time{}, false
	}
	at, err := time.Parse(rotatedLayout, stamp)
	return at, err == nil
}

// completeEnd returns the offset just after the last newline among the
// first size bytes of r: the end of its last complete line, 0 if none.
func completeEnd(r io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, min(size, 64<<10))
	for pos := size; pos > 0; {
		lo := max(0, pos-int64(len(buf)))
		b := buf[:pos-lo]
		if n, err := r.ReadAt(b, lo); n < len(b) {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return lo + int64(i) + 1, nil
		}
		pos = lo
	}
	return 0, nil
}

// lastLines returns up to n lines, oldest first and without newlines, that
// end at end, which must be 0 or just after a newline.
func lastLines(r io.ReaderAt, end int64, n int) ([][]byte, error) {
	if n <= 0 || end == 0 {
		return nil, nil
	}
	buf := make([]byte, min(end, 64<<10))
	start, count := int64(0), 0
scan:
	for pos := end - 1; pos > 0; { // end-1 is the newline of the last line
		lo := max(0, pos-int64(len(buf)))
		b := buf[:pos-lo]
		if m, err := r.ReadAt(b, lo); m < len(b) {
			return nil, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] == '\n' {
				if count++; count == n {
					start = lo + int64(i) + 1
					break scan
				}
			}
		}
		pos = lo
	}
	data := make([]byte, end-start)
	if m, err := r.ReadAt(data, start); m < len(data) {
		return nil, err
	}
	lines := bytes.Split(data[:len(data)-1], []byte{'\n'})
	return lines, nil
}
