package main

import (
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/store"
	"github.com/amgateway/amg/internal/tokens"
)

// dbFile is the database's name inside --data-dir; `amg serve` opens the
// same file.
const dbFile = "amg.db"

// tokenStoreFlags say where the token store is: the standalone database in
// --data-dir, or Redis with --redis (the store replicas share).
type tokenStoreFlags struct {
	dataDir string
	redis   string
}

func newTokenCmd() *cobra.Command {
	var where tokenStoreFlags
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Issue, list and revoke agent tokens",
		Long: `Agent tokens are "amg_" followed by 64 lowercase hex digits. An agent's
role comes only from its token. The token itself is shown once, when it is
issued; AMG keeps only its SHA-256 digest and names it by a public ID (the
first 16 hex digits of the digest), which list shows and revoke takes.

Tokens live in <data-dir>/amg.db, which a running amg serve shares, or in
Redis (--redis host:port, password from AMG_REDIS_PASSWORD) when the
gateway's config has a redis section.`,
	}
	cmd.PersistentFlags().StringVar(&where.dataDir, "data-dir", "./data", "directory holding the standalone database ("+dbFile+")")
	cmd.PersistentFlags().StringVar(&where.redis, "redis", "", redisFlagHelp+"; overrides --data-dir")
	cmd.AddCommand(newTokenIssueCmd(&where), newTokenListCmd(&where), newTokenRevokeCmd(&where))
	return cmd
}

