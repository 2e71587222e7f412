package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

func testRecord(i int) *Record {
	return &Record{
		Time:          epoch.Add(time.Duration(i) * time.Second),
		DecisionID:    fmt.Sprintf("d%d", i),
		Agent:         "agent-1",
		Role:          "notion_read",
		Server:        "notion",
		Tool:          "get_pages",
		Method:        "tools/call",
		Args:          json.RawMessage(`{"limit":10,"password":"hmac-sha256:00"}`),
		PolicyVersion: "1-abc",
		Verdict:       "allow",
		Rule:          "notion_read/notion/get_pages",
		Code:          "allowed",
		LatencyMicros: 42,
	}
}

// fakeClock returns a Now that advances by a second per call, so rotated
// names are predictable.
func fakeClock() func() time.Time {
	t := epoch
	return func() time.Time { t = t.Add(time.Second); return t }
}

func writeRecords(t *testing.T, path string, opts *FileOptions, from, to int) {
	t.Helper()
	d, err := NewFileDevice(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i <= to; i++ {
		if err := d.Write(testRecord(i)); err != nil {
			t.Fatalf("write record %d: %v", i, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(string(b), "\n")[:strings.Count(string(b), "\n")]
}

func writeLines(t *testing.T, path string, lines []string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hashOf is the hash a line records.
func hashOf(line string) string {
	line = strings.TrimSuffix(line, "\n")
	return line[len(line)-66 : len(line)-2]
}

// seal gives body (a record's JSON without "hash") the hash a forger would
// compute, following the documented format independently of the code.
func seal(body string) string {
	sum := sha256.Sum256([]byte(body))
	return body[:len(body)-1] + `,"hash":"` + hex.EncodeToString(sum[:]) + `"}` + "\n"
}

func TestFileDeviceFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, nil, 1, 2)
	lines := readLines(t, path)
	prev := zeroHash
	for i, line := range lines {
		rec := *testRecord(i + 1)
		rec.Seq, rec.Prev = uint64(i+1), prev
		body, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(seal(string(body)), line); diff != "" {
			t.Errorf("line %d (-want +got):\n%s", i+1, diff)
		}
		prev = hashOf(line)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestVerifyIntact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, nil, 1, 5)
	got, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	want := VerifyResult{Records: 5, FirstSeq: 1, FirstPrev: zeroHash, LastSeq: 5, LastHash: hashOf(readLines(t, path)[4])}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Verify (-want +got):\n%s", diff)
	}
}

func TestVerifyTampered(t *testing.T) {
	type lines = []string
	tests := []struct {
		name   string
		tamper func(l lines) lines
		// want builds the expected error from the path and the original lines.
		want func(path string, l lines) string
	}{
		{
			name: "edited field",
			tamper: func(l lines) lines {
				l[2] = strings.Replace(l[2], `"verdict":"allow"`, `"verdict":"deny"`, 1)
				return l
			},
			want: func(path string, l lines) string {
				edited := strings.Replace(l[2], `"verdict":"allow"`, `"verdict":"deny"`, 1)
				sum := sha256.Sum256([]byte(edited[:len(edited)-1-75] + "}"))
				return fmt.Sprintf("%s:3: hash mismatch: hash is %s, but the line hashes to %x (the record was altered)", path, hashOf(l[2]), sum)
			},
		},
		{
			name:   "deleted line",
			tamper: func(l lines) lines { return append(l[:2:2], l[3:]...) },
			want: func(path string, l lines) string {
				return path + ":3: seq gap: seq 4 follows seq 2 (" + path + ":2)"
			},
		},
		{
			name:   "deleted first line",
			tamper: func(l lines) lines { return l[1:] },
			want:   nil, // a file may start mid-chain; Verify reports where instead
		},
		{
			name:   "swapped lines",
			tamper: func(l lines) lines { l[1], l[2] = l[2], l[1]; return l },
			want: func(path string, l lines) string {
				return path + ":2: seq gap: seq 3 follows seq 1 (" + path + ":1)"
			},
		},
		{
			name:   "truncated last line",
			tamper: func(l lines) lines { l[4] = l[4][:40]; return l },
			want: func(path string, l lines) string {
				return path + ":5: torn line: 40 bytes without a newline at the end of the file (a crash mid-write, a truncation, or a write in progress)"
			},
		},
		{
			name: "forged line with wrong prev",
			tamper: func(l lines) lines {
				return append(l, forge(6, hashOf(l[3])))
			},
			want: func(path string, l lines) string {
				return fmt.Sprintf("%s:6: prev mismatch: prev is %s, but the previous record (%s:5) has hash %s", path, hashOf(l[3]), path, hashOf(l[4]))
			},
		},
		{
			name:   "forged start of chain",
			tamper: func(l lines) lines { return append(lines{forge(1, hashOf(l[0]))}, l[1:]...) },
			want: func(path string, l lines) string {
				return fmt.Sprintf("%s:1: prev mismatch: prev is %s, but seq 1 starts the chain and must have prev %s", path, hashOf(l[0]), zeroHash)
			},
		},
		{
			name:   "chain starting at seq 0",
			tamper: func(l lines) lines { return lines{seal(`{"seq":0,"prev":"` + zeroHash + `","verdict":"allow"}`)} },
			want: func(path string, l lines) string {
				return path + `:1: bad record: no "seq" (not written by the audit file device?)`
			},
		},
		{
			name:   "replaced by garbage",
			tamper: func(l lines) lines { l[1] = "{not json\n"; return l },
			want: func(path string, l lines) string {
				return path + ":2: bad JSON: invalid character 'n' looking for beginning of object key string"
			},
		},
		{
			name:   "empty line",
			tamper: func(l lines) lines { return append(l[:2:2], append(lines{"\n"}, l[2:]...)...) },
			want:   func(path string, l lines) string { return path + ":3: bad JSON: empty line" },
		},
		{
			name: "hash removed",
			tamper: func(l lines) lines {
				l[3] = l[3][:len(l[3])-1-75] + "}\n"
				return l
			},
			want: func(path string, l lines) string { return path + `:4: bad record: no "hash"` },
		},
		{
			name: "hash not last",
			tamper: func(l lines) lines {
				l[3] = strings.Replace(l[3], `"}`+"\n", `","x":1}`+"\n", 1)
				return l
			},
			want: func(path string, l lines) string {
				return path + `:4: bad record: "hash" is not the last key or not 64 lowercase hex digits`
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			writeRecords(t, path, nil, 1, 5)
			orig := readLines(t, path)
			writeLines(t, path, tt.tamper(append(lines(nil), orig...)))
			_, err := Verify(path)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			var ce *ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("Verify error = %v, want a *ChainError", err)
			}
			if diff := cmp.Diff(tt.want(path, orig), err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

// forge returns a well-formed, correctly hashed record line with the given
// seq and prev, as someone who knows the format could write.
func forge(seq uint64, prev string) string {
	rec := *testRecord(99)
	rec.Verdict, rec.Seq, rec.Prev = "allow", seq, prev
	body, _ := json.Marshal(rec)
	return seal(string(body))
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lineLen := int64(len(readLinesOf(t, dir, 1)[0]))
	opts := &FileOptions{MaxBytes: 3 * lineLen, Now: fakeClock()}
	writeRecords(t, path, opts, 1, 8)

	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		path + ".20260102T150406.000000000Z",
		path + ".20260102T150407.000000000Z",
		path,
	}
	if diff := cmp.Diff(want, files); diff != "" {
		t.Fatalf("ChainFiles (-want +got):\n%s", diff)
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Size() > opts.MaxBytes || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want at most %d bytes and mode 0600 (err %v)", f, fi.Size(), opts.MaxBytes, err)
		}
	}
	all, err := Verify(files...)
	if err != nil {
		t.Fatal(err)
	}
	if all.Records != 8 || all.FirstSeq != 1 || all.LastSeq != 8 {
		t.Errorf("Verify(all) = %+v, want 8 records from seq 1", all)
	}

	// A later file alone verifies and says where it starts.
	later, err := Verify(files[1])
	if err != nil {
		t.Fatal(err)
	}
	first := readLines(t, files[0])
	wantLater := VerifyResult{Records: 3, FirstSeq: 4, FirstPrev: hashOf(first[2]), LastSeq: 6, LastHash: hashOf(readLines(t, files[1])[2])}
	if diff := cmp.Diff(wantLater, later); diff != "" {
		t.Errorf("Verify(later file) (-want +got):\n%s", diff)
	}

	// Out of order, the continuity check fails at the first record of the
	// misplaced file.
	_, err = Verify(files[1], files[0])
	if want := files[0] + ":1: seq gap: seq 1 follows seq 6 (" + files[1] + ":3)"; err == nil || err.Error() != want {
		t.Errorf("Verify(out of order) = %v, want %s", err, want)
	}
	// A missing middle file is a gap.
	_, err = Verify(files[0], files[2])
	if want := files[2] + ":1: seq gap: seq 7 follows seq 3 (" + files[0] + ":3)"; err == nil || err.Error() != want {
		t.Errorf("Verify(missing file) = %v, want %s", err, want)
	}
}

// readLinesOf writes n records to a scratch file under dir and returns its lines.
func readLinesOf(t *testing.T, dir string, n int) []string {
	path := filepath.Join(dir, "scratch.log")
	writeRecords(t, path, nil, 1, n)
	defer os.Remove(path)
	return readLines(t, path)
}

func TestResume(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeRecords(t, path, nil, 1, 3)
	writeRecords(t, path, nil, 4, 5)
	res, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 5 || res.LastSeq != 5 {
		t.Errorf("after reopen: %+v, want 5 records", res)
	}

	// A crash between rotation and the first write leaves an empty file;
	// the chain resumes from the newest rotated file.
	if err := os.Rename(path, path+".20260102T150405.000000000Z"); err != nil {
		t.Fatal(err)
	}
	writeLines(t, path, nil)
	writeRecords(t, path, nil, 6, 6)
	files, _ := ChainFiles(path)
	if res, err := Verify(files...); err != nil || res.Records != 6 {
		t.Errorf("Verify = %+v, %v; want 6 records", res, err)
	}
}

// The current file gone while rotated files remain is what deleting the
// newest records looks like: the device refuses to go on from the rotated
// files, which would hide the loss, until an operator creates the file.
// A rotation a crash cut short, which leaves the next file beside the
// rotated one, is finished.
func TestResumeWithoutTheCurrentFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeRecords(t, path, nil, 1, 3)

	// Interrupted: renamed away, its successor made but not yet moved in.
	if err := os.Rename(path, rotatedName(path, fakeClock()())); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".next", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, path, nil, 4, 4)
	files, _ := ChainFiles(path)
	if res, err := Verify(files...); err != nil || res.Records != 4 || len(files) != 2 {
		t.Errorf("after an interrupted rotation: Verify(%v) = %+v, %v; want 4 records in 2 files", files, res, err)
	}
	if _, err := os.Stat(path + ".next"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the next file is still there: %v", err)
	}

	// Deleted: the current file gone, nothing beside it.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := NewFileDevice(path, nil)
	if err == nil || !strings.Contains(err.Error(), path+" is missing while rotated files remain") {
		t.Fatalf("NewFileDevice without its current file: %v", err)
	}
	// Created by an operator who knows why: the chain goes on from the
	// rotated file, with the records of the deleted one missing.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, path, nil, 4, 4)
}

func TestResumeTornLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeRecords(t, path, nil, 1, 3)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"ts":"2026-01-02T15:0`) // the crash
	f.Close()
	tip := hashOf(readLines(t, path)[2])

	var logs bytes.Buffer
	opts := &FileOptions{Now: fakeClock(), Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	writeRecords(t, path, opts, 4, 5)

	aside := path + ".20260102T150406.000000000Z"
	if !strings.Contains(logs.String(), "level=ERROR msg=\"audit file ends in a torn line") || !strings.Contains(logs.String(), "file="+aside) {
		t.Errorf("torn line not reported; log:\n%s", logs.String())
	}
	if got := readLines(t, path)[0]; !strings.Contains(got, `"seq":4,"prev":"`+tip+`"`) {
		t.Errorf("new file starts %s, want seq 4 after %s", got, tip)
	}
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{aside, path}, files); diff != "" {
		t.Fatalf("ChainFiles (-want +got):\n%s", diff)
	}
	res, err := Verify(files...)
	if err != nil {
		t.Fatal(err)
	}
	wantWarn := []string{aside + ":4: torn line: 22 bytes without a newline at the end of the file (a crash mid-write, a truncation, or a write in progress): skipped; the chain continues at " + path + ":1"}
	if diff := cmp.Diff(wantWarn, res.Warnings); diff != "" || res.Records != 5 {
		t.Errorf("Verify = %d records, warnings (-want +got):\n%s", res.Records, diff)
	}
	// The torn file on its own is broken at the torn line.
	if _, err := Verify(aside); err == nil || !strings.HasPrefix(err.Error(), aside+":4: torn line: ") {
		t.Errorf("Verify(torn file) = %v", err)
	}
}

// A restart after a crash sets the torn file aside and starts an empty one.
// Until the next record, the log verifies (Verify, and ReadVerified for
// replay) with the torn line as a warning, as it does once that record
// continues the chain; a record there that does not continue it, or an
// anchor past the torn file's last record, is still a break.
func TestVerifyTornFileBeforeNextRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, nil, 1, 3)
	appendTo(t, path, `{"ts":"2026-01-02T15:0`)                 // the crash
	writeRecords(t, path, &FileOptions{Now: fakeClock()}, 4, 3) // a restart, then a shutdown with no record
	aside := path + ".20260102T150406.000000000Z"
	tip := hashOf(readLines(t, aside)[2])

	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{aside, path}, files); diff != "" {
		t.Fatalf("ChainFiles (-want +got):\n%s", diff)
	}
	wantWarn := aside + ":4: torn line: 22 bytes without a newline at the end of the file (a crash mid-write, a truncation, or a write in progress): skipped; the chain continues in " + path + ", which holds no record yet"
	res, err := Verify(files...)
	if err != nil {
		t.Errorf("Verify = %v", err)
	}
	want := VerifyResult{Records: 3, FirstSeq: 1, FirstPrev: zeroHash, LastSeq: 3, LastHash: tip, Warnings: []string{wantWarn}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Verify (-want +got):\n%s", diff)
	}

	var got []string
	var warn strings.Builder
	res, err = ReadVerified(files, &warn, func(r Record) bool { got = append(got, r.DecisionID); return true })
	if err != nil {
		t.Errorf("ReadVerified = %v", err)
	}
	if diff := cmp.Diff(ids(1, 3), got); diff != "" || res.Records != 3 {
		t.Errorf("ReadVerified = %d records, (-want +got):\n%s", res.Records, diff)
	}
	if warn.String() != "warning: "+wantWarn+"\n" {
		t.Errorf("ReadVerified warned %q, want %q", warn.String(), "warning: "+wantWarn+"\n")
	}

	if _, err := VerifyAnchored([]Anchor{{Seq: 4}}, files...); err == nil || err.Error() != aside+":3: anchor mismatch: the chain ends at seq 3, but an anchor names seq 4: records were cut from its end" {
		t.Errorf("VerifyAnchored past the torn file's last record = %v, want records cut", err)
	}
	if _, err := Verify(aside); err == nil || !strings.HasPrefix(err.Error(), aside+":4: torn line: ") {
		t.Errorf("Verify(torn file alone) = %v, want the torn line", err)
	}
	// A record in the new file that does not continue the chain.
	writeLines(t, path, readLines(t, aside)[:1])
	if _, err := Verify(files...); err == nil || !strings.HasPrefix(err.Error(), aside+":4: torn line: ") {
		t.Errorf("Verify with a record not continuing the chain = %v, want the torn line", err)
	}
}

