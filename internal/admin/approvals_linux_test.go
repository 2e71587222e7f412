package admin

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A token file that cannot be written leaves nothing behind, so the next
// start creates one instead of failing on an empty file. Writes are made to
// fail with a file size limit of 0, which holds for root too; the runtime
// ignores the SIGXFSZ that comes with it.
func TestLoadOrCreateTokenWriteFails(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.token")
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 0, Max: lim.Max}); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateToken(path)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "file too large") {
		t.Fatalf("writing under a file size limit of 0: %v", err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("left behind %v (%v); want an empty directory", ents, err)
	}
	if tok, err := LoadOrCreateToken(path); err != nil || !strings.HasPrefix(tok, TokenPrefix) {
		t.Errorf("after the failure: %q, %v", tok, err)
	}
}
