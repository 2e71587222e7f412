package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Work with role policies",
	}
	cmd.AddCommand(newPolicyValidateCmd(), newPolicyTestCmd(), newPolicyDiffCmd())
	return cmd
}

func newPolicyValidateCmd() *cobra.Command {
	var servers []string
	var catalog string
	cmd := &cobra.Command{
		Use:   "validate DIR",
		Short: "Compile every role file in DIR and report all problems",
		Long: `Compile every role file (*.yaml, *.yml) in DIR and print every problem as
file:line:col: yaml.path: message. Exits 1 if there is any.

--servers names the upstream servers the gateway knows; a role that names
another is a problem. --catalog checks grants against the upstream tool
lists: a JSON object mapping each server to the "tools" array of its
tools/list result.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, _, err := compilePolicies(cmd, args[0], servers, catalog)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d role%s, policy version %s\n", len(set.Roles()), plural(len(set.Roles())), set.Version())
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&servers, "servers", nil, "upstream server names the gateway knows (comma-separated)")
	cmd.Flags().StringVar(&catalog, "catalog", "", "JSON file with each server's tools/list tools, to check grants against")
	return cmd
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// compilePolicies compiles the role files of dir, checked against the
// server names and the catalogue file given (if any), and returns the set
// and the catalogue. A policy that does not compile has its problems
// printed, and is an exit with status 1.
func compilePolicies(cmd *cobra.Command, dir string, servers []string, catalog string) (*policy.Set, policy.StaticCatalog, error) {
	opts := &policy.Options{Servers: servers}
	var cat policy.StaticCatalog
	if catalog != "" {
		var err error
		if cat, err = policy.LoadCatalog(catalog); err != nil {
			return nil, nil, err
		}
		opts.Catalog = cat
	}
	set, err := policy.LoadDir(dir, opts)
	var problems policy.Problems
	if errors.As(err, &problems) {
		printProblems(cmd.ErrOrStderr(), problems)
		return nil, nil, exitError{code: 1}
	}
	return set, cat, err
}
