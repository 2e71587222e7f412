package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", KeyFileName)
	key, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != KeySize || bytes.Equal(key, make([]byte, KeySize)) {
		t.Fatalf("key %x, want %d random bytes", key, KeySize)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, again) {
		t.Error("second load returned a different key")
	}
	other, err := LoadOrCreateKey(filepath.Join(t.TempDir(), KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(key, other) {
		t.Error("two installs got the same key")
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string
	}{
		{"short", make([]byte, 16), 0o600, "is 16 bytes, want 32"},
		{"long", make([]byte, 33), 0o600, "is 33 bytes, want 32"},
		{"empty", nil, 0o600, "is 0 bytes, want 32; if the audit log is absent or empty, no record was written with it " +
			"(a first start stopped while making it): remove the file, and a new key is made; else restore the key from a backup"},
		{"group readable", make([]byte, 32), 0o640, "has mode 0640; it must not be accessible to group or others (chmod 600)"},
		{"world readable", make([]byte, 32), 0o604, "has mode 0604"},
		{"group writable", make([]byte, 32), 0o620, "has mode 0620"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), KeyFileName)
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateKey(path)
			if err == nil || !strings.Contains(err.Error(), path+" "+tt.want) {
				t.Errorf("LoadOrCreateKey = %v, want an error containing %q", err, tt.want)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, tt.content) {
				t.Error("refused key file was modified")
			}
		})
	}
}
