package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func (c *cli) newRetainedCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "retained",
		Short: "List and clear the retained messages of a running gateway",
		Long: `List the retained messages a running gateway holds (topic, QoS, size, when, who
published it; never the payload) and clear one, through the admin API.`,
	}
	f.register(cmd)
	cmd.AddCommand(c.newRetainedListCmd(f), c.newRetainedDeleteCmd(f))
	return cmd
}

// retainedPage is the answer of GET /v1/retained.
type retainedPage struct {
	Messages []struct {
		Topic       string    `json:"topic"`
		QoS         byte      `json:"qos"`
		PayloadSize int       `json:"payload_size"`
		SPIFFEID    string    `json:"spiffe_id"`
		Created     time.Time `json:"created"`
	} `json:"messages"`
	Truncated bool `json:"truncated"`
}

func (c *cli) newRetainedListCmd(f *apiFlags) *cobra.Command {
	var (
		filter string
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List retained messages matching a topic filter",
		Long: `List the retained messages whose topics match --filter (an MQTT topic filter;
default "#", which like a subscription leaves out $ topics), sorted by topic,
at most --limit of them. When more match, a note on standard error says so.`,
		Example: `  ztgate retained list
  ztgate retained list --filter 'devices/+/state' --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > maxPage {
				return fmt.Errorf("--limit %d: want 1 to %d", limit, maxPage)
			}
			if filter == "" {
				return errors.New("--filter: an empty topic filter matches nothing")
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			q := url.Values{"filter": {filter}, "limit": {strconv.Itoa(limit)}}
			var raw json.RawMessage
			if err := client.do(cmd.Context(), http.MethodGet, "/v1/retained?"+q.Encode(), nil, &raw); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			var page retainedPage
			if err := json.Unmarshal(raw, &page); err != nil {
				return fmt.Errorf("the API answered with unexpected JSON: %w", err)
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TOPIC\tQOS\tSIZE\tCREATED\tSPIFFE-ID")
			for _, m := range page.Messages {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", cell(m.Topic), m.QoS, m.PayloadSize,
					m.Created.UTC().Format(time.RFC3339), dash(m.SPIFFEID))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if page.Truncated {
				fmt.Fprintf(c.stderr, "ztgate: note: more retained messages match than --limit %d; narrow --filter or raise --limit\n", limit)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&filter, "filter", "#", "MQTT topic filter the topics must match")
	fl.IntVar(&limit, "limit", defaultPage, fmt.Sprintf("at most this many messages, 1 to %d", maxPage))
	fl.BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}

func (c *cli) newRetainedDeleteCmd(f *apiFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "delete TOPIC",
		Short: "Clear the retained message on one topic",
		Long: `Clear the retained message on TOPIC (a topic name, no wildcards): new
subscribers no longer receive it. It is an error when there is none.`,
		Example: "  ztgate retained delete devices/sensor-1/state",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			topic := args[0]
			switch {
			case topic == "":
				return errors.New("retained delete: the topic is empty")
			case strings.ContainsAny(topic, "+#"):
				return fmt.Errorf("retained delete %q: a topic name, not a filter: no wildcards (+, #)", topic)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			q := url.Values{"topic": {topic}}
			if err := client.do(cmd.Context(), http.MethodDelete, "/v1/retained?"+q.Encode(), nil, nil); err != nil {
				return err
			}
			if asJSON {
				// The API answers 204 with no body: this is the
				// command's own account of what it did.
				return writeJSON(c.stdout, map[string]any{"topic": topic, "deleted": true})
			}
			fmt.Fprintf(c.stdout, "deleted the retained message on %s\n", cell(topic))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: {\"topic\": ..., \"deleted\": true}")
	return cmd
}
