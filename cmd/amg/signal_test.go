package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/syncbuf"
	"github.com/amgateway/amg/internal/tokens"
)

// TestAmgProcess is no test: run by runAmg, it is amg, with the arguments
// of AMG_PROCESS_ARGS (one a line).
func TestAmgProcess(t *testing.T) {
	args, ok := os.LookupEnv("AMG_PROCESS_ARGS")
	if !ok {
		return
	}
	os.Args = append([]string{"amg"}, strings.Split(args, "\n")...)
	main()
}

// runAmg starts this test binary as amg with args, in its own process, so
// that signals reach main as they reach the real command.
func runAmg(t *testing.T, args ...string) (*exec.Cmd, *syncbuf.Buffer, *syncbuf.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestAmgProcess$")
	cmd.Env = append(os.Environ(), "AMG_PROCESS_ARGS="+strings.Join(args, "\n"))
	var stdout, stderr syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, &stdout, &stderr
}

// A terminal hang-up (SIGHUP: the terminal running `make run` closed, an
// ssh session dropped) shuts amg serve down as SIGINT and SIGTERM do, not
// at once: the dev token is revoked.
func TestServeShutsDownGracefullyOnEverySignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			dataDir := t.TempDir()
			cmd, stdout, stderr := runAmg(t, "serve", "--dev", "--listen", "127.0.0.1:0", "--authz-listen", "127.0.0.1:0",
				"--admin-listen", "127.0.0.1:0", "--policy-dir", "../../policies", "--data-dir", dataDir)
			for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stderr.String(), "msg=serving"); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("serve did not start:\n%s", stderr.String())
				}
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("after %v, serve exited: %v\n%s", sig, err, stderr.String())
			}
			d, err := tokens.Parse(strings.TrimSpace(stdout.String()))
			if err != nil {
				t.Fatal(err)
			}
			_, out, _ := runCLI(t, "token", "list", "--data-dir", dataDir)
			var line string
			for l := range strings.Lines(out) {
				if strings.HasPrefix(l, d.ID()) {
					line = strings.TrimSpace(l)
				}
			}
			if !strings.HasSuffix(line, "revoked") {
				t.Errorf("after %v the dev token is %q, want it revoked; stderr:\n%s", sig, line, stderr.String())
			}
		})
	}
}
