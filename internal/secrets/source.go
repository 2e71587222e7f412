package secrets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
)

// ErrNotFound is wrapped by Resolve errors for a secret that does not
// exist or is empty.
var ErrNotFound = errors.New("secret not found")

// Source resolves references to secrets. Implementations are safe for
// concurrent use and read the backing store on every call, or cache a
// value for a short bounded time (Vault: VaultOptions.CacheTTL), so a
// rotated secret is picked up by upstream connections made soon after.
// Errors name the reference and never contain a value.
type Source interface {
	Resolve(ctx context.Context, ref Ref) (Secret, error)
}

// Options tune the default source. A nil *Options is the zero value.
type Options struct {
	// LookupEnv looks up environment variables; nil means os.LookupEnv.
	LookupEnv func(name string) (string, bool)
	// Vault resolves vault references, normally a *Vault; nil refuses
	// them.
	Vault Source
}

// NewDefault returns the source the gateway uses: env and file references
// itself, vault references through opts.Vault. Without a Vault source,
// vault references are refused with an error saying one is needed, rather
// than failing later at an upstream.
//
// An environment variable that is set but empty counts as not found, as
// does an empty file: an empty credential is always a mistake and would
// otherwise surface as an upstream 401 far from its cause.
func NewDefault(opts *Options) Source {
	if opts == nil {
		opts = &Options{}
	}
	s := &defaultSource{lookupEnv: opts.LookupEnv, vault: opts.Vault}
	if s.lookupEnv == nil {
		s.lookupEnv = os.LookupEnv
	}
	return s
}

type defaultSource struct {
	lookupEnv func(string) (string, bool)
	vault     Source
}

var _ Source = (*defaultSource)(nil)

// maxFileSize bounds a secret file: it holds one value, and a larger file
// is almost certainly the wrong one.
const maxFileSize = 64 << 10

func (s *defaultSource) Resolve(ctx context.Context, ref Ref) (Secret, error) {
	if err := ctx.Err(); err != nil {
		return Secret{}, err
	}
	// A Ref built by hand gets the same checks as a parsed one.
	if _, err := ParseRef(ref.String()); err != nil {
		return Secret{}, err
	}
	switch ref.Scheme {
	case SchemeEnv:
		v, ok := s.lookupEnv(ref.Path)
		if !ok {
			return Secret{}, notFound(ref, "is not set")
		}
		if v == "" {
			return Secret{}, notFound(ref, "is empty")
		}
		return New(v), nil
	case SchemeFile:
		return readFile(ref)
	case SchemeVault:
		if s.vault != nil {
			return s.vault.Resolve(ctx, ref)
		}
		return Secret{}, fmt.Errorf("%s: vault secrets need a vault source", ref)
	}
	// Unreachable: ParseRef accepts no other scheme.
	return Secret{}, fmt.Errorf("%s: unsupported secret scheme", ref)
}

func readFile(ref Ref) (Secret, error) {
	// Stat before opening: opening a FIFO for reading would block.
	fi, err := os.Stat(ref.Path)
	if err != nil {
		return Secret{}, fileErr(ref, err)
	}
	if err := checkMode(ref, fi); err != nil {
		return Secret{}, err
	}
	f, err := os.Open(ref.Path)
	if err != nil {
		return Secret{}, fileErr(ref, err)
	}
	defer f.Close()
	// Again on the open file, in case the path was replaced meanwhile.
	if fi, err = f.Stat(); err != nil {
		return Secret{}, fileErr(ref, err)
	}
	if err := checkMode(ref, fi); err != nil {
		return Secret{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Secret{}, fileErr(ref, err)
	}
	if len(data) > maxFileSize {
		return Secret{}, fmt.Errorf("%s is larger than %d KiB; a secret file holds one value", ref, maxFileSize>>10)
	}
	// Editors and echo end files with a newline that is not part of the
	// value; only one is removed so that deliberate whitespace survives.
	v := string(data)
	if strings.HasSuffix(v, "\r\n") {
		v = v[:len(v)-2]
	} else {
		v = strings.TrimSuffix(v, "\n")
	}
	if v == "" {
		return Secret{}, notFound(ref, "is empty")
	}
	return New(v), nil
}

// checkMode refuses anything but a regular file only its owner can access:
// a credential others can read is already leaked.
func checkMode(ref Ref, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", ref)
	}
	// Windows has no such mode bits; Go reports 0666 for every file.
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s has mode %#o, which lets group or others access it; make it readable by its owner only (chmod 600)",
			ref, fi.Mode().Perm())
	}
	return nil
}

func fileErr(ref Ref, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return notFound(ref, "does not exist")
	}
	// The path is already in ref; keep only the cause.
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", ref, err)
}

// notFoundError reads "env:X is not set" rather than ending in ErrNotFound's
// own text, which the config loader shows to operators verbatim.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }
func (e *notFoundError) Unwrap() error { return ErrNotFound }

func notFound(ref Ref, what string) error {
	return &notFoundError{msg: ref.String() + " " + what}
}
