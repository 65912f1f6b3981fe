package main

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/registry"
)

func (c *cli) newRegisterCmd(f *apiFlags) *cobra.Command {
	var (
		labels   []string
		spiffeID string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "register NAME --spiffe-id ID",
		Short: "Register a device whose SVID comes from SPIRE or another PKI",
		Long: `Register a device under the SPIFFE ID its own SVID carries, issued by SPIRE,
an existing PKI (the gateway's identity source files or workload_api) or a
federated partner trust domain. Nothing is signed and nothing is written
here: the device already holds its SVID. Once registered it is active and
has the lifecycle of an enrolled device (suspend, resume, revoke, audit).

Use "ztgate device enroll" instead when the gateway's built-in CA is to
issue the device its SVID (identity source builtin): enroll makes the key
and the CSR here and writes the SVID. A gateway whose identity comes from
files or the Workload API signs nothing, so register is the only way in.

The SPIFFE ID must be in the gateway's trust domain (where an ID under
/device/ must be /device/NAME) or in a federated trust domain it serves.
Registering a name that exists is an error: register never changes a device.`,
		Example: `  ztgate device register pump-7 --spiffe-id spiffe://example.org/spire/pump-7
  ztgate device register ctl-1 --spiffe-id spiffe://example.org/ns/prod/sa/ctl --label role=controller
  ztgate device register partner-1 --spiffe-id spiffe://partner.example/device/p1 --label partner=acme`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			if spiffeID == "" {
				return errors.New("--spiffe-id is required: the ID the device's SVID carries")
			}
			if _, err := spiffeid.FromString(spiffeID); err != nil {
				return fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var dev api.Device
			err = client.do(cmd.Context(), http.MethodPost, "/v1/devices", api.CreateDeviceRequest{Name: name, SPIFFEID: spiffeID, Labels: lbl}, &dev)
			var ae *apiError
			if errors.As(err, &ae) && ae.Status == http.StatusConflict {
				return c.registered(cmd, client, name, err)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, dev)
			}
			fmt.Fprintf(c.stdout, "registered device %s: %s, %s, labels %s\n", dev.Name, dev.SPIFFEID, dev.Status, formatLabels(dev.Labels))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID of the device's SVID (required)")
	fl.StringArrayVar(&labels, "label", nil, "label key=value (repeatable), e.g. role=controller")
	fl.BoolVar(&asJSON, "json", false, "print the registered device as JSON")
	return cmd
}

// registered is the error of a register that found the name taken (or the
// SPIFFE ID, which the API reports the same way): it names what is there,
// since register never changes an existing device.
func (c *cli) registered(cmd *cobra.Command, client *apiClient, name string, conflict error) error {
	var dev api.Device
	if err := client.do(cmd.Context(), http.MethodGet, devicePath(name), nil, &dev); err != nil {
		return conflict // the SPIFFE ID is taken, not the name: the API says which
	}
	return fmt.Errorf("device %s is already registered (%s, %s); register never changes a device", name, dev.SPIFFEID, dev.Status)
}
