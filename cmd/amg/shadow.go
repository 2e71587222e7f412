package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/shadow"
)

func newShadowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shadow",
		Short: "See what shadow-mode roles would have denied",
	}
	cmd.AddCommand(newShadowReportCmd())
	return cmd
}

func newShadowReportCmd() *cobra.Command {
	var dataDir, redisAddr string
	var days int
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Would-be denials per shadow-mode role per day (UTC)",
		Long: `Print, for every role that made calls in shadow mode, its would-be denials
per day (UTC) over the last --days days, newest last, their total, and the
calls it made in those days. A would-be denial is a call enforce mode would
deny or make wait for approval. A role whose row stays at zero over many calls
is a candidate for mode: enforce (a row of zeros over no calls says
nothing); amg replay shows which calls would change. The gateway writes
its counts every few seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 || days > shadow.MaxDays {
				return fmt.Errorf("--days must be between 1 and %d, got %d", shadow.MaxDays, days)
			}
			var counter interface {
				Counts(ctx context.Context, from, to time.Time) ([]shadow.Count, error)
			}
			if redisAddr != "" {
				client, err := redisClient(redisAddr)
				if err != nil {
					return err
				}
				defer client.Close()
				counter = shadow.NewRedis(client)
			} else {
				db, err := openDB(dataDir, false)
				if errors.Is(err, errNoDatabase) {
					fmt.Fprintln(cmd.ErrOrStderr(), "amg:", err)
					return exitError{code: 1}
				}
				if err != nil {
					return err
				}
				defer db.Close()
				if counter, err = shadow.NewSQLite(db); err != nil {
					return err
				}
			}
			to := time.Now().UTC()
			from := to.AddDate(0, 0, -(days - 1))
			counts, err := counter.Counts(cmd.Context(), from, to)
			if err != nil {
				return err
			}
			writeShadowReport(cmd, counts, from, days)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./data", "directory holding the standalone database ("+dbFile+")")
	cmd.Flags().StringVar(&redisAddr, "redis", "", redisFlagHelp+": every replica's counts; overrides --data-dir")
	cmd.Flags().IntVar(&days, "days", 7, "how many days to show, ending today")
	return cmd
}

func writeShadowReport(cmd *cobra.Command, counts []shadow.Count, from time.Time, days int) {
	if len(counts) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "no calls in shadow mode in the last %d days\n", days)
		return
	}
	byRole := map[string]map[string]int64{}
	calls := map[string]int64{}
	var roles []string
	for _, c := range counts {
		if byRole[c.Role] == nil {
			byRole[c.Role] = map[string]int64{}
			roles = append(roles, c.Role)
		}
		byRole[c.Role][c.Day] = c.N
		calls[c.Role] += c.Calls
	}
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprint(w, "ROLE")
	for i := range days {
		fmt.Fprintf(w, "\t%s", from.AddDate(0, 0, i).Format("01-02"))
	}
	fmt.Fprintln(w, "\tTOTAL\tCALLS")
	for _, role := range roles {
		fmt.Fprint(w, role)
		var total int64
		for i := range days {
			n := byRole[role][shadow.Day(from.AddDate(0, 0, i))]
			total += n
			fmt.Fprintf(w, "\t%d", n)
		}
		fmt.Fprintf(w, "\t%d\t%d\n", total, calls[role])
	}
	w.Flush()
}
