package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/bridge"
)

func (c *cli) newBridgeCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "bridge",
		Short: "See the bridges to upstream brokers of a running gateway",
		Long: `See the bridges to approved upstream brokers (the bridges: section of the
configuration; docs/bridges.md) through the admin API.`,
	}
	f.register(cmd)
	cmd.AddCommand(c.newBridgeStatusCmd(f))
	return cmd
}

func (c *cli) newBridgeStatusCmd(f *apiFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Each bridge: link up or down, last error, queued, forwarded, denied, dropped, received",
		Long: `Print each bridge's status: whether its upstream link is up and since when,
the last error, the messages waiting in its queue on disk, and what it
forwarded, what the policy denied (either way), what it dropped and what
it received from upstream since the gateway started.`,
		Example: `  ztgate bridge status
  ztgate bridge status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := c.callAPI(cmd, f, http.MethodGet, "/v1/bridges", nil)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			var list []bridge.Status
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("the API answered with unexpected JSON: %w", err)
			}
			if len(list) == 0 {
				fmt.Fprintln(c.stdout, "no bridges configured")
				return nil
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "BRIDGE\tURL\tLINK\tSINCE\tQUEUED\tFORWARDED\tDENIED\tDROPPED\tRECEIVED\tLAST-ERROR")
			for _, b := range list {
				link := "down"
				if b.Connected {
					link = "up"
				}
				since := "-"
				if !b.Since.IsZero() {
					since = b.Since.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", b.Name, b.URL, link, since,
					b.Queued, b.Forwarded, b.Denied, b.Dropped, b.Received, dash(cell(b.LastError)))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}
