package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

func (c *cli) newDeviceCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Enroll and manage devices through the admin API",
		Long: `Enroll and manage devices through the admin API. The commands reach the API
at --api (env ZTGATE_API) as the admin identity in --admin-dir (env
ZTGATE_ADMIN_DIR); the defaults are those of "ztgate dev".`,
		Args: cobra.NoArgs,
	}
	f.register(cmd)
	cmd.AddCommand(
		c.newEnrollCmd(f),
		c.newRegisterCmd(f),
		c.newTokenCmd(f),
		c.newListCmd(f),
		c.newImportCmd(f),
		c.newShowCmd(f),
		c.newStatusCmd(f, "revoke", "Revoke a device: its sessions are cut and it can never connect again", "revoked"),
		c.newStatusCmd(f, "suspend", "Suspend a device: its sessions are cut until it is resumed", "suspended"),
		c.newStatusCmd(f, "resume", "Resume a suspended device", "active"),
		c.newLabelCmd(f),
		c.newDeleteCmd(f),
	)
	return cmd
}

func (c *cli) newEnrollCmd(f *apiFlags) *cobra.Command {
	var (
		labels   []string
		spiffeID string
		out      string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "enroll NAME",
		Short: "Enroll a device and write its SVID, key and trust bundle",
		Long: `Enroll a device and issue it an X.509-SVID. The private key and the CSR are
made here; only the CSR is sent to the API, the key never leaves this machine.
Writes OUT/svid.pem (certificate chain), OUT/svid.key and OUT/bundle.pem (the CA
bundle that verifies the gateway). Enrolling a device that already exists just
issues it a new SVID (its labels are left unchanged).

The SVID lives for the gateway's svid_ttl, or for --ttl (at least 10s, at most
svid_ttl); "ztgate renew" keeps that lifetime when it renews the SVID.

Names: lower-case letters, digits, '.', '_' and '-', starting with a letter or
digit, at most 63 characters, no "..". The default SPIFFE ID is
spiffe://TRUST-DOMAIN/device/NAME.`,
		Example: `  ztgate device enroll sensor-1 --out ./sensor-1
  ztgate device enroll ctl-1 --label role=controller --out ./ctl-1
  ztgate device enroll pump-7 --ttl 1h --out ./pump-7`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			if spiffeID != "" {
				if _, err := spiffeid.FromString(spiffeID); err != nil {
					return fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)
				}
			}
			// Checked here so that nothing is created for a lifetime the
			// API refuses anyway; the upper bound is the gateway's.
			if cmd.Flags().Changed("ttl") && ttl < api.MinSVIDTTL {
				return fmt.Errorf("--ttl %s: want at least %s (and at most the gateway's svid_ttl)", ttl, api.MinSVIDTTL)
			}
			if out == "" {
				out = "." + string(filepath.Separator) + name
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			ctx := cmd.Context()

			var dev api.Device
			err = client.do(ctx, http.MethodPost, "/v1/devices", api.CreateDeviceRequest{Name: name, SPIFFEID: spiffeID, Labels: lbl}, &dev)
			var ae *apiError
			created := false
			switch {
			case errors.As(err, &ae) && ae.Status == http.StatusConflict:
				if err := client.do(ctx, http.MethodGet, devicePath(name), nil, &dev); err != nil {
					return err
				}
				if spiffeID != "" && dev.SPIFFEID != spiffeID {
					return fmt.Errorf("device %s already exists with SPIFFE ID %s, not %s", name, dev.SPIFFEID, spiffeID)
				}
				fmt.Fprintf(c.stdout, "device %s already enrolled (status %s); issuing a new SVID\n", name, dev.Status)
			case err != nil:
				return err
			default:
				created = true
			}

			keyPEM, csrPEM, err := identity.NewKeyAndCSR()
			if err != nil {
				return err
			}
			req := api.SVIDRequest{CSR: string(csrPEM)}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			var svid api.SVIDResponse
			err = client.do(ctx, http.MethodPost, devicePath(name)+"/svid", req, &svid)
			if errors.As(err, &ae) && ae.Status == http.StatusConflict && strings.HasPrefix(ae.Message, api.NoCAPrefix) {
				if created {
					// What is left is what `device register` makes: say so
					// rather than leave a half-done enrollment unexplained.
					return fmt.Errorf("device %s is registered as %s, but this gateway signs no certificates: "+
						"give the device an SVID from your PKI or SPIRE (on such gateways `ztgate device register` is the command)", name, dev.SPIFFEID)
				}
				return err
			}
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(c.stdout, "enrolled device %s\n", name)
			}
			if err := identity.WriteSVIDDir(out, []byte(svid.SVIDPEM), keyPEM, []byte(svid.BundlePEM)); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "SPIFFE ID: %s\n", svid.SPIFFEID)
			if !svid.ExpiresAt.IsZero() {
				fmt.Fprintf(c.stdout, "expires:   %s\n", svid.ExpiresAt.UTC().Format("2006-01-02T15:04:05Z"))
			}
			fmt.Fprintf(c.stdout, "wrote %s (certificate chain), %s (private key), %s (CA bundle)\n",
				filepath.Join(out, "svid.pem"), filepath.Join(out, "svid.key"), filepath.Join(out, "bundle.pem"))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&labels, "label", nil, "label key=value (repeatable), e.g. role=controller")
	fl.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID (default spiffe://TRUST-DOMAIN/device/NAME)")
	fl.StringVar(&out, "out", "", "directory to write svid.pem, svid.key and bundle.pem to (default ./NAME)")
	fl.DurationVar(&ttl, "ttl", 0, "lifetime of the SVID, at least 10s, at most the gateway's svid_ttl (default svid_ttl)")
	return cmd
}

