package audit

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// KeySize is the length of the HMAC key in bytes.
const KeySize = 32

// LoadOrCreateKey returns the install's redaction HMAC key stored at path,
// creating it (KeySize random bytes, mode 0600, directory 0700) if there is
// no file. It refuses a file of the wrong length or one that others than its
// owner may access: a key anyone can read lets anyone confirm a guessed
// secret against the audit log.
//
// The key must outlive the audit files: with a new key, equal values no
// longer give equal HMACs across the change.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := loadKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	// O_EXCL: if another process created the key meanwhile, use its key
	// rather than overwrite one that may already be in use.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return loadKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	_, err = f.Write(key)
	err = errors.Join(err, f.Sync(), f.Close())
	if err != nil {
		// A short key file would be refused at the next start; leave none.
		os.Remove(path)
		return nil, fmt.Errorf("audit key: write %s: %w", path, err)
	}
	syncDir(path)
	return key, nil
}

func loadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("audit key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("audit key: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("audit key: %s has mode %04o; it must not be accessible to group or others (chmod 600)", path, perm)
	}
	if fi.Size() != KeySize {
		return nil, fmt.Errorf("audit key: %s is %d bytes, want %d", path, fi.Size(), KeySize)
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("audit key: read %s: %w", path, err)
	}
	return key, nil
}
