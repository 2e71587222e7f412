package audit

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var searchBase = time.Date(2026, 4, 1, 8, 0, 0, 0, time.UTC)

// searchRecords are the records of the log the search tests read, an hour
// apart; TraceID names each by its index.
func searchRecords() []Record {
	type r struct {
		id, agent, role, server, tool, verdict, shadow, code string
	}
	rows := []r{
		0:  {"d0", "alice", "dev", "notion", "get_pages", "allow", "", "allowed"},
		1:  {"d1", "bob", "dev", "notion", "delete_page", "deny", "", "not_granted"},
		2:  {"d2", "alice", "ops", "github", "get_pages", "needs_approval", "", "approval_required"},
		3:  {"d3", "alice", "dev", "notion", "get_pages", "allow", "deny", "allowed"},
		4:  {"d3", "alice", "dev", "notion", "get_pages", "allow", "", "executed"}, // the broker's outcome of d3
		5:  {"d5", "bob", "ops", "github", "create_issue", "deny", "", "not_granted"},
		6:  {"d6", "carol", "dev", "notion", "get_pages", "allow", "needs_approval", "allowed"},
		7:  {"d7", "alice", "dev", "", "", "allow", "", "lifecycle"},
		8:  {"d8", "bob", "dev", "notion", "get_pages", "allow", "deny", "allowed"},
		9:  {"d9", "alice", "ops", "github", "get_pages", "allow", "", "allowed"},
		10: {"d10", "alice", "dev", "notion", "get_pages", "allow", "", "allowed"},
		11: {"d11", "bob", "dev", "notion", "get_pages", "needs_approval", "", "approval_required"},
	}
	recs := make([]Record, len(rows))
	for i, row := range rows {
		recs[i] = Record{
			Time: searchBase.Add(time.Duration(i) * time.Hour), DecisionID: row.id, Agent: row.agent, Role: row.role,
			Server: row.server, Tool: row.tool, Method: "tools/call", Verdict: row.verdict, ShadowVerdict: row.shadow,
			Code: row.code, Args: json.RawMessage(`{"limit":10}`), TraceID: "t" + strconv.Itoa(i),
		}
		if row.tool == "" {
			recs[i].Method, recs[i].Args = "initialize", nil
		}
	}
	return recs
}

// writeSearchLog writes recs through the file device, rotating every few
// records, with a device clock that lags the records' times by lag, and
// returns the log's path.
func writeSearchLog(t *testing.T, recs []Record, lag time.Duration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	var clock time.Time
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 1000, Sync: SyncNever, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		clock = recs[i].Time.Add(-lag)
		if err := d.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("the log has %d files, want rotated ones too: %q", len(files), files)
	}
	return path
}

// traceIDs names records by their TraceID.
func traceIDs(recs []Record) []string {
	ids := make([]string, len(recs))
	for i := range recs {
		ids[i] = recs[i].TraceID
	}
	return ids
}

func hour(n int) time.Time { return searchBase.Add(time.Duration(n) * time.Hour) }

