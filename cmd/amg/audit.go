package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/audit"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Inspect the audit log",
	}
	cmd.AddCommand(newAuditVerifyCmd(), newAuditTailCmd())
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "verify [--data-dir DIR | FILE...]",
		Short: "Check the hash chain of audit files",
		Long: `Check the hash chain of the given audit files, oldest first, including its
continuity from one file to the next. Without FILE, check every file of the
audit log in the data directory: its rotated files, then audit.log.

Prints "ok: N records, last hash H" and exits 0 if the chain is intact; keep H
elsewhere to detect a later rewrite of the whole log. Otherwise prints the
first broken record as file:line: what is wrong, and exits 1.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			files := args
			if len(files) == 0 {
				var err error
				if files, err = audit.ChainFiles(filepath.Join(dataDir, audit.FileName)); err != nil {
					return err
				}
				if len(files) == 0 {
					return fmt.Errorf("no audit log in %s", dataDir)
				}
			} else if cmd.Flags().Changed("data-dir") {
				return errors.New("give either FILE arguments or --data-dir, not both")
			}
			res, err := audit.Verify(files...)
			for _, w := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			var broken *audit.ChainError
			if errors.As(err, &broken) {
				fmt.Fprintln(cmd.ErrOrStderr(), broken)
				return exitError{code: 1}
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case res.Records == 0:
				fmt.Fprintln(out, "ok: 0 records")
			case res.FirstSeq == 1:
				fmt.Fprintf(out, "ok: %d record%s, last hash %s\n", res.Records, plural(res.Records), res.LastHash)
			default:
				// The files continue an older chain that was not given, or
				// whose first files were removed: say so rather than imply
				// the whole history was checked.
				fmt.Fprintf(out, "ok: %d record%s (seq %d to %d, continuing from prev %s), last hash %s\n",
					res.Records, plural(res.Records), res.FirstSeq, res.LastSeq, res.FirstPrev, res.LastHash)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./data", "data directory holding audit.log")
	return cmd
}

func newAuditTailCmd() *cobra.Command {
	var dataDir, redisAddr string
	var follow bool
	var lines int
	cmd := &cobra.Command{
		Use:   "tail [--data-dir DIR | FILE | --redis ADDR]",
		Short: "Print the last audit records, and follow new ones with -f",
		Long: `Print the last N records of the audit log (FILE, or audit.log in the data
directory) as JSON lines, reaching back into rotated files if needed. With -f,
keep printing records as they are written, across rotations, until
interrupted. With --redis, the records are those every replica sharing that
Redis ships there, in the order they arrived, each with "replica" first:
every replica numbers and chains its own records.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := filepath.Join(dataDir, audit.FileName)
			if len(args)+btoi(cmd.Flags().Changed("data-dir"))+btoi(redisAddr != "") > 1 {
				return errors.New("give one of FILE, --data-dir and --redis")
			}
			if len(args) == 1 {
				path = args[0]
			}
			if lines < 0 {
				return fmt.Errorf("-n must not be negative, got %d", lines)
			}
			out := cmd.OutOrStdout()
			emit := func(line []byte) error {
				_, err := fmt.Fprintf(out, "%s\n", line)
				return err
			}
			if redisAddr != "" {
				client, err := redisClient(redisAddr)
				if err != nil {
					return err
				}
				defer client.Close()
				return audit.NewStream(client, nil).Tail(cmd.Context(), lines, follow, emit)
			}
			if _, err := os.Stat(path); follow && errors.Is(err, fs.ErrNotExist) {
				// Following waits for the log to appear, which a mistyped
				// path never does: say what is awaited.
				fmt.Fprintf(cmd.ErrOrStderr(), "amg: %s does not exist yet; waiting for it (is the path or --data-dir right?)\n", path)
			}
			return audit.Tail(cmd.Context(), path, &audit.TailOptions{Lines: lines, Follow: follow}, emit)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./data", "data directory holding audit.log")
	cmd.Flags().StringVar(&redisAddr, "redis", "", redisFlagHelp+": the records every replica shipped there")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing records as they are written")
	cmd.Flags().IntVarP(&lines, "lines", "n", 10, "number of records to print first")
	return cmd
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
