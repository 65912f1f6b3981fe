package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/api"
)

// dashboardLogin is the --json answer of ztgate dashboard: the API's answer
// and the URL to open.
type dashboardLogin struct {
	api.LoginResponse
	URL string `json:"url"`
}

func (c *cli) newDashboardCmd() *cobra.Command {
	f := &apiFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Print a one-time sign-in URL for the web console",
		Long: `Print a one-time URL that signs a browser in to the web console served by the
admin API under /ui/. The URL holds a login token minted for the admin identity
of --admin-dir: it works once, within 5 minutes, and opens a console session of
8 hours that acts as that identity. Every request of the session is decided by
the policy as the identity's own would be, and state changes need the session's
CSRF token. Sessions live in the gateway's memory: a restart signs everyone out.

The URL is built from --api, so open it where that address is reachable; the
browser must trust the gateway's certificate (its CA is the bundle.pem of the
admin identity). The URL is the last line of the output.`,
		Example: `  ztgate dashboard
  ztgate dashboard --api https://gw.example.org:8443 --admin-dir ./admin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var lr api.LoginResponse
			if err := client.do(cmd.Context(), http.MethodPost, "/v1/console/logins", nil, &lr); err != nil {
				return err
			}
			if lr.Path == "" || lr.Path[0] != '/' {
				return fmt.Errorf("the API at %s answered a login without a path", client.base)
			}
			// The address the command reached the API at, which the
			// operator can reach; the API does not know it.
			full := client.base.String() + lr.Path
			if asJSON {
				return writeJSON(c.stdout, dashboardLogin{LoginResponse: lr, URL: full})
			}
			fmt.Fprintf(c.stdout, "Open this URL in a browser to sign in to the ztgate console. It works once,\n"+
				"until %s; the session lasts 8 hours.\n", lr.ExpiresAt.Local().Format(time.Kitchen))
			fmt.Fprintln(c.stdout, full)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's answer and the URL as JSON")
	return cmd
}
