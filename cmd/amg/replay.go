package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/replay"
)

func newReplayCmd() *cobra.Command {
	var auditFile, redisAddr, policyDir, catalog string
	var servers []string
	var allowUndecidable, noVerify bool
	var maxChanges int
	cmd := &cobra.Command{
		Use:   "replay (--audit FILE | --redis ADDR) --policy DIR",
		Short: "Show which recorded decisions another policy would change",
		Long: `Re-evaluate every policy decision recorded in the audit log FILE (its rotated
files, oldest first, then FILE) against the role files in DIR, and print each
decision whose enforced verdict would change, then counts per role and tool.
With --redis, the records are those every replica sharing that Redis shipped
there (the latest of all replicas, as the console replays them) instead.

The hash chain of FILE is checked as it is read, as "amg audit verify" checks
it: a broken chain is an error naming the first bad record, and nothing is
replayed (--no-verify replays such a log anyway, with a warning). The Redis
stream has no hash chain: its records are replayed unverified, and a warning
says so.

Only decisions of the policy engine on tools/call, prompts/get and
resources/read (or subscribe) are replayed. Lifecycle records, the broker's
records (upstream outcomes, approval steps) and outcomes the policy did not
decide (rate limits, authentication) are skipped. A JSON-RPC batch is
replayed as a whole, as authz decides it. The new enforced verdict is
compared with the recorded one: for a role in shadow mode both are allow.
Rate limits are not replayed.

A decision that depends on a redacted argument, on arguments that were not
recorded, or on tool annotations not known (see --catalog) is counted as
undecidable, never guessed; the last line says how many could not be decided,
and the exit status sets them apart from decisions that would not change.

--servers and --catalog are as for "amg policy validate"; the catalogue also
gives the tool annotations that approval rules match. The first --max-changes
changed decisions are printed, and all of them counted. A role's tools past
the first 100 the records name are counted together, as "(other tools)":
agents may name any tool.

Exit status:
  0  no decision would change, and every one could be decided
  1  some decision would change
  2  an error: nothing was replayed, or not all of it
  3  no decided decision would change, but some could not be decided; with
     --allow-undecidable this is 0 instead`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.NoArgs(cmd, args); err != nil {
				return replayFailed(cmd, err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := runReplay(cmd, auditFile, redisAddr, policyDir, catalog, servers, allowUndecidable, noVerify, maxChanges)
			var exit exitError
			if err != nil && !errors.As(err, &exit) {
				return replayFailed(cmd, err)
			}
			return err
		},
	}
	cmd.SetFlagErrorFunc(replayFailed)
	cmd.Flags().StringVar(&auditFile, "audit", "", "audit log file")
	cmd.Flags().StringVar(&redisAddr, "redis", "", redisFlagHelp+": replay every replica's shipped records instead of a file")
	cmd.Flags().StringVar(&policyDir, "policy", "", "directory of role files to replay against (required)")
	cmd.Flags().StringSliceVar(&servers, "servers", nil, "upstream server names the gateway knows (comma-separated)")
	cmd.Flags().StringVar(&catalog, "catalog", "", "JSON file with each server's tools/list tools, to check grants against and take annotations from")
	cmd.Flags().IntVar(&maxChanges, "max-changes", replay.DefaultMaxChanges, "changed decisions to print, the first in record order (the counts cover them all)")
	cmd.Flags().BoolVar(&allowUndecidable, "allow-undecidable", false, "exit 0, not 3, when no decided decision would change but some could not be decided")
	cmd.Flags().BoolVar(&noVerify, "no-verify", false, "replay the audit log without checking its hash chain (a warning says so)")
	return cmd
}

// replayFailed reports err and returns exit status 2. Every failure of
// replay, usage errors included, goes through it: exit 1 is reserved for
// "some decision would change" and 3 for "some could not be decided",
// which CI gates act on.
func replayFailed(cmd *cobra.Command, err error) error {
	fmt.Fprintln(cmd.ErrOrStderr(), "amg:", err)
	return exitError{code: 2}
}

func runReplay(cmd *cobra.Command, auditFile, redisAddr, policyDir, catalog string, servers []string, allowUndecidable, noVerify bool, maxChanges int) error {
	if (auditFile == "") == (redisAddr == "") || policyDir == "" {
		return errors.New("--policy and one of --audit or --redis are required")
	}
	if noVerify && redisAddr != "" {
		return errors.New("--no-verify is for --audit: the Redis stream has no hash chain to verify")
	}
	if maxChanges < 1 {
		return fmt.Errorf("--max-changes must be at least 1, not %d", maxChanges)
	}
	opts := &policy.Options{Servers: servers}
	ropts := replay.Options{MaxChanges: maxChanges}
	if catalog != "" {
		cat, err := policy.LoadCatalog(catalog)
		if err != nil {
			return err
		}
		opts.Catalog = cat
		ropts.Annotations = replay.CatalogAnnotations(cat)
	}
	set, err := policy.LoadDir(policyDir, opts)
	var problems policy.Problems
	if errors.As(err, &problems) {
		for _, p := range problems {
			fmt.Fprintln(cmd.ErrOrStderr(), p)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "%d problem%s\n", len(problems), plural(len(problems)))
		return exitError{code: 2}
	}
	if err != nil {
		return err
	}
	var readErr error
	var records func(yield func(audit.Record) bool)
	if redisAddr != "" {
		client, err := redisClient(redisAddr)
		if err != nil {
			return err
		}
		defer client.Close()
		stream := audit.NewStream(client, nil)
		records = func(yield func(audit.Record) bool) { readErr = stream.Records(cmd.Context(), yield) }
	} else {
		if _, err := os.Stat(auditFile); err != nil {
			return err
		}
		files, err := audit.ChainFiles(auditFile)
		if err != nil {
			return err
		}
		switch {
		case noVerify:
			fmt.Fprintln(cmd.ErrOrStderr(), "warning: --no-verify: the audit log's hash chain is not checked, and its records may have been altered")
			records = func(yield func(audit.Record) bool) { readErr = audit.ReadRecords(files, cmd.ErrOrStderr(), yield) }
		default:
			records = func(yield func(audit.Record) bool) { _, readErr = audit.ReadVerified(files, cmd.ErrOrStderr(), yield) }
		}
	}
	rep := replay.Replay(records, set, &ropts)
	var broken *audit.ChainError
	if errors.As(readErr, &broken) {
		return fmt.Errorf("the audit log does not verify, so nothing was replayed (--no-verify replays it anyway): %w", broken)
	}
	if readErr != nil {
		return readErr
	}
	if redisAddr != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: the Redis stream has no hash chain: its records were replayed unverified (amg audit verify checks each replica's files)")
	}
	printReplay(cmd.OutOrStdout(), &rep)
	switch {
	case rep.Changed > 0:
		return exitError{code: 1}
	case rep.Undecidable() > 0 && !allowUndecidable:
		return exitError{code: 3}
	}
	return nil
}

func printReplay(w io.Writer, rep *replay.Report) {
	for _, c := range rep.Changes {
		r := c.Record
		why := c.Result.Reason
		if why == "" {
			why = string(c.Result.Code)
		}
		fmt.Fprintf(w, "%s %s %s %s %s__%s: %s -> %s: %s\n", r.Time.UTC().Format(time.RFC3339Nano), orDash(r.DecisionID),
			orDash(r.Agent), orDash(r.Role), r.Server, r.Tool, c.Old, c.New, why)
	}
	if n := rep.Changed - len(rep.Changes); n > 0 {
		fmt.Fprintf(w, "... and %d more changed decision%s, not printed (--max-changes)\n", n, plural(n))
	}
	if rep.Changed > 0 {
		fmt.Fprintln(w)
	}
	if len(rep.Counts) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLE\tTOOL\tUNCHANGED\tALLOW->DENY\tDENY->ALLOW\t->NEEDS_APPROVAL\tNEEDS_APPROVAL->ALLOW\tNEEDS_APPROVAL->DENY\tUNDECIDABLE")
		for _, k := range rep.Keys() {
			c, tool := rep.Counts[k], k.Tool
			if tool == "" {
				tool = "(other tools)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", k.Role, tool, c.Unchanged, c.AllowToDeny, c.DenyToAllow,
				c.ToApproval, c.ApprovalToAllow, c.ApprovalToDeny, c.Undecidable)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	summary := fmt.Sprintf("%d decision%s replayed, %d undecidable, %d other record%s skipped",
		rep.Replayed, plural(rep.Replayed), rep.Undecidable(), rep.Skipped, plural(rep.Skipped))
	fmt.Fprintf(w, "%s (%s)\n", rep.Outcome(), summary)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
