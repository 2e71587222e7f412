package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/secrets/vaulttest"
)

func TestDefaultSource(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		// Explicitly, since WriteFile's mode is filtered by the umask.
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := write("token", planted+"\n", 0o600)
	crlf := write("crlf", planted+"\r\n", 0o400)
	twoNL := write("two", planted+"\n\n", 0o600)
	noNL := write("nonl", planted, 0o600)
	empty := write("empty", "\n", 0o600)
	group := write("group", planted+"\n", 0o640)
	other := write("other", planted+"\n", 0o604)
	big := write("big", strings.Repeat("x", maxFileSize+1), 0o600)

	env := map[string]string{"NOTION_TOKEN": planted, "EMPTY": ""}
	src := NewDefault(&Options{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})

	for _, tc := range []struct {
		name     string
		ref      Ref
		want     string
		wantErr  string
		notFound bool
	}{
		{name: "env", ref: Ref{"env", "NOTION_TOKEN"}, want: planted},
		{name: "env missing", ref: Ref{"env", "MISSING"}, wantErr: "env:MISSING is not set", notFound: true},
		{name: "env empty", ref: Ref{"env", "EMPTY"}, wantErr: "env:EMPTY is empty", notFound: true},
		{name: "env invalid", ref: Ref{"env", "A-B"}, wantErr: `env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{name: "file", ref: Ref{"file", token}, want: planted},
		{name: "file crlf", ref: Ref{"file", crlf}, want: planted},
		{name: "file one newline trimmed", ref: Ref{"file", twoNL}, want: planted + "\n"},
		{name: "file no newline", ref: Ref{"file", noNL}, want: planted},
		{name: "file empty", ref: Ref{"file", empty}, wantErr: "file:" + empty + " is empty", notFound: true},
		{name: "file missing", ref: Ref{"file", filepath.Join(dir, "nope")}, wantErr: "file:" + filepath.Join(dir, "nope") + " does not exist", notFound: true},
		{name: "file directory", ref: Ref{"file", dir}, wantErr: "file:" + dir + " is not a regular file"},
		{name: "file too big", ref: Ref{"file", big}, wantErr: "file:" + big + " is larger than 64 KiB; a secret file holds one value"},
		{name: "vault", ref: Ref{"vault", "kv/data/notion#token"}, wantErr: "vault:kv/data/notion#token: vault secrets need a vault source"},
		{name: "unknown scheme", ref: Ref{"aws", "x"}, wantErr: `secret reference has unknown scheme "aws" (expected env, file or vault)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := src.Resolve(context.Background(), tc.ref)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("Resolve(%s) error = %v, want %s", tc.ref, err, tc.wantErr)
				}
				if errors.Is(err, ErrNotFound) != tc.notFound {
					t.Errorf("errors.Is(err, ErrNotFound) = %v, want %v", !tc.notFound, tc.notFound)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%s): %v", tc.ref, err)
			}
			if got.Reveal() != tc.want {
				t.Errorf("Resolve(%s) = %q, want %q", tc.ref, got.Reveal(), tc.want)
			}
		})
	}

	if runtime.GOOS != "windows" {
		for _, tc := range []struct {
			path string
			mode string
		}{{group, "0640"}, {other, "0604"}} {
			_, err := src.Resolve(context.Background(), Ref{"file", tc.path})
			want := "file:" + tc.path + " has mode " + tc.mode + ", which lets group or others access it; make it readable by its owner only (chmod 600)"
			if err == nil || err.Error() != want {
				t.Errorf("Resolve(file:%s) error = %v, want %s", tc.path, err, want)
			}
		}
		if os.Getuid() != 0 {
			unreadable := write("unreadable", planted, 0o200)
			_, err := src.Resolve(context.Background(), Ref{"file", unreadable})
			want := "file:" + unreadable + ": permission denied"
			if err == nil || err.Error() != want || !errors.Is(err, os.ErrPermission) {
				t.Errorf("Resolve(unreadable) error = %v, want %s wrapping os.ErrPermission", err, want)
			}
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := src.Resolve(ctx, Ref{"env", "NOTION_TOKEN"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Resolve with cancelled context: %v, want context.Canceled", err)
	}
}

func TestDefaultSourceProcessEnv(t *testing.T) {
	t.Setenv("AMG_SECRETS_TEST_TOKEN", planted)
	got, err := NewDefault(nil).Resolve(context.Background(), Ref{"env", "AMG_SECRETS_TEST_TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Reveal() != planted {
		t.Errorf("Resolve = %q, want the value", got.Reveal())
	}
}

func TestDefaultSourceWithVault(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "from-vault"})
	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(srv.RootToken)})

	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NOTION_TOKEN": "from-env"}
	src := NewDefault(&Options{
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		Vault:     v,
	})
	for ref, want := range map[string]string{
		"env:NOTION_TOKEN":               "from-env",
		"file:" + file:                   "from-file",
		"vault:kv/data/amg/notion#token": "from-vault",
	} {
		if got := resolve(t, src, ref); got != want {
			t.Errorf("Resolve(%s) = %q, want %q", ref, got, want)
		}
	}
	// Vault's errors come through unchanged.
	_, err := src.Resolve(context.Background(), Ref{"vault", "kv/data/amg/nope#token"})
	if !errors.Is(err, ErrNotFound) || !strings.HasPrefix(err.Error(), "vault:kv/data/amg/nope#token does not exist in Vault at ") {
		t.Errorf("Resolve(missing) error = %v", err)
	}
	if _, err := src.Resolve(context.Background(), Ref{"env", "MISSING"}); err == nil || err.Error() != "env:MISSING is not set" {
		t.Errorf("Resolve(env:MISSING) error = %v", err)
	}
}
