package toolsdir

import (
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	t.Setenv("AMG_TOOLS_DIR", "/opt/amg-tools")
	if dir, err := Dir(); err != nil || dir != "/opt/amg-tools" {
		t.Errorf("with AMG_TOOLS_DIR: %q, %v", dir, err)
	}
	t.Setenv("AMG_TOOLS_DIR", "")
	t.Setenv("HOME", "/home/ci")
	if dir, err := Dir(); err != nil || dir != filepath.Join("/home/ci", ".cache", "amg-tools") {
		t.Errorf("without AMG_TOOLS_DIR: %q, %v; want the cache under HOME", dir, err)
	}
}
