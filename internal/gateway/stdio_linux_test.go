package gateway

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// A gateway that dies without shutting down (SIGKILL, out of memory)
// takes its stdio servers with it, by their parent-death signal, and the
// next gateway on its data directory kills what they started.
func TestStdioProcessesEndWithACrashedGateway(t *testing.T) {
	if dir := os.Getenv("AMG_TEST_CRASHING_GATEWAY"); dir != "" {
		groups := newStdioGroups(slog.New(slog.DiscardHandler))
		if err := groups.recordIn(dir); err != nil {
			t.Fatal(err)
		}
		_, server, child := startStdio(t, groups, "testdata/stubborn-server.js")
		fmt.Println("PIDS", server, child)
		select {} // until killed
	}
	dir := t.TempDir()
	gateway := exec.Command(os.Args[0], "-test.run=^TestStdioProcessesEndWithACrashedGateway$")
	gateway.Env = append(os.Environ(), "AMG_TEST_CRASHING_GATEWAY="+dir)
	out, err := gateway.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := gateway.Start(); err != nil {
		t.Fatal(err)
	}
	var server, child int
	if _, err := fmt.Fscanf(bufio.NewReader(out), "PIDS %d %d\n", &server, &child); err != nil {
		gateway.Process.Kill()
		t.Fatal(err)
	}
	defer syscall.Kill(-server, syscall.SIGKILL) // whatever the test finds
	gateway.Process.Kill()
	gateway.Wait()
	waitEnded(t, server)
	if !running(child) {
		t.Fatalf("process %d, which nothing but the next gateway kills, has ended", child)
	}
	groups := newStdioGroups(slog.New(slog.DiscardHandler))
	defer groups.end()
	if err := groups.recordIn(dir); err != nil {
		t.Fatal(err)
	}
	waitEnded(t, child)
	// What was left is forgotten: the record holds this gateway's groups,
	// none.
	record, err := os.ReadFile(filepath.Join(dir, StdioGroupsFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := recordHead() + "\n"; string(record) != want {
		t.Errorf("record = %q, want %q", record, want)
	}
}

// The next gateway kills a recorded group only if it is still the one
// recorded, and its gateway is gone: a group of another boot, of another
// session, led by another process than its recorded leader, or with no
// process started since that leader may be another's, which took its id;
// and a record whose gateway still runs is that of a data directory
// copied beside a live gateway.
func TestStdioLeftGroupsKilledOnlyIfStillRecorded(t *testing.T) {
	session := procSession(os.Getpid())
	// The gateway that wrote the records: this process's id, but another
	// start time, hence a process that has ended.
	pid := os.Getpid()
	gone := fmt.Sprintf("%d %d", pid, procStart(pid)+1)
	for _, tt := range []struct {
		name   string
		record func(pgid int, start uint64) string
		killed bool
	}{
		{"recorded", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d %d\n", bootID(), session, gone, pgid, start)
		}, true},
		{"its gateway still runs", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s\n%d %d\n", recordHead(), pgid, start)
		}, false},
		{"another boot", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d %d\n", "another-boot", session, gone, pgid, start)
		}, false},
		{"another session", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d %d\n", bootID(), session+1, gone, pgid, start)
		}, false},
		{"leader started later", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d %d\n", bootID(), session, gone, pgid, start+1)
		}, false},
		{"leader started earlier", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d %d\n", bootID(), session, gone, pgid, start-1)
		}, false},
		{"torn", func(pgid int, start uint64) string {
			return fmt.Sprintf("%s %d %s\n%d", bootID(), session, gone, pgid)
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sleep := exec.Command("sleep", "60")
			sleep.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := sleep.Start(); err != nil {
				t.Fatal(err)
			}
			defer sleep.Wait()
			defer sleep.Process.Kill()
			pgid := sleep.Process.Pid
			got := killLeft(tt.record(pgid, procStart(pgid)))
			if tt.killed {
				if !slices.Equal(got, []int{pgid}) {
					t.Errorf("killed %v, want [%d]", got, pgid)
				}
				waitEnded(t, pgid)
			} else if got != nil {
				t.Errorf("killed %v, not the group recorded", got)
			}
		})
	}
}