func TestSearch(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	all := []string{"t11", "t10", "t9", "t8", "t7", "t6", "t5", "t4", "t3", "t2", "t1", "t0"}
	tests := []struct {
		name string
		q    Query
		want []string
		more bool
	}{
		{"everything", Query{}, all, false},
		{"agent", Query{Agent: "alice"}, []string{"t10", "t9", "t7", "t4", "t3", "t2", "t0"}, false},
		{"unknown agent", Query{Agent: "mallory"}, nil, false},
		{"role", Query{Role: "ops"}, []string{"t9", "t5", "t2"}, false},
		{"bare tool", Query{Tool: "get_pages"}, []string{"t11", "t10", "t9", "t8", "t6", "t4", "t3", "t2", "t0"}, false},
		{"qualified tool", Query{Tool: "notion__get_pages"}, []string{"t11", "t10", "t8", "t6", "t4", "t3", "t0"}, false},
		{"other server", Query{Tool: "github__get_pages"}, []string{"t9", "t2"}, false},
		{"server is not a tool", Query{Tool: "notion"}, nil, false},
		{"server without tool", Query{Tool: "notion__"}, nil, false},
		{"tool without server", Query{Tool: "__get_pages"}, nil, false},
		{"deny", Query{Verdict: "deny"}, []string{"t5", "t1"}, false},
		{"needs approval", Query{Verdict: "needs_approval"}, []string{"t11", "t2"}, false},
		{"shadow deny", Query{Verdict: "shadow_deny"}, []string{"t8", "t6", "t3"}, false},
		{"decision id with two records", Query{DecisionID: "d3"}, []string{"t4", "t3"}, false},
		{"decision id", Query{DecisionID: "d1"}, []string{"t1"}, false},
		{"inclusive bounds", Query{From: hour(3), To: hour(6)}, []string{"t6", "t5", "t4", "t3"}, false},
		{"bounds a nanosecond inside", Query{From: hour(3).Add(1), To: hour(6).Add(-1)}, []string{"t5", "t4"}, false},
		{"from", Query{From: hour(9)}, []string{"t11", "t10", "t9"}, false},
		{"to", Query{To: hour(1)}, []string{"t1", "t0"}, false},
		{"instant", Query{From: hour(7), To: hour(7)}, []string{"t7"}, false},
		{"empty interval", Query{From: hour(7), To: hour(6)}, nil, false},
		{"after the last record", Query{From: hour(12)}, nil, false},
		{"bounds in another zone", Query{From: hour(10).In(time.FixedZone("X", 5*3600))}, []string{"t11", "t10"}, false},
		{"combined", Query{Agent: "alice", Tool: "notion__get_pages", From: hour(1)}, []string{"t10", "t4", "t3"}, false},
		{"combined verdict", Query{Role: "dev", Verdict: "allow", To: hour(4)}, []string{"t4", "t3", "t0"}, false},
		{"limit", Query{Limit: 3}, all[:3], true},
		{"limit one", Query{Limit: 1, Agent: "bob"}, []string{"t11"}, true},
		{"limit all but one", Query{Limit: 11}, all[:11], true},
		{"limit exactly all", Query{Limit: 12}, all, false},
		{"limit above all", Query{Limit: 13}, all, false},
		{"limit of matches", Query{Limit: 7, Agent: "alice"}, []string{"t10", "t9", "t7", "t4", "t3", "t2", "t0"}, false},
		{"limit below matches", Query{Limit: 6, Agent: "alice"}, []string{"t10", "t9", "t7", "t4", "t3", "t2"}, true},
		{"limit with bounds", Query{Limit: 2, From: hour(2), To: hour(8)}, []string{"t8", "t7"}, true},
		{"negative limit", Query{Limit: -1}, all, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, more, err := Search(path, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, traceIDs(recs), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if more != tt.more {
				t.Errorf("more = %v, want %v", more, tt.more)
			}
		})
	}
}

