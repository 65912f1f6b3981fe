package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/api"
)

func (c *cli) newAuditCmd() *cobra.Command {
	f := &apiFlags{}
	var (
		after  uint64
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Print the audit log: every admin and enrollment action",
		Long: `Print the audit log: who (the caller's SPIFFE ID, or bootstrap-token) did what
to which device, with what result, and when. Entries are numbered in the order
they were committed; each is stored in the same transaction as the change it
records. --after N starts after entry N (to follow the log, pass the last ID
printed). The API answers in pages of --limit entries; the command follows the
pages to the end.`,
		Example: `  ztgate audit
  ztgate audit --after 120 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > maxPage {
				return fmt.Errorf("--limit %d: want 1 to %d", limit, maxPage)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			entries := []api.AuditEntry{}
			cursor := after
			for page := 0; ; page++ {
				if page > maxPages {
					return fmt.Errorf("the API at %s returned more than %d pages", client.base, maxPages)
				}
				q := url.Values{}
				q.Set("after", strconv.FormatUint(cursor, 10))
				q.Set("limit", strconv.Itoa(limit))
				var resp auditPage
				if err := client.do(cmd.Context(), http.MethodGet, "/v1/audit?"+q.Encode(), nil, &resp); err != nil {
					return err
				}
				entries = append(entries, resp.Entries...)
				if resp.Next == 0 {
					break
				}
				if resp.Next <= cursor {
					return fmt.Errorf("the API at %s returned a cursor that does not advance", client.base)
				}
				cursor = resp.Next
			}
			if asJSON {
				return writeJSON(c.stdout, entries)
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tACTOR\tACTION\tTARGET\tRESULT")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Time.UTC().Format(time.RFC3339),
					dash(e.Actor), dash(e.Action), dash(e.Target), dash(e.Result))
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.Uint64Var(&after, "after", 0, "start after the entry with this ID")
	fl.IntVar(&limit, "limit", defaultPage, fmt.Sprintf("entries per API request, 1 to %d", maxPage))
	fl.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

// dash stands in for an empty table cell, so columns stay aligned for awk.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
