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
	f, fi, err := OpenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	defer f.Close()
	if fi.Size() != KeySize {
		// A start that stopped (a crash, a power loss) between creating
		// the file and writing the key leaves it short, before any record
		// was written with it. Nothing is removed here: records written
		// with a key that is gone keep HMACs nothing can match again.
		return nil, fmt.Errorf("audit key: %s is %d bytes, want %d; if the audit log is absent or empty, no record was written with it "+
			"(a first start stopped while making it): remove the file, and a new key is made; else restore the key from a backup", path, fi.Size(), KeySize)
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("audit key: read %s: %w", path, err)
	}
	return key, nil
}

// OpenPrivate opens the file at path for reading if it is as a file
// holding a key or a token must be: a regular file that only its owner
// may access. Another is refused with an error that says why, naming the
// mode and the chmod that fixes it for one others may access; a missing
// file's error matches os.ErrNotExist.
func OpenPrivate(path string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		err = fmt.Errorf("%s has mode %04o; it must not be accessible to group or others (chmod 600)", path, fi.Mode().Perm())
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}
