package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/registry"
)

func (c *cli) newSessionCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "session",
		Short: "See and end the live MQTT sessions of a running gateway",
		Long: `See who is connected (from where, with which subscriptions, how many messages
wait for them) and end a device's sessions, through the admin API.`,
	}
	f.register(cmd)
	cmd.AddCommand(c.newSessionListCmd(f), c.newSessionKickCmd(f))
	return cmd
}

// sessionRow is one session of GET /v1/sessions, as the CLI prints it.
type sessionRow struct {
	ClientID        string    `json:"client_id"`
	Device          string    `json:"device"`
	RemoteAddr      string    `json:"remote_addr"`
	ProtocolVersion byte      `json:"protocol_version"`
	ConnectedAt     time.Time `json:"connected_at"`
	Subscriptions   []struct {
		Filter string `json:"filter"`
		QoS    byte   `json:"qos"`
	} `json:"subscriptions"`
	QueueDepth int    `json:"queue_depth"`
	Node       string `json:"node"`
}

func (c *cli) newSessionListCmd(f *apiFlags) *cobra.Command {
	var (
		device string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List live sessions: device, client ID, address, protocol, subscriptions, queue",
		Long: `List the live MQTT sessions of the gateway: the device, its client ID, the
remote address, the MQTT protocol version, when it connected, its
subscriptions (filter:QoS) and how many QoS 1/2 messages are queued or in
flight for it. --device keeps one device's sessions. In a cluster, every
node's sessions, with a NODE column.`,
		Example: `  ztgate session list
  ztgate session list --device sensor-1 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/sessions"
			if device != "" {
				if err := registry.ValidateName(device); err != nil {
					return fmt.Errorf("--device: %w", err)
				}
				path += "?" + url.Values{"device": {device}}.Encode()
			}
			raw, err := c.callAPI(cmd, f, http.MethodGet, path, nil)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			var list []sessionRow
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("the API answered with unexpected JSON: %w", err)
			}
			return printSessions(c.stdout, list)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&device, "device", "", "only this device's sessions")
	fl.BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}

// printSessions prints list as a table; a cluster's sessions name their
// node, in a last column.
func printSessions(w io.Writer, list []sessionRow) error {
	clustered := slices.ContainsFunc(list, func(s sessionRow) bool { return s.Node != "" })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "DEVICE\tCLIENT-ID\tREMOTE-ADDR\tPROTOCOL\tCONNECTED\tSUBSCRIPTIONS\tQUEUE"
	if clustered {
		head += "\tNODE"
	}
	fmt.Fprintln(tw, head)
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d", dash(s.Device), dash(cell(s.ClientID)), dash(s.RemoteAddr),
			protocolName(s.ProtocolVersion), s.ConnectedAt.UTC().Format(time.RFC3339), formatSubscriptions(s), s.QueueDepth)
		if clustered {
			fmt.Fprintf(tw, "\t%s", dash(cell(s.Node)))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// protocolName is the MQTT version of a CONNECT's protocol level.
func protocolName(v byte) string {
	switch v {
	case 3:
		return "3.1"
	case 4:
		return "3.1.1"
	case 5:
		return "5"
	}
	return strconv.Itoa(int(v))
}

// formatSubscriptions is filter:qos,... or "-". Filters are MQTT strings
// the client chose: cell keeps them from breaking the table.
func formatSubscriptions(s sessionRow) string {
	if len(s.Subscriptions) == 0 {
		return "-"
	}
	parts := make([]string, len(s.Subscriptions))
	for i, sub := range s.Subscriptions {
		parts[i] = fmt.Sprintf("%s:%d", cell(sub.Filter), sub.QoS)
	}
	return strings.Join(parts, ",")
}

// cell makes a client-chosen string safe for one table cell: control
// characters, spaces and tabs (which would shift the columns or rewrite
// the terminal) are shown quoted.
func cell(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

func (c *cli) newSessionKickCmd(f *apiFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "kick NAME",
		Short: "End a device's live sessions without suspending it",
		Long: `End every live MQTT session of the device NAME (MQTT 5 clients get DISCONNECT
with reason 0x98, administrative action). The device stays enrolled and
active: it may connect again at once. To keep it out, "device suspend".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			raw, err := c.callAPI(cmd, f, http.MethodDelete, devicePath(name)+"/sessions", nil)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			var res struct {
				Device string `json:"device"`
				Kicked int    `json:"kicked"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return fmt.Errorf("the API answered with unexpected JSON: %w", err)
			}
			noun := "sessions"
			if res.Kicked == 1 {
				noun = "session"
			}
			fmt.Fprintf(c.stdout, "device %s: %d %s ended\n", name, res.Kicked, noun)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}
