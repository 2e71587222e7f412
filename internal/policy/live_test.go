package policy

import (
	"os"
	"path/filepath"
	"testing"
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
