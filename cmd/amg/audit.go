package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/gateway"
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
	var dataDir, redisAddr, replica string
	var anchorFlags []string
	cmd := &cobra.Command{
		Use:   "verify [--data-dir DIR | FILE...] [--anchor SEQ:HASH]... [--redis ADDR]",
		Short: "Check the hash chain of audit files",
		Long: `Check the hash chain of the given audit files, oldest first, including its
continuity from one file to the next. Without FILE, check every file of the
audit log in the data directory: its rotated files, then audit.log.

Prints "ok: N records; anchor SEQ:HASH" (the last record's) and exits 0 if
the chain is intact.
Otherwise prints the first broken record as file:line: what is wrong, and
exits 1.

A chain checks out on its own even when records were cut from its end, or
its tail was rewritten and chained anew. Anchors, kept outside the files,
catch that: the chain must hold record SEQ with hash HASH. Take them from
this command's output, from the
gateway's log (last_seq and last_hash, logged at each rotation and at
shutdown), or, with --redis, from the Redis stream the replicas ship their
records to: the last record this replica shipped there (the replica named
in the data directory's replica.id, or --replica).`,
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
			anchors, err := verifyAnchors(cmd, anchorFlags, redisAddr, replica, dataDir)
			if err != nil {
				return err
			}
			res, err := audit.VerifyAnchored(anchors, files...)
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
				fmt.Fprintf(out, "ok: %d record%s; anchor %d:%s\n", res.Records, plural(res.Records), res.LastSeq, res.LastHash)
			default:
				// The files continue an older chain that was not given, or
				// whose first files were removed: say so rather than imply
				// the whole history was checked.
				fmt.Fprintf(out, "ok: %d record%s (seq %d to %d, continuing from prev %s); anchor %d:%s\n",
					res.Records, plural(res.Records), res.FirstSeq, res.LastSeq, res.FirstPrev, res.LastSeq, res.LastHash)
			}
			if len(anchors) > 0 {
				fmt.Fprintf(out, "%d of %d anchor%s checked\n", res.Anchored, len(anchors), plural(len(anchors)))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./data", "data directory holding audit.log (and replica.id)")
	cmd.Flags().StringArrayVar(&anchorFlags, "anchor", nil, "SEQ:HASH (or SEQ) of a record the chain must hold; repeatable")
	cmd.Flags().StringVar(&redisAddr, "redis", "", "also anchor at the last record this replica shipped to the audit stream in this Redis: "+redisFlagHelp)
	cmd.Flags().StringVar(&replica, "replica", "", "with --redis, the replica whose records the files are (default: the data directory's replica.id)")
	return cmd
}

// verifyAnchors returns the anchors audit verify checks: those of
// --anchor, and with --redis the head of the replica's shipped records.
func verifyAnchors(cmd *cobra.Command, flags []string, redisAddr, replica, dataDir string) ([]audit.Anchor, error) {
	var anchors []audit.Anchor
	for _, f := range flags {
		a, err := audit.ParseAnchor(f)
		if err != nil {
			return nil, fmt.Errorf("--anchor: %w", err)
		}
		anchors = append(anchors, a)
	}
	if redisAddr == "" {
		if replica != "" {
			return nil, errors.New("--replica goes with --redis")
		}
		return anchors, nil
	}
	if replica == "" {
		data, err := os.ReadFile(filepath.Join(dataDir, gateway.ReplicaIDFile))
		if err != nil {
			return nil, fmt.Errorf("--redis: which replica's records these are is in %s, or give --replica: %w",
				filepath.Join(dataDir, gateway.ReplicaIDFile), err)
		}
		replica = strings.TrimSpace(string(data))
	}
	client, err := redisClient(redisAddr)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	head, err := audit.NewStream(client, nil).Head(cmd.Context(), replica)
	if err != nil {
		return nil, fmt.Errorf("redis at %s: %w", redisName(redisAddr), err)
	}
	return append(anchors, head), nil
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
every replica numbers and chains its own records.

Characters an agent sent that would not show on a terminal, or would
reorder the text around them (such as U+202E), are written as JSON
escapes (\u202e): the line decodes to the same record.`,
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
			// The records hold what agents sent: characters that hide or
			// reorder text, or that a terminal obeys, are written as JSON
			// escapes, which the line decodes to all the same.
			emit := func(line []byte) error {
				text, _ := console.VisibleJSON(string(line))
				_, err := fmt.Fprintf(out, "%s\n", text)
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