func TestResumeRefusesCorruptTip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, nil, 1, 2)
	l := readLines(t, path)
	l[1] = strings.Replace(l[1], `"d2"`, `"dX"`, 1)
	writeLines(t, path, l)
	_, err := NewFileDevice(path, nil)
	if err == nil || !strings.Contains(err.Error(), "last record: hash mismatch") {
		t.Errorf("NewFileDevice on a corrupt tip: %v, want a refusal", err)
	}
}

func TestFileDeviceTightensMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeLines(t, path, nil)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, path, nil, 1, 1)
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestFileDeviceSyncPolicies(t *testing.T) {
	for _, p := range []SyncPolicy{SyncOnInterval, SyncAlways, SyncNever} {
		t.Run(p.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			writeRecords(t, path, &FileOptions{Sync: p, SyncInterval: time.Millisecond}, 1, 3)
			if res, err := Verify(path); err != nil || res.Records != 3 {
				t.Errorf("Verify = %+v, %v", res, err)
			}
		})
	}
}

func TestSyncPolicyText(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want SyncPolicy
		err  string
	}{
		{"always", SyncAlways, ""},
		{"interval", SyncOnInterval, ""},
		{"never", SyncNever, ""},
		{"sometimes", 0, `unknown audit sync policy "sometimes" (want always, interval or never)`},
	} {
		var p SyncPolicy
		err := p.UnmarshalText([]byte(tt.in))
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("UnmarshalText(%q) error = %v, want %s", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || p != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tt.in, p, err, tt.want)
		}
	}
}

