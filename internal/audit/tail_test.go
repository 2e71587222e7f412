package audit

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// decisionIDs tails path and returns the decision ids emitted.
func decisionIDs(t *testing.T, path string, opts *TailOptions) ([]string, error) {
	t.Helper()
	var got []string
	err := Tail(context.Background(), path, opts, func(line []byte) error {
		got = append(got, decisionID(t, line))
		return nil
	})
	return got, err
}

func decisionID(t *testing.T, line []byte) string {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		t.Errorf("emitted line %q: %v", line, err)
	}
	return r.DecisionID
}

func TestTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lineLen := int64(len(readLinesOf(t, dir, 1)[0]))
	// Files of 3, 3 and 1 records.
	writeRecords(t, path, &FileOptions{MaxBytes: 3 * lineLen, Now: fakeClock()}, 1, 7)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"ts":`) // a torn line is never emitted
	f.Close()

	tests := []struct {
		n    int
		want []string
	}{
		{0, nil},
		{1, ids(7, 7)},
		{2, ids(6, 7)},
		{5, ids(3, 7)},
		{10, ids(1, 7)},
	}
	for _, tt := range tests {
		got, err := decisionIDs(t, path, &TailOptions{Lines: tt.n})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Tail -n %d (-want +got):\n%s", tt.n, diff)
		}
	}
	if _, err := decisionIDs(t, filepath.Join(dir, "nope.log"), &TailOptions{Lines: 1}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Tail of a missing file = %v", err)
	}
}

// TestTailFollow follows a log while it is written and rotated: every
// record is emitted once, in order.
func TestTailFollow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lineLen := int64(len(readLinesOf(t, dir, 1)[0]))
	writeRecords(t, path, nil, 1, 3)

	seen, stop := following(t, path, &TailOptions{Lines: 2, Follow: true, Poll: time.Millisecond})
	waitFor(t, "backlog", func() bool { return len(seen()) == 2 })

	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 4 * lineLen, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 4; i <= 20; i++ {
		if err := d.Write(testRecord(i)); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			waitFor(t, "record "+ids(i, i)[0], func() bool { return len(seen()) == i-1 })
		}
	}
	d.Close()
	waitFor(t, "all records", func() bool { return len(seen()) == 19 })
	stop()
	if diff := cmp.Diff(ids(2, 20), seen()); diff != "" {
		t.Errorf("followed (-want +got):\n%s", diff)
	}
	if files, _ := ChainFiles(path); len(files) < 4 {
		t.Errorf("only %d files; the test meant to follow several rotations", len(files))
	}
}

func TestTailFollowShrink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeRecords(t, path, nil, 1, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	emitted := make(chan struct{}, 10)
	done := make(chan error)
	go func() {
		done <- Tail(ctx, path, &TailOptions{Lines: 1, Follow: true, Poll: time.Millisecond}, func([]byte) error {
			emitted <- struct{}{}
			return nil
		})
	}()
	<-emitted
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Errorf("Tail = %v, want an error about the file shrinking", err)
	}
}

// Several rotations between two polls: the files rotated in between are
// read too, in order.
func TestTailFollowSeveralRotationsPerPoll(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lineLen := int64(len(readLinesOf(t, dir, 1)[0]))
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 2 * lineLen, Now: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(testRecord(1)); err != nil {
		t.Fatal(err)
	}
	seen, stop := following(t, path, &TailOptions{Lines: 1, Follow: true, Poll: 200 * time.Millisecond})
	// Once the backlog is read the first file is open.
	waitFor(t, "backlog", func() bool { return len(seen()) == 1 })
	for i := 2; i <= 12; i++ { // five rotations, faster than a poll
		if err := d.Write(testRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	waitFor(t, "all records", func() bool { return len(seen()) >= 12 })
	stop()
	if diff := cmp.Diff(ids(1, 12), seen()); diff != "" {
		t.Errorf("followed (-want +got):\n%s", diff)
	}
}

// The log rotates while path is missing (renamed, not yet made anew) at a
// poll, and once more before the next: the file in between is read too.
func TestTailFollowRotationWhilePathMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lines := readLinesOf(t, dir, 6)
	put := func(name string, from, to int) { // a file of records from..to
		t.Helper()
		if err := os.WriteFile(name, []byte(strings.Join(lines[from-1:to], "")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put(path, 1, 2)
	seen, stop := following(t, path, &TailOptions{Lines: 10, Follow: true, Poll: 20 * time.Millisecond})
	waitFor(t, "backlog", func() bool { return len(seen()) == 2 })

	if err := os.Rename(path, rotatedName(path, epoch.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // polls find path missing
	put(path, 3, 4)
	if err := os.Rename(path, rotatedName(path, epoch.Add(2*time.Second))); err != nil {
		t.Fatal(err)
	}
	put(path, 5, 6)
	waitFor(t, "the last file", func() bool { return slices.Contains(seen(), "d6") })
	stop()
	if diff := cmp.Diff(ids(1, 6), seen()); diff != "" {
		t.Errorf("followed (-want +got):\n%s", diff)
	}
}

// following tails path with opts in the background. seen returns the
// decision ids emitted so far; stop ends the tail, failing the test on its
// error.
func following(t *testing.T, path string, opts *TailOptions) (seen func() []string, stop func()) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Tail(ctx, path, opts, func(line []byte) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, decisionID(t, line))
			return nil
		})
	}()
	seen = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	return seen, stop
}