func (c *cli) newListCmd(f *apiFlags) *cobra.Command {
	var (
		asJSON   bool
		selector string
		status   string
		limit    int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices, optionally only those matching labels or a status",
		Long: `List devices, sorted by name. --selector keeps the devices that carry every
given label (k=v,k2=v2); --status keeps those in one state (pending, active,
suspended, revoked). The API answers in pages of --limit devices; the command
follows the pages to the end, so the whole list is printed.`,
		Example: `  ztgate device list
  ztgate device list --selector site=plant-a,role=sensor --status active`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if selector != "" {
				if _, err := registry.ParseSelector(selector); err != nil {
					return fmt.Errorf("--selector %q: %w", selector, err)
				}
			}
			if status != "" && !registry.Status(status).Valid() {
				return fmt.Errorf("--status %q: want pending, active, suspended or revoked", status)
			}
			if limit < 1 || limit > maxPage {
				return fmt.Errorf("--limit %d: want 1 to %d", limit, maxPage)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			list := []api.Device{}
			q := url.Values{}
			if selector != "" {
				q.Set("selector", selector)
			}
			if status != "" {
				q.Set("status", status)
			}
			q.Set("limit", strconv.Itoa(limit))
			for page := 0; ; page++ {
				if page > maxPages {
					return fmt.Errorf("the API at %s returned more than %d pages", client.base, maxPages)
				}
				var resp deviceList
				if err := client.do(cmd.Context(), http.MethodGet, "/v1/devices?"+q.Encode(), nil, &resp); err != nil {
					return err
				}
				list = append(list, resp.Devices...)
				if resp.Next == "" {
					break
				}
				if resp.Next == q.Get("after") {
					return fmt.Errorf("the API at %s returned the same page twice", client.base)
				}
				q.Set("after", resp.Next)
			}
			if asJSON {
				return writeJSON(c.stdout, list)
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSPIFFE-ID\tSTATUS\tLABELS")
			for _, d := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Name, d.SPIFFEID, d.Status, formatLabels(d.Labels))
			}
			return tw.Flush()
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	fl.StringVar(&selector, "selector", "", "only devices with all these labels: k=v[,k=v]...")
	fl.StringVar(&status, "status", "", "only devices in this state: pending, active, suspended or revoked")
	fl.IntVar(&limit, "limit", defaultPage, fmt.Sprintf("devices per API request, 1 to %d", maxPage))
	return cmd
}

func (c *cli) newShowCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show one device as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := registry.ValidateName(args[0]); err != nil {
				return err
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var dev json.RawMessage
			if err := client.do(cmd.Context(), http.MethodGet, devicePath(args[0]), nil, &dev); err != nil {
				return err
			}
			return writeJSON(c.stdout, dev)
		},
	}
}

func (c *cli) newStatusCmd(f *apiFlags, verb, short, want string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var dev api.Device
			if err := client.do(cmd.Context(), http.MethodPost, devicePath(name)+"/"+verb, nil, &dev); err != nil {
				return err
			}
			status := dev.Status
			if status == "" {
				status = want
			}
			fmt.Fprintf(c.stdout, "device %s: %s\n", name, status)
			return nil
		},
	}
}

// Paging of list requests: the API's default and largest page, and a bound
// on how many pages a command follows (a cursor that never ends is a bug
// of the server, not a reason to loop forever).
const (
	defaultPage = 100
	maxPage     = 1000
	maxPages    = 1_000_000
)

func devicePath(name string) string { return "/v1/devices/" + url.PathEscape(name) }

// parseLabels turns repeated key=value flags into a map; a malformed or
// repeated key is an error rather than a silent overwrite.
func parseLabels(kvs []string) (map[string]string, error) {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", kv)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--label %q: key %q given twice", kv, k)
		}
		out[k] = v
	}
	return out, nil
}

func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}