func TestFileDeviceWriteAfterClose(t *testing.T) {
	d, err := NewFileDevice(filepath.Join(t.TempDir(), "audit.log"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := d.Write(testRecord(1)); err == nil {
		t.Error("Write after Close succeeded")
	}
}

func TestWriterDevice(t *testing.T) {
	var buf bytes.Buffer
	d := NewWriterDevice(&buf)
	if err := d.Write(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(testRecord(1))
	if diff := cmp.Diff(string(want)+"\n", buf.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A batch larger than one write goes out in several, chained as one.
func TestFileDeviceWriteBatchLargerThanOneWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d, err := NewFileDevice(path, &FileOptions{Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	args := json.RawMessage(`{"query":"` + strings.Repeat("x", 2000) + `"}`)
	var batch []Record
	for i := range 3 * maxWrite / len(args) {
		r := testRecord(i + 1)
		r.Args = args
		batch = append(batch, *r)
	}
	if n, err := d.WriteBatch(batch); err != nil || n != len(batch) {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(batch))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := Verify(path)
	if err != nil {
		t.Fatalf("a batch written in several writes does not verify: %v", err)
	}
	if res.Records != len(batch) || res.LastSeq != uint64(len(batch)) {
		t.Errorf("verify = %+v, want records 1 to %d", res, len(batch))
	}
}

func TestFileDeviceWriteBatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 2 << 10, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(testRecord(0)); err != nil {
		t.Fatal(err)
	}
	var batch []Record
	for i := 1; i <= 40; i++ {
		batch = append(batch, *testRecord(i))
	}
	// 40 records of a few hundred bytes cross several 2 KiB rotations.
	n, err := d.WriteBatch(batch)
	if err != nil || n != len(batch) {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(batch))
	}
	if err := d.Write(testRecord(41)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("%d files, want the batch to have rotated several times", len(files))
	}
	res, err := Verify(files...)
	if err != nil {
		t.Fatalf("chain written in batches does not verify: %v", err)
	}
	if res.Records != 42 || res.FirstSeq != 1 || res.LastSeq != 42 {
		t.Errorf("verify = %+v, want records 1 to 42", res)
	}
	if n, err := d.WriteBatch(batch); n != 0 || err == nil {
		t.Errorf("WriteBatch on a closed device = %d, %v", n, err)
	}
}

// With SyncAlways, records that were written but not synced are reported
// so (recorded, with an error the logger tells apart) and left for Sync.
func TestFileDeviceNotSynced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d, err := NewFileDevice(path, &FileOptions{Sync: SyncAlways, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	r, back := onPipe(t, d)
	if err := d.Write(testRecord(1)); !errors.Is(err, errNotSynced) {
		t.Errorf("Write = %v, want errNotSynced", err)
	}
	batch := []Record{*testRecord(2), *testRecord(3)}
	if n, err := d.WriteBatch(batch); n != len(batch) || !errors.Is(err, errNotSynced) {
		t.Errorf("WriteBatch = %d, %v; want %d, errNotSynced", n, err, len(batch))
	}
	if err := d.Sync(); err == nil {
		t.Error("Sync of a pipe succeeded")
	}
	back()
	if err := d.Sync(); err != nil {
		t.Errorf("Sync of a file: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	piped, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(1, 3), lineIDs(t, piped)); diff != "" {
		t.Errorf("records written (-want +got):\n%s", diff)
	}
}

// Under SyncOnInterval a failed background sync fails the writes after
// it, which write nothing, until a sync succeeds: records that may never
// reach the disk are not acknowledged.
func TestFileDeviceIntervalSyncFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d, err := NewFileDevice(path, &FileOptions{Sync: SyncOnInterval, SyncInterval: time.Millisecond, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, back := onPipe(t, d)
	go io.Copy(io.Discard, r)
	if err := d.Write(testRecord(1)); err != nil {
		t.Fatalf("Write before any sync: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := d.Write(testRecord(2))
		if err != nil {
			break // the background sync failed
		}
		if time.Now().After(deadline) {
			t.Fatal("writes went on succeeding after the background sync failed")
		}
		time.Sleep(time.Millisecond)
	}
	back()
	if err := d.Write(testRecord(3)); err != nil {
		t.Errorf("Write once a sync can succeed: %v", err)
	}
}

// An audit.log removed or renamed away while open must not go on taking
// records nobody can read: writes fail until the path names a file the
// chain can go on in.
func TestFileDevicePathGoneWhileOpen(t *testing.T) {
	tests := []struct {
		name string
		// replace acts on path, then returns the files that hold the
		// chain once records 4 and 5 are written, oldest first.
		replace  func(t *testing.T, path string) []string
		firstSeq uint64 // of the files replace returns
	}{{
		name: "moved back",
		replace: func(t *testing.T, path string) []string {
			if err := os.Rename(path, path+".bak"); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".bak", path); err != nil {
				t.Fatal(err)
			}
			return []string{path}
		},
		firstSeq: 1,
	}, {
		name: "removed, then created empty",
		replace: func(t *testing.T, path string) []string {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			writeLines(t, path, nil)
			return []string{path}
		},
		firstSeq: 4, // 1 to 3 went with the file
	}, {
		name: "renamed, and an empty one made",
		replace: func(t *testing.T, path string) []string {
			if err := os.Rename(path, path+".old"); err != nil {
				t.Fatal(err)
			}
			writeLines(t, path, nil)
			return []string{path + ".old", path}
		},
		firstSeq: 1,
	}, {
		name: "copied back",
		replace: func(t *testing.T, path string) []string {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{path}
		},
		firstSeq: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			d, err := NewFileDevice(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for i := 1; i <= 3; i++ {
				if err := d.Write(testRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			files := tt.replace(t, path)
			for i := 4; i <= 5; i++ {
				if err := d.Write(testRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			res, err := Verify(files...)
			if err != nil {
				t.Fatal(err)
			}
			if res.FirstSeq != tt.firstSeq || res.LastSeq != 5 || res.Records != int(6-tt.firstSeq) {
				t.Errorf("Verify(%v) = %+v, want seq %d to 5", files, res, tt.firstSeq)
			}
		})
	}
}

func TestFileDeviceRefusesWhilePathGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	d, err := NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Write(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	tip := readLines(t, path)[0]
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	err = d.Write(testRecord(2))
	want := fmt.Sprintf("audit file: %s was removed or renamed while open, after seq 1 (hash %s): refusing records until it is moved back, or created empty to continue the chain in it", path, hashOf(tip))
	if err == nil || err.Error() != want {
		t.Fatalf("Write after removal = %v, want %q", err, want)
	}

	// Another file in its place, not ending where the chain does.
	other := filepath.Join(t.TempDir(), FileName)
	writeRecords(t, other, nil, 1, 2)
	writeLines(t, path, readLines(t, other))
	err = d.Write(testRecord(2))
	if err == nil || !strings.Contains(err.Error(), "refusing to chain onto it") {
		t.Fatalf("Write onto a foreign file = %v, want a refusal", err)
	}
	writeLines(t, path, []string{`{"torn`})
	if err := d.Write(testRecord(2)); err == nil || !strings.Contains(err.Error(), "refusing to chain onto it") {
		t.Fatalf("Write onto a torn file = %v, want a refusal", err)
	}

	writeLines(t, path, nil)
	if err := d.Write(testRecord(2)); err != nil {
		t.Fatalf("Write into a file created empty: %v", err)
	}
	res, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstSeq != 2 || res.FirstPrev != hashOf(tip) || res.Records != 1 {
		t.Errorf("Verify = %+v, want seq 2 continuing from seq 1", res)
	}
}
