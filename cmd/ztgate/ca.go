package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
)

func (c *cli) newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the built-in CA",
		Args:  cobra.NoArgs,
	}
	var dir, td string
	initCmd := &cobra.Command{
		Use:   "init --dir DIR [--trust-domain TD]",
		Short: "Create the built-in CA in DIR (or check the one there), before the nodes of a cluster start",
		Long: `Create the built-in CA (ca.pem, ca.key) in DIR, or check that the one already
there belongs to the trust domain. Every node of a cluster must start with the
same CA (identity.ca_dir): create it once with this command and give each node
a copy, or one read-only volume. A gateway creates its CA on its own first
start too, which is enough for a single node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return fmt.Errorf("ca init: --dir is required")
			}
			t, err := spiffeid.TrustDomainFromString(td)
			if err != nil || t.Name() != td {
				return fmt.Errorf("ca init: --trust-domain %q: want a bare trust domain name such as example.org", td)
			}
			ca, err := identity.LoadOrCreateCA(dir, t)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "CA of %s in %s, %s\n", t.Name(), dir, "pin "+identity.CAPin(ca.Certificate()))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "the CA directory (a node's identity.ca_dir)")
	initCmd.Flags().StringVar(&td, "trust-domain", app.DefaultTrustDomain, "the trust domain")
	cmd.AddCommand(initCmd)
	return cmd
}
