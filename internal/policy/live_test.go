package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLiveKeepsLastGoodSet(t *testing.T) {
	dir := t.TempDir()
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "r.yaml"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l := NewLive(dir, nil)
	if err := l.Reload(); err == nil || l.Current() != nil {
		t.Fatalf("empty directory: err %v, set %v; want an error and no set", err, l.Current())
	}

	write("role: a\n")
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	first := l.Current()
	if first == nil || first.Version().Seq != 1 {
		t.Fatalf("first load: %v", first)
	}
	if err := l.Reload(); err != nil || l.Current() != first {
		t.Fatalf("unchanged reload replaced the set (err %v)", err)
	}

	write("role: a\nmode: sideways\n")
	if err := l.Reload(); err == nil {
		t.Fatal("broken policy reloaded without error")
	}
	if l.Current() != first {
		t.Fatal("a broken reload replaced the last good set")
	}
	if st := l.Status(); st.Err == nil || st.Version != first.Version() {
		t.Errorf("status after a failed reload = %+v", st)
	}

	write("role: a\nmode: shadow\n")
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	if v := l.Current().Version(); v.Seq != 2 || v.Hash == first.Version().Hash {
		t.Errorf("version after a good change = %v, want sequence 2 and a new hash", v)
	}
}

// A live reload checks grants against what the upstreams list, on the
// servers listed now (one not reached yet is not checked), and reports
// what does not fit without holding the reload back: an upstream that
// dropped a tool must not stop the operator from revoking another grant.
func TestLiveChecksAgainstTheUpstreams(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	write := func(tools string) {
		t.Helper()
		role := "role: a\nservers:\n  notion:\n    tools:\n      - name: get_page\n" + tools + "  github:\n    tools:\n      - name: list_repos\n"
		if err := os.WriteFile(file, []byte(role), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("      - name: delete_page\n")
	l := NewLive(dir, nil)
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	l.CheckAgainst(notionCatalog) // github is not listed: not reached yet
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	want := file + `:5:9: servers.notion.tools[0]: server "notion" has no tool "get_page"`
	if st := l.Status(); st.Misfits == nil || st.Misfits.Error() != want {
		t.Errorf("misfits = %v, want %s", st.Misfits, want)
	}

	write("") // delete_page revoked; get_page still misfits
	if err := l.Reload(); err != nil {
		t.Fatalf("a revocation was held back: %v", err)
	}
	if _, granted := l.Current().Role("a"); !granted {
		t.Fatal("role a is gone")
	}
	if r, _ := l.Current().Role("a"); r.Servers["notion"].Tools["delete_page"] != nil {
		t.Error("delete_page is still granted after the reload")
	}
	if st := l.Status(); st.Misfits == nil || st.Misfits.Error() != want {
		t.Errorf("misfits after the revocation = %v, want %s", st.Misfits, want)
	}
}

// Watch reports a failure that stands once, and again when it changes.
func TestWatchReportsAStandingFailureOnce(t *testing.T) {
	dir := t.TempDir()
	// Written whole, by rename: a reload never reads half a file.
	write := func(src string) {
		tmp := filepath.Join(t.TempDir(), "r.yaml")
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Error(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "r.yaml")); err != nil {
			t.Error(err)
		}
	}
	write("role: a\nmode: sideways\n")
	l := NewLive(dir, nil)
	reports := make(chan Status, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Watch(ctx, time.Millisecond, func(st Status) { reports <- st }); close(done) }()
	next := func() Status {
		t.Helper()
		select {
		case st := <-reports:
			return st
		case <-time.After(10 * time.Second):
			t.Fatal("no report")
			return Status{}
		}
	}
	if st := next(); st.Err == nil {
		t.Fatalf("first report: %+v, want the failure", st)
	}
	time.Sleep(50 * time.Millisecond) // some fifty reloads, failing alike
	write("role: a\nmode: upside-down\n")
	if st := next(); st.Err == nil || !strings.Contains(st.Err.Error(), "upside-down") {
		t.Fatalf("report after the failure changed: %+v", st)
	}
	write("role: a\n")
	if st := next(); st.Err != nil {
		t.Fatalf("report after the fix: %+v", st)
	}
	cancel()
	<-done
	if len(reports) != 0 {
		t.Errorf("%d more reports, want none", len(reports))
	}
}

// Watch takes a change once the directory has held still for a look: a
// file caught while being written, here cut short before its approval
// rule, or empty after its truncation, is neither served nor reported
// unless the next look finds it so too.
func TestWatchTakesSettledChanges(t *testing.T) {
	dir := t.TempDir()
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "r.yaml"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const full = "role: a\nservers:\n  notion:\n    tools:\n      - name: delete_page\n" +
		"approvals:\n  - match: \"delete*\"\n    require: human\n"
	write(full)
	l := NewLive(dir, nil)
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	served := l.Current()
	var s settle
	look := func(what string, want bool) {
		t.Helper()
		if got := l.look(&s); got != want {
			t.Fatalf("%s: look took it %v, want %v", what, got, want)
		}
	}

	cut := full[:strings.Index(full, "approvals:")]
	if _, err := Compile([]File{{Name: "r.yaml", Data: []byte(cut)}}, nil); err != nil {
		t.Fatalf("the cut file does not compile, so it would not be served anyway: %v", err)
	}
	write(cut)
	look("a file cut before its approval rule", false)
	if l.Current() != served || l.Status().Err != nil {
		t.Fatalf("a file seen cut short once was served: %v, %v", l.Current().Version(), l.Status().Err)
	}
	write(full)
	look("the whole file again", true)
	write("")
	look("an empty file", false)
	if l.Current() != served || l.Status().Err != nil {
		t.Fatalf("an empty file seen once was served or reported: %v, %v", l.Current().Version(), l.Status().Err)
	}

	write(strings.Replace(full, "role: a\n", "role: a\nmode: shadow\n", 1))
	look("a change, first seen", false)
	look("the change, seen again", true)
	if v := l.Current().Version(); v.Seq != 2 || v.Hash == served.Version().Hash {
		t.Errorf("version after a settled change = %v, want sequence 2 and a new hash", v)
	}
	write("role: a\nmode: sideways\n")
	look("a broken file, first seen", false)
	if l.Status().Err != nil {
		t.Fatalf("a broken file seen once was reported: %v", l.Status().Err)
	}
	look("the broken file, seen again", true)
	if l.Status().Err == nil {
		t.Error("a broken file seen twice was not reported")
	}
}
