package gateway

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/syncbuf"
)

// waitFor polls cond until it holds, failing the test after a generous
// hang guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// A change to the config file's envoy section reaches Envoy without a
// restart; a file that does not load changes nothing, and the next good
// one is served.
func TestEnvoyConfigFollowsTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "amg.yaml")
	write := func(brokers string) {
		t.Helper()
		src := "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nauthz_listen: 127.0.0.1:0\nxds_listen: 127.0.0.1:0\n" +
			"data_dir: " + filepath.Join(dir, "data") + "\npolicy_dir: ../../policies\n" +
			"envoy:\n  authz_address: amg:9001\n  broker_addresses: [" + brokers + "]\n"
		if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("amg-0.amg:8082")
	cfg, err := config.Load(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	gw := serveForTest(t, cfg, &Options{ConfigFile: file,
		PolicyReload: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})

	first := gw.XDSVersion()
	if first == "" {
		t.Fatal("no Envoy config served at start")
	}
	write("amg-0.amg:8082, amg-1.amg:8082")
	waitFor(t, "the added broker replica to reach Envoy", func() bool { return gw.XDSVersion() != first })
	second := gw.XDSVersion()

	if err := os.WriteFile(file, []byte("envoy: [not, a, mapping\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the broken file to be reported", func() bool { return strings.Contains(logs.String(), "does not load") })
	if v := gw.XDSVersion(); v != second {
		t.Errorf("a file that does not load changed the Envoy config: %s, was %s", v, second)
	}
	write("amg-0.amg:8082")
	waitFor(t, "the next good file to reach Envoy", func() bool { return gw.XDSVersion() != second })
}

// downSource is a secret source whose backend (Vault, say) can be down.
type downSource struct{ down atomic.Bool }

func (d *downSource) Resolve(context.Context, secrets.Ref) (secrets.Secret, error) {
	if d.down.Load() {
		return secrets.Secret{}, errors.New("connection refused")
	}
	return secrets.New("s3cret"), nil
}

// envoyConfigFile writes a config file naming a secret, whose envoy
// section has the given broker addresses, to file.
func envoyConfigFile(t *testing.T, file, brokers string) {
	t.Helper()
	dir := filepath.Dir(file)
	src := "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nauthz_listen: 127.0.0.1:0\nxds_listen: 127.0.0.1:0\n" +
		"data_dir: " + filepath.Join(dir, "data") + "\npolicy_dir: ../../policies\n" +
		"approvals:\n  webhook: https://hooks.example.com/${vault:kv/data/amg#hook}\n" +
		"envoy:\n  authz_address: amg:9001\n  broker_addresses: [" + brokers + "]\n"
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Envoy's config holds no secret, so a change to the envoy section
// reaches Envoy while the secret backend is down: taking it does not
// resolve the file's secrets, which would fail.
func TestEnvoyConfigChangeNeedsNoSecrets(t *testing.T) {
	file := filepath.Join(t.TempDir(), "amg.yaml")
	envoyConfigFile(t, file, "amg-0.amg:8082")
	src := &downSource{}
	cfg, err := config.Load(file, &config.Options{Secrets: src})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	gw := serveForTest(t, cfg, &Options{ConfigFile: file, Secrets: src,
		PolicyReload: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	first := gw.XDSVersion()

	src.down.Store(true)
	envoyConfigFile(t, file, "amg-0.amg:8082, amg-1.amg:8082")
	waitFor(t, "the added broker replica to reach Envoy", func() bool {
		return gw.XDSVersion() != first || strings.Contains(logs.String(), "does not load")
	})
	if gw.XDSVersion() == first {
		t.Errorf("a change to the envoy section was refused while the secret backend was down:\n%s", logs)
	}
}

// A file whose envoy section does not load is reported once, not at every
// reread, and the next good file is served.
func TestBadEnvoyConfigReportedOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "amg.yaml")
	envoyConfigFile(t, file, "amg-0.amg:8082")
	cfg, err := config.Load(file, &config.Options{Secrets: &downSource{}})
	if err != nil {
		t.Fatal(err)
	}
	const reload = 20 * time.Millisecond
	logs := &syncbuf.Buffer{}
	gw := serveForTest(t, cfg, &Options{ConfigFile: file, Secrets: &downSource{},
		PolicyReload: reload, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	first := gw.XDSVersion()

	envoyConfigFile(t, file, "http://amg-1.amg:8082")
	waitFor(t, "the bad envoy section to be reported", func() bool { return strings.Contains(logs.String(), "does not load") })
	time.Sleep(10 * reload) // the file is reread, unchanged, several times
	if !strings.Contains(logs.String(), "broker_addresses") {
		t.Errorf("the report does not say what is wrong:\n%s", logs)
	}
	envoyConfigFile(t, file, "amg-0.amg:8082, amg-1.amg:8082")
	waitFor(t, "the next good file to reach Envoy", func() bool { return gw.XDSVersion() != first })
	if n := strings.Count(logs.String(), "does not load"); n != 1 {
		t.Errorf("a bad envoy section reported %d times, want once:\n%.2000s", n, logs)
	}
}

// New fails cleanly, closing what it opened, when part of the gateway
// cannot be built.
func TestNewFailsCleanly(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir, cfg.PolicyDir = t.TempDir(), "../../policies"
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), `no built-in server "demo"`) {
		t.Errorf("New without the demo built in: %v", err)
	}
}

// loopbackConfig is the default config with every listener on a free
// loopback port, a fresh data directory and the roles in policyDir.
func loopbackConfig(t *testing.T, policyDir string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = t.TempDir(), policyDir
	return cfg
}

// serveForTest builds a gateway for cfg (with the demo server built in
// unless opts says otherwise), serves it until the test ends, and checks
// that it then stops cleanly.
func serveForTest(t *testing.T, cfg *config.Config, opts *Options) *Gateway {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	if opts.Builtins == nil {
		opts.Builtins = Builtins{"demo": demo.NewServer(nil).MCP()}
	}
	gw, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		gw.Close()
	})
	return gw
}
