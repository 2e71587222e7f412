// Command amg is the AMG gateway and its operator CLI.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// shutdownSignals end amg serve gracefully. SIGHUP is among them: it is
// how a terminal that closes (an ssh session dropped, the window of
// `make run` shut) ends what runs in it, and its default action would
// kill the gateway at once, leaving its dev token valid and its audit
// queue unwritten.
var shutdownSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), shutdownSignals...)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