func TestSearchRecordsRoundTrip(t *testing.T) {
	written := searchRecords()
	path := writeSearchLog(t, written, 0)
	recs, _, err := Search(path, Query{DecisionID: "d3"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{written[4], written[3]}
	if diff := cmp.Diff(want, recs, cmpopts.IgnoreFields(Record{}, "Seq", "Prev", "Hash")); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	// The chain fields come back as written: seq 5 then 4.
	if len(recs) == 2 && (recs[0].Seq != 5 || recs[1].Seq != 4 || recs[0].Prev != recs[1].Hash || !isHash(recs[0].Hash)) {
		t.Errorf("chain fields: seq %d, %d; prev of the newer %q, hash of the older %q", recs[0].Seq, recs[1].Seq, recs[0].Prev, recs[1].Hash)
	}
}

func TestSearchDefaultLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 16 << 10, Sync: SyncNever, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range DefaultSearchLimit + 5 {
		if err := d.Write(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	recs, more, err := Search(path, Query{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != DefaultSearchLimit || !more {
		t.Fatalf("got %d records, more %v; want %d, true", len(recs), more, DefaultSearchLimit)
	}
	for i, r := range recs {
		if want := "d" + strconv.Itoa(DefaultSearchLimit+4-i); r.DecisionID != want {
			t.Fatalf("record %d is %s, want %s", i, r.DecisionID, want)
		}
	}
}

// corruptLine replaces line n (1-based) of the file at name.
func corruptLine(t *testing.T, name string, n int, with string) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	if n > len(lines) || !strings.HasSuffix(lines[n-1], "\n") {
		t.Fatalf("%s has no complete line %d", name, n)
	}
	lines[n-1] = with + "\n"
	if err := os.WriteFile(name, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendTo(t *testing.T, name, s string) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func TestSearchCorruptLine(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	// Line 2 of the second file is in the middle of the log.
	corruptLine(t, files[1], 2, `{"ts":"2026-04-01T`)
	for _, q := range []Query{{}, {DecisionID: "d0"}, {Limit: 1}} {
		recs, more, err := Search(path, q)
		if err == nil || !strings.Contains(err.Error(), files[1]+":2: not an audit record") {
			t.Errorf("Search(%+v) = %d records, more %v, error %v; want an error naming %s:2", q, len(recs), more, err, files[1])
		}
	}
}

func TestSearchTornLastLine(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	torn := `{"ts":"2026-04-01T20:00:00Z","decision_id":"d99","verd`
	// A crash leaves a torn end in the current file; the device sets a
	// torn file aside as a rotated one, so one may end any file.
	appendTo(t, path, torn)
	appendTo(t, files[0], torn)
	recs, more, err := Search(path, Query{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"t11", "t10", "t9", "t8", "t7", "t6", "t5", "t4", "t3", "t2", "t1", "t0"}
	if diff := cmp.Diff(want, traceIDs(recs)); diff != "" || more {
		t.Errorf("more %v, records (-want +got):\n%s", more, diff)
	}

	var warn strings.Builder
	n := 0
	if err := ReadRecords(files, &warn, func(Record) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	lines := func(name string) int {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(data), "\n") + 1
	}
	wantWarn := "warning: " + files[0] + ":" + strconv.Itoa(lines(files[0])) + ": skipped an incomplete last line\n" +
		"warning: " + path + ":" + strconv.Itoa(lines(path)) + ": skipped an incomplete last line\n"
	if n != 12 || warn.String() != wantWarn {
		t.Errorf("ReadRecords read %d records and warned:\n%s\nwant 12 and:\n%s", n, warn.String(), wantWarn)
	}
}

// TestSearchSkipsParsableTornLine shows that a last line without its
// newline is skipped even when it parses: Verify excuses it in a rotated
// file, so anyone who can append to that file could otherwise plant a record
// that verifies and that searches return.
func TestSearchSkipsParsableTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, &FileOptions{MaxBytes: 100, Now: fakeClock()}, 1, 3)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("%d files, want one record in each of 3", len(files))
	}
	appendTo(t, files[0], `{"ts":"2026-01-02T15:04:07Z","decision_id":"FORGED","agent":"mallory","verdict":"allow","code":"allowed","latency_us":1}`)
	if res, err := Verify(files...); err != nil || len(res.Warnings) != 1 {
		t.Fatalf("Verify = %+v, %v; want the torn line excused with a warning", res, err)
	}

	recs, more, err := Search(path, Query{Agent: "mallory"})
	if err != nil || len(recs) != 0 || more {
		t.Errorf("Search = %d records, more %v, error %v; want none", len(recs), more, err)
	}
	var warn strings.Builder
	var got []string
	if err := ReadRecords(files, &warn, func(r Record) bool { got = append(got, r.DecisionID); return true }); err != nil {
		t.Fatal(err)
	}
	wantWarn := "warning: " + files[0] + ":2: skipped an incomplete last line\n"
	if diff := cmp.Diff([]string{"d1", "d2", "d3"}, got); diff != "" || warn.String() != wantWarn {
		t.Errorf("ReadRecords warned %q, want %q; records (-want +got):\n%s", warn.String(), wantWarn, diff)
	}
}

func TestSearchMissingLog(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{
		filepath.Join(dir, FileName),
		filepath.Join(dir, "absent", FileName),
	} {
		recs, more, err := Search(path, Query{From: hour(1)})
		if err != nil || len(recs) != 0 || more {
			t.Errorf("Search(%s) = %d records, more %v, error %v; want none", path, len(recs), more, err)
		}
	}
}

// TestSearchSkipsOldRotatedFiles shows that files rotated well before
// From are not read: a corrupt line in the oldest file fails the search
// only when From does not exclude that file.
func TestSearchSkipsOldRotatedFiles(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := time.Parse(rotatedLayout, strings.TrimPrefix(files[0], path+"."))
	if err != nil {
		t.Fatal(err)
	}
	corruptLine(t, files[0], 1, "not json")

	if _, _, err := Search(path, Query{From: rotated.Add(rotationSlack)}); err == nil || !strings.Contains(err.Error(), files[0]+":1:") {
		t.Errorf("From at the end of the slack: error %v, want the corrupt line of the oldest file", err)
	}
	from := rotated.Add(rotationSlack + time.Nanosecond)
	recs, _, err := Search(path, Query{From: from})
	if err != nil {
		t.Fatalf("From past the slack: %v", err)
	}
	var want []string
	for _, r := range searchRecords() {
		if !r.Time.Before(from) {
			want = append(want, r.TraceID)
		}
	}
	slices.Reverse(want)
	if diff := cmp.Diff(want, traceIDs(recs), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

// TestSearchClockBehind shows that a file rotated before From is still read
// when its records were stamped by a clock ahead of the one that rotated it.
func TestSearchClockBehind(t *testing.T) {
	recs := searchRecords()
	path := writeSearchLog(t, recs, 90*time.Minute)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	// The newest record of the oldest file is later than the file's
	// rotation time.
	var last Record
	if err := ReadRecords(files[:1], nil, func(r Record) bool { last = r; return true }); err != nil {
		t.Fatal(err)
	}
	rotated, err := time.Parse(rotatedLayout, strings.TrimPrefix(files[0], path+"."))
	if err != nil {
		t.Fatal(err)
	}
	if !rotated.Before(last.Time) {
		t.Fatalf("the oldest file was rotated at %v, after its last record at %v", rotated, last.Time)
	}
	got, _, err := Search(path, Query{From: last.Time, To: last.Time})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{last.TraceID}, traceIDs(got)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

// TestSearchRotatedDuringRead rotates the log after Search has listed its
// files, before it reads them: it must read the log again rather than fail
// or miss the records of the file rotated away.
func TestSearchRotatedDuringRead(t *testing.T) {
	all := []string{"t11", "t10", "t9", "t8", "t7", "t6", "t5", "t4", "t3", "t2", "t1", "t0"}
	tests := []struct {
		name   string
		rotate func(t *testing.T, path string) // rotates the log at path
		want   []string
	}{
		{"renamed, not yet reopened", func(t *testing.T, path string) {
			if err := os.Rename(path, rotatedName(path, hour(12))); err != nil {
				t.Fatal(err)
			}
		}, all},
		{"renamed and written to", func(t *testing.T, path string) {
			// A rotation, whose new file a device then writes to.
			if err := os.Rename(path, rotatedName(path, hour(12))); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := NewFileDevice(path, &FileOptions{Sync: SyncNever})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Write(&Record{Time: hour(12), DecisionID: "d12", Verdict: "allow", TraceID: "t12"}); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
		}, append([]string{"t12"}, all...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeSearchLog(t, searchRecords(), 0)
			calls := 0
			searchListed = func() {
				if calls++; calls == 1 {
					tt.rotate(t, path)
				}
			}
			t.Cleanup(func() { searchListed = nil })
			recs, more, err := Search(path, Query{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, traceIDs(recs)); diff != "" || more {
				t.Errorf("more %v, records (-want +got):\n%s", more, diff)
			}
			if calls != 2 {
				t.Errorf("Search listed the log %d times, want 2", calls)
			}
		})
	}
}

func TestReadRecordsStops(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = ReadRecords(files, nil, func(r Record) bool {
		got = append(got, r.TraceID)
		return len(got) < 5
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"t0", "t1", "t2", "t3", "t4"}, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if err := ReadRecords([]string{path + ".missing"}, nil, func(Record) bool { return true }); !os.IsNotExist(err) {
		t.Errorf("missing file: error %v, want one that it does not exist", err)
	}
}

func TestQueryMatchTool(t *testing.T) {
	tests := []struct {
		tool, server, name string
		want               bool
	}{
		{"get_pages", "notion", "get_pages", true},
		{"notion__get_pages", "notion", "get_pages", true},
		{"notion__get_pages", "", "get_pages", false},
		{"notion__get_pages", "notion", "get_page", false},
		{"notion__get_pages", "notio", "n__get_pages", false},
		{"__get_pages", "", "get_pages", true}, // no server: the name starts with the separator
		// A tool whose own name holds "__" is only found qualified.
		{"a__b", "s", "a__b", false},
		{"s__a__b", "s", "a__b", true},
		// The separator is checked, not just the length: "srv_" + "_z" + "x".
		{"srv__zx", "srv_", "x", false},
		{"srv___x", "srv_", "x", true},
		{"x", "srv_", "x", true},
	}
	for _, tt := range tests {
		r := Record{Server: tt.server, Tool: tt.name}
		if got := (Query{Tool: tt.tool}).Match(&r); got != tt.want {
			t.Errorf("Query{Tool: %q}.Match(server %q, tool %q) = %v, want %v", tt.tool, tt.server, tt.name, got, tt.want)
		}
	}
}

func TestQueryMatchZero(t *testing.T) {
	for _, r := range []Record{{}, {Time: hour(1), Agent: "a", Verdict: "deny", ShadowVerdict: "deny"}} {
		if !(Query{}).Match(&r) {
			t.Errorf("the zero query does not match %+v", r)
		}
	}
}

// ReadVerified yields the records Verify checked, in the same pass, and
// stops at the first broken one, naming it as Verify does; the torn end of
// the last file is skipped as ReadRecords skips it.
func TestReadVerified(t *testing.T) {
	path := writeSearchLog(t, searchRecords(), 0)
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	read := func(t *testing.T) ([]string, string, VerifyResult, error) {
		t.Helper()
		var got []string
		var warn strings.Builder
		res, err := ReadVerified(files, &warn, func(r Record) bool {
			got = append(got, r.TraceID)
			return true
		})
		return got, warn.String(), res, err
	}
	all := []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11"}

	appendTo(t, path, `{"ts":"2026-04-01T20:00:00Z","decision_id":"d99","verd`)
	got, warn, res, err := read(t)
	if err != nil || res.Records != 12 || res.FirstSeq != 1 {
		t.Fatalf("intact log: %+v, %v; want 12 records from seq 1", res, err)
	}
	if diff := cmp.Diff(all, got); diff != "" {
		t.Errorf("intact log: records (-want +got):\n%s", diff)
	}
	if wantWarn := "warning: " + path + ":" + strconv.Itoa(len(readLines(t, path))+1) + ": skipped an incomplete last line\n"; warn != wantWarn {
		t.Errorf("intact log: warned %q, want %q", warn, wantWarn)
	}

	// An edited record in the middle: the records before it are read, and
	// the error names it.
	lines := readLines(t, files[1])
	writeLines(t, files[1], append(lines[:1:1], append([]string{strings.Replace(lines[1], `"allow"`, `"deny"`, 1)}, lines[2:]...)...))
	_, verr := Verify(files...)
	got, _, _, err = read(t)
	var broken *ChainError
	if !errors.As(err, &broken) || err.Error() != verr.Error() || broken.File != files[1] || broken.Line != 2 || broken.Kind != BreakHash {
		t.Fatalf("edited record: error %v; want Verify's, %v", err, verr)
	}
	if n := len(readLines(t, files[0])) + 1; len(got) != n || !slices.Equal(got, all[:n]) {
		t.Errorf("edited record: read %q, want the %d records before it", got, n)
	}
}
