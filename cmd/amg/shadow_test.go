package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/store"
)

func TestShadowReport(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	counter, err := shadow.NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	yesterday := now.AddDate(0, 0, -1)
	for _, add := range []struct {
		role           string
		at             time.Time
		calls, denials int64
	}{
		{"trial", now, 7, 3}, {"trial", yesterday, 20, 12}, {"support", yesterday, 1, 1},
		{"quiet", now, 9, 0}, {"old", now.AddDate(0, 0, -30), 5, 5},
	} {
		if err := counter.Add(context.Background(), add.role, add.at, add.calls, add.denials); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	code, stdout, stderr := runCLI(t, "shadow", "report", "--data-dir", dir, "--days", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	y, d := yesterday.Format("01-02"), now.Format("01-02")
	want := fmt.Sprintf("ROLE     %s  %s  TOTAL  CALLS\nquiet    0      0      0      9\nsupport  1      0      1      1\ntrial    12     3      15     27\n", y, d)
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}

	code, stdout, _ = runCLI(t, "shadow", "report", "--data-dir", dir, "--days", "1")
	if code != 0 || !strings.Contains(stdout, "trial  3      3      7") || strings.Contains(stdout, "support") {
		t.Errorf("one-day report:\n%s", stdout)
	}
}

func TestShadowReportErrors(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runCLI(t, "shadow", "report", "--data-dir", dir)
	if want := "amg: no database at " + filepath.Join(dir, dbFile) + " (see --data-dir)\n"; code != 1 || stderr != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr, want)
	}
	code, _, stderr = runCLI(t, "shadow", "report", "--data-dir", dir, "--days", "0")
	if code != 1 || stderr != "amg: --days must be between 1 and 366, got 0\n" {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}
