package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/registry"
)

// The day-2 commands on devices: change labels, delete.

func (c *cli) newLabelCmd(f *apiFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "label NAME key=value... key-...",
		Short: "Set (key=value) and remove (key-) labels of a device",
		Long: `Set and remove labels of a device in one change: key=value sets a label (the
value may hold '=' and ','; the first '=' splits), key- removes one. The
policy sees the new labels at the device's next decision. Keys: letters,
digits, '.', '_', '/' and '-', at most 63 characters.`,
		Example: `  ztgate device label sensor-1 site=plant-b zone=north
  ztgate device label sensor-1 zone-`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			change, err := parseLabelChanges(args[1:])
			if err != nil {
				return err
			}
			raw, err := c.callAPI(cmd, f, http.MethodPatch, devicePath(name)+"/labels", change)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			return printDeviceLine(c.stdout, raw, func(d deviceSummary) string {
				return fmt.Sprintf("device %s: labels %s", d.Name, formatLabels(d.Labels))
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer (the device)")
	return cmd
}

// labelChange is the body of PATCH /v1/devices/{name}/labels.
type labelChange struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// parseLabelChanges parses key=value and key- arguments. Everything the
// registry would refuse about a key, and a key named twice, is refused
// here, before any request, so that a typo changes nothing.
func parseLabelChanges(args []string) (labelChange, error) {
	var ch labelChange
	seen := map[string]string{} // key -> "set" or "removed"
	for _, arg := range args {
		k, v, isSet := strings.Cut(arg, "=")
		if !isSet {
			if !strings.HasSuffix(arg, "-") {
				return ch, fmt.Errorf("label %q: want key=value or key-", arg)
			}
			k = strings.TrimSuffix(arg, "-")
		}
		if k == "" {
			return ch, fmt.Errorf("label %q: want key=value or key-", arg)
		}
		if err := checkLabelKey(k); err != nil {
			return ch, fmt.Errorf("label %q: %w", arg, err)
		}
		what := "removed"
		if isSet {
			what = "set"
		}
		switch prev, dup := seen[k]; {
		case dup && prev == what:
			return ch, fmt.Errorf("label %q is %s twice", k, what)
		case dup:
			return ch, fmt.Errorf("label %q is both set and removed", k)
		}
		seen[k] = what
		if isSet {
			if ch.Set == nil {
				ch.Set = map[string]string{}
			}
			ch.Set[k] = v
		} else {
			ch.Remove = append(ch.Remove, k)
		}
	}
	return ch, nil
}

// checkLabelKey applies the registry's rule for label keys. The registry
// exports it only through its selector parser, which also splits on ',',
// trims spaces and reads a trailing '!' as an operator; keys with those
// (never valid) are refused first, so that the parser sees exactly the key.
func checkLabelKey(k string) error {
	if strings.ContainsAny(k, ", \t\r\n!") {
		return fmt.Errorf("label key %q: only [A-Za-z0-9._/-] allowed", k)
	}
	if _, err := registry.ParseSelector(k + "=x"); err != nil {
		msg := err.Error()
		if _, rest, ok := strings.Cut(msg, "selector: "); ok {
			msg = rest
		}
		return errors.New(msg)
	}
	return nil
}

func (c *cli) newDeleteCmd(f *apiFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a device: its sessions end, its identity is no longer enrolled",
		Long: `Delete a device from the registry. Its live MQTT sessions end and its SVID is
no longer accepted (nothing is enrolled under its SPIFFE ID any more); its
name can be enrolled again later, as a new device. It asks nothing: to keep
a record and refuse the identity for good, "device revoke" is the command.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateName(name); err != nil {
				return err
			}
			raw, err := c.callAPI(cmd, f, http.MethodDelete, devicePath(name), nil)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			return printDeviceLine(c.stdout, raw, func(d deviceSummary) string {
				return fmt.Sprintf("deleted device %s (%s, status %s, labels %s)", d.Name, d.SPIFFEID, d.Status, formatLabels(d.Labels))
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer (the deleted device)")
	return cmd
}

// deviceSummary is what the day-2 commands print of a device.
type deviceSummary struct {
	Name     string            `json:"name"`
	SPIFFEID string            `json:"spiffe_id"`
	Status   string            `json:"status"`
	Labels   map[string]string `json:"labels"`
}

func printDeviceLine(w io.Writer, raw json.RawMessage, line func(deviceSummary) string) error {
	var d deviceSummary
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("the API answered with unexpected JSON: %w", err)
	}
	_, err := fmt.Fprintln(w, line(d))
	return err
}

// policy rm: the counterpart of policy push.

func (c *cli) newPolicyRmCmd() *cobra.Command {
	f := &apiFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rm MODULE",
		Short: "Remove a Rego module from a running gateway; only if what is left compiles and its tests pass",
		Long: `Remove the module MODULE (as "policy status" lists it) from a running gateway.
The gateway compiles what is left and runs its tests; only if both succeed is
the new revision enforced and the file removed from the policy directory.
Otherwise the revision in force stays and the error is printed. The last
module cannot be removed: a gateway without a policy would deny everything.`,
		Example: "  ztgate policy rm site_isolation.rego",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !moduleNameRE.MatchString(name) {
				return fmt.Errorf("module name %q: want letters, digits, '.', '_' or '-' ending in .rego", name)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var raw json.RawMessage
			err = client.do(cmd.Context(), http.MethodDelete, "/v1/policy/modules/"+url.PathEscape(name), nil, &raw)
			var ae *apiError
			if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity {
				msg, long := summarize(ae.Message)
				if long {
					fmt.Fprintln(c.stdout, strings.TrimSpace(ae.Message))
					msg += " (the report is above)"
				}
				return fmt.Errorf("policy rm %s: refused, the policy in force is unchanged: %s", name, msg)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, raw)
			}
			var st policyStatus
			if err := json.Unmarshal(raw, &st); err != nil {
				return fmt.Errorf("the API answered with unexpected JSON: %w", err)
			}
			fmt.Fprintf(c.stdout, "removed %s\n", name)
			printPolicyStatus(c.stdout, st)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer (the policy status)")
	return cmd
}
