package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// exitError carries an exit code for a failure already reported to the
// user, so run does not print it a second time.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run executes the CLI and returns the process exit code. Tests call it
// directly with their own arguments and writers.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	var exit exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	default:
		fmt.Fprintln(stderr, "amg:", err)
		return 1
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "amg",
		Short:         "AMG: a default-deny, policy-enforcing gateway for the Model Context Protocol",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newClientCmd(), newDemoCmd(), newHealthCmd(), newApprovalsCmd(), newVersionCmd(), newPolicyCmd(), newTokenCmd(), newAuditCmd(), newShadowCmd(), newReplayCmd())
	return root
}
