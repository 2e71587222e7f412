package gateway

import (
	"context"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/store"
	"github.com/amgateway/amg/internal/tokens"
)

// A second gateway on a data directory in use is refused before it writes
// anything there, with an error naming the directory and the process that
// holds it; the token commands' database stays usable beside the running
// gateway; and once the first gateway closes, the directory is free again,
// as it is after a New that took it and then failed.
func TestSecondGatewayOnADataDirInUseIsRefused(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	// The lock is New's to take and Close's to release; nothing need be
	// served (and Close must not run beside Serve).
	first, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(cfg.DataDir, LockFile)
	if fi, err := os.Stat(lock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v, %v; want mode 0600", fi, err)
	}
	before, err := os.ReadFile(filepath.Join(cfg.DataDir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}

	second := *cfg
	second.Listen, second.AuthzListen, second.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	gw, err := New(&second, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	want := "data directory " + cfg.DataDir + " is in use by another amg serve (process " + strconv.Itoa(os.Getpid()) +
		", which holds " + lock + "): give each gateway a data directory of its own"
	if err == nil {
		gw.Close()
		t.Fatal("a second gateway started on a data directory in use")
	} else if err.Error() != want {
		t.Errorf("second gateway: %v\nwant: %s", err, want)
	}
	if after, err := os.ReadFile(filepath.Join(cfg.DataDir, audit.FileName)); err != nil || string(after) != string(before) {
		t.Errorf("the refused gateway changed audit.log (%v)", err)
	}

	// amg token issue opens the database beside the running gateway.
	db, err := store.Open(filepath.Join(cfg.DataDir, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := tokens.NewSQLiteStore(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tokens.Issue(context.Background(), st, "cli", "notion_editor", time.Hour, time.Now()); err != nil {
		t.Errorf("issue a token beside the running gateway: %v", err)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// Without the demo built in, New fails after it has locked the
	// directory, and must give it back. The garbage collector would close
	// a lock file left open, and hide that it was: it is held off.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	if gw, err := New(&second, nil); err == nil {
		gw.Close()
		t.Fatal("a gateway without the builtin its config names started")
	}
	again, err := New(&second, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatalf("after the first gateway closed and a New failed: %v", err)
	}
	again.Close()
}