func newTokenIssueCmd(where *tokenStoreFlags) *cobra.Command {
	var agent, role, policyDir string
	var ttl time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "issue --agent NAME --role ROLE [--ttl DURATION]",
		Short: "Issue a token and print it, once, on stdout",
		Long: `Issue a token for an agent with a role and print it on stdout, alone on one
line, so that it can be captured by a script; everything else goes to
stderr. The token cannot be shown again.

The role must be defined in --policy-dir, if that directory exists; --force
issues a token for a role the policies do not (yet) define. --ttl limits the
token's lifetime (e.g. 720h); 0, the default, means it never expires.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < 0 {
				return fmt.Errorf("--ttl must not be negative, got %v", ttl)
			}
			if err := tokens.CheckName(agent); err != nil {
				return fmt.Errorf("invalid --agent: %w", err)
			}
			if err := tokens.CheckName(role); err != nil {
				return fmt.Errorf("invalid --role: %w", err)
			}
			if !force {
				checked, err := checkRole(policyDir, role, cmd.Flags().Changed("policy-dir"))
				if err != nil {
					return err
				}
				if !checked {
					fmt.Fprintf(cmd.ErrOrStderr(), "role %q not checked: %s does not exist (--policy-dir names the gateway's policies)\n", role, policyDir)
				}
			}
			db, s, err := openTokenStore(*where, true)
			if err != nil {
				return err
			}
			defer db.Close()
			secret, t, err := tokens.Issue(cmd.Context(), s, agent, role, ttl, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "issued token %s for agent %s, role %s, expires %s\n", t.ID, t.Agent, t.Role, formatTime(t.Expires))
			fmt.Fprintln(cmd.ErrOrStderr(), "the token is shown once and cannot be recovered; revoke it with: amg token revoke "+t.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "name of the agent the token is for (required)")
	cmd.Flags().StringVar(&role, "role", "", "role the token grants (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "lifetime of the token, e.g. 720h; 0 never expires")
	cmd.Flags().StringVar(&policyDir, "policy-dir", "./policies", "policy directory the role must be defined in (skipped if the default does not exist)")
	cmd.Flags().BoolVar(&force, "force", false, "issue even if the role is not defined in --policy-dir")
	cmd.MarkFlagRequired("agent")
	cmd.MarkFlagRequired("role")
	return cmd
}

// checkRole refuses a role the policy directory does not define, since a
// token for it would be denied everything: better to learn about a typo now
// than from an agent's failures. Without the default directory there is
// nothing to check against, and it reports that it did not check; a
// directory named explicitly must exist.
func checkRole(dir, role string, explicit bool) (checked bool, err error) {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return false, nil
		}
		return false, fmt.Errorf("check role against policies: %w (--force skips the check)", err)
	}
	return true, definesRole(dir, role)
}

func definesRole(dir, role string) error {
	set, err := policy.LoadDir(dir, nil)
	if err != nil {
		var problems policy.Problems
		if errors.As(err, &problems) {
			return fmt.Errorf("cannot check role %q: the policies in %s do not compile (%d problem%s; see amg policy validate %s); --force skips the check",
				role, dir, len(problems), plural(len(problems)), dir)
		}
		return fmt.Errorf("check role against policies: %w (--force skips the check)", err)
	}
	if err := roleDefined(set, dir, role); err != nil {
		return fmt.Errorf("%w; --force issues the token anyway", err)
	}
	return nil
}

// roleDefined refuses a role that set, compiled from dir, does not define,
// naming the roles it does.
func roleDefined(set *policy.Set, dir, role string) error {
	if _, ok := set.Role(role); ok {
		return nil
	}
	var names []string
	for _, r := range set.Roles() {
		names = append(names, r.Name)
	}
	return fmt.Errorf("role %q is not defined in %s (roles: %s)", role, dir, strings.Join(names, ", "))
}

func newTokenListCmd(where *tokenStoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List issued tokens by ID (never the tokens themselves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []tokens.Token
			db, s, err := openTokenStore(*where, false)
			switch {
			case errors.Is(err, errNoDatabase):
				fmt.Fprintln(cmd.ErrOrStderr(), "amg:", err)
			case err != nil:
				return err
			default:
				defer db.Close()
				if list, err = s.List(cmd.Context()); err != nil {
					return err
				}
			}
			now := time.Now()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tAGENT\tROLE\tCREATED\tEXPIRES\tSTATUS")
			for _, t := range list {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Agent, t.Role, formatTime(t.Created), formatTime(t.Expires), t.Status(now))
			}
			return w.Flush()
		},
	}
}

func newTokenRevokeCmd(where *tokenStoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token",
		Long: `Revoke the token with the given ID, as shown by amg token list. A running
amg serve sharing the data directory refuses the token within its token
cache lifetime (one second by default). Revoking a revoked token is not an
error.

A token itself is accepted in place of its ID, for when the token is all
you have, for instance because it leaked.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if d, err := tokens.Parse(id); err == nil {
				id = d.ID()
			} else if !tokens.ValidID(id) {
				// Not echoed: it may be a mangled secret.
				return errors.New("not a token ID: IDs are 16 lowercase hex digits, as shown by amg token list")
			}
			db, s, err := openTokenStore(*where, false)
			if err != nil {
				return err
			}
			defer db.Close()
			err = s.Revoke(cmd.Context(), id, time.Now())
			if errors.Is(err, tokens.ErrUnknown) {
				return fmt.Errorf("no token with ID %s in %s", id, where)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "revoked", id)
			return nil
		},
	}
}

var errNoDatabase = errors.New("no database")

// openDB opens the standalone database in dataDir. Only commands that
// write state create it: reading commands on a mistyped --data-dir must
// say so, not create an empty one.
func openDB(dataDir string, create bool) (*sql.DB, error) {
	path := filepath.Join(dataDir, dbFile)
	if !create {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s (see --data-dir)", errNoDatabase, path)
		}
	}
	return store.Open(path)
}

// String names the store for messages.
func (w tokenStoreFlags) String() string {
	if w.redis != "" {
		return "Redis at " + redisName(w.redis)
	}
	return filepath.Join(w.dataDir, dbFile)
}

// openTokenStore opens the token store where says.
func openTokenStore(where tokenStoreFlags, create bool) (io.Closer, tokens.Store, error) {
	if where.redis != "" {
		client, err := redisClient(where.redis)
		if err != nil {
			return nil, nil, err
		}
		return client, tokens.NewRedisStore(client, nil), nil
	}
	db, err := openDB(where.dataDir, create)
	if err != nil {
		return nil, nil, err
	}
	s, err := tokens.NewSQLiteStore(db)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, s, nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
