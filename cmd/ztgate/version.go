package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/internal/buildinfo"
)

func (c *cli) newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version and commit of this binary",
		Long: `Print the version and commit this binary was built from, the Go version and
the platform. A release build sets the version and commit with -ldflags -X
(see the Dockerfile); "go install ...@VERSION" records the module version,
and a build in a checkout its commit. What nothing recorded shows as "dev"
or "unknown".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := buildinfo.Get()
			if asJSON {
				return writeJSON(c.stdout, info)
			}
			commit := info.Commit
			if info.Modified {
				commit += " (modified)"
			}
			fmt.Fprintf(c.stdout, "version: %s\ncommit:  %s\ngo:      %s\nos/arch: %s\n", info.Version, commit, info.GoVersion, info.Platform)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
