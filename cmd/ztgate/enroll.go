package main

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

const envToken = "ZTGATE_TOKEN"

func (c *cli) newTokenCmd(f *apiFlags) *cobra.Command {
	var (
		ttl    time.Duration
		labels []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "token NAME",
		Short: "Register a device as pending and print a one-time bootstrap token and the CA pin",
		Long: `Register a device as pending and print a one-time bootstrap token for it,
with the SHA-256 pin of the CA's public key:

  token=<T>
  ca_pin=sha256:<hex>
  spiffe_id=spiffe://TRUST-DOMAIN/device/NAME
  expires_at=<RFC 3339 time>

On the device, "ztgate enroll --api URL --token T --ca-pin PIN" then makes its
key and CSR, checks the API's certificate against the pin and gets its SVID.
The token works once, only for this device, and only until it expires. Asking
for a new token of a pending device replaces its old one.`,
		Example: `  ztgate device token sensor-2
  ztgate device token pump-7 --ttl 30m --label site=north --json`,
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
			if ttl <= 0 || ttl > registry.MaxTokenTTL {
				return fmt.Errorf("--ttl %s: want more than 0 and at most %s", ttl, registry.MaxTokenTTL)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var tok tokenResponse
			req := tokenRequest{Name: name, TTL: ttl.String(), Labels: lbl}
			err = client.do(cmd.Context(), http.MethodPost, "/v1/tokens", req, &tok)
			var ae *apiError
			if errors.As(err, &ae) && ae.Status == http.StatusConflict && !strings.HasPrefix(ae.Message, api.NoCAPrefix) {
				// A new token cannot re-enroll a device that has one:
				// say what can.
				return fmt.Errorf("%w; a device that lost its enrollment answer reruns `ztgate enroll` with the same token and --out "+
					"while the token is valid; otherwise issue it an SVID with `ztgate device enroll %s`", err, name)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, tok)
			}
			fmt.Fprintf(c.stdout, "token=%s\nca_pin=%s\nspiffe_id=%s\nexpires_at=%s\n",
				tok.Token, tok.CAPin, tok.SPIFFEID, tok.ExpiresAt.UTC().Format(time.RFC3339))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used")
	fl.StringArrayVar(&labels, "label", nil, "label key=value of the device (repeatable)")
	fl.BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}

func (c *cli) newBootstrapEnrollCmd() *cobra.Command {
	var apiURL, token, pin, out string
	cmd := &cobra.Command{
		Use:   "enroll --api URL --token T --ca-pin sha256:HEX [--out DIR]",
		Short: "Enroll this device with a bootstrap token: get its SVID without an admin identity",
		Long: `Enroll this device with a bootstrap token from "ztgate device token". The
private key and the CSR are made here; the key never leaves this machine.

The API's certificate is trusted only if it was issued by the CA whose public
key has the SHA-256 pin given with --ca-pin (printed next to the token): no
other trust on first use, no system roots. A certificate that does not match
ends the connection before the token is sent. Dial the API by a name on its
certificate (https://localhost:8443 for a local gateway) to have the name
checked as well.

Writes OUT/svid.pem (certificate chain), OUT/svid.key and OUT/bundle.pem (the
CA bundle that verifies the gateway), and OUT/api.url (the --api URL, which
"ztgate renew --dir OUT" renews through). The token is read from --token or
the environment variable ZTGATE_TOKEN.

The key is written to OUT/enroll.key before the token is sent, and removed
once the SVID is written. If the answer is lost (the connection drops, the
machine restarts), run the same command again with the same --out: it sends
the kept key, and the API, which bound the token to that key, answers with
an SVID again while the token has not expired.`,
		Example: `  ztgate enroll --api https://gw.example.com:8443 --token 4fj... --ca-pin sha256:9b1c... --out /etc/ztgate`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("api") {
				if v := c.getenv(envAPI); v != "" {
					apiURL = v
				}
			}
			if !cmd.Flags().Changed("token") {
				token = c.getenv(envToken)
			}
			if strings.TrimSpace(pin) == "" {
				return errors.New("enroll: --ca-pin is required: the ca_pin printed by `ztgate device token`; without it the API's certificate cannot be trusted")
			}
			if strings.TrimSpace(token) == "" {
				return errors.New("enroll: --token is required (or set " + envToken + ")")
			}
			u, err := parseAPIURL(apiURL)
			if err != nil {
				return err
			}
			tlsConf, err := identity.PinnedClientTLSConfig(pin)
			if err != nil {
				return fmt.Errorf("--ca-pin %q: %w", pin, err)
			}
			client := &apiClient{base: u, http: newHTTPClient(tlsConf)}
			defer client.http.CloseIdleConnections()
			// The pin is checked before anything is written or sent: a
			// wrong API gets neither the token nor a file in --out.
			if err := client.do(cmd.Context(), http.MethodGet, "/healthz", nil, nil); err != nil {
				if errors.Is(err, identity.ErrPinMismatch) {
					return fmt.Errorf("enroll: the API at %s does not present a certificate of the CA pinned by --ca-pin; the token was not sent", u)
				}
				return fmt.Errorf("enroll: %w", err)
			}
			key, err := enrollmentKey(out, registry.TokenID(token))
			if err != nil {
				return fmt.Errorf("enroll: %w", err)
			}
			var svid svidResponse
			err = client.do(cmd.Context(), http.MethodPost, "/v1/enroll", enrollRequest{Token: token, CSR: string(key.csrPEM)}, &svid)
			var ae *apiError
			switch {
			case errors.Is(err, identity.ErrPinMismatch):
				return fmt.Errorf("enroll: the API at %s does not present a certificate of the CA pinned by --ca-pin; the token was not sent", u)
			case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized && key.reused:
				return fmt.Errorf("enroll: the API refused the token with the key kept in %s from an earlier attempt: "+
					"the token has expired, or the device is no longer active; an admin can issue it an SVID with `ztgate device enroll NAME`",
					key.path)
			case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
				return fmt.Errorf("enroll: the API refused the token: it is wrong, expired, or already used with another key " +
					"(an attempt that lost its answer is retried with the same --out, which keeps its key, before the token expires; " +
					"a new token works only for a device that is still pending, and an admin issues an enrolled one an SVID with `ztgate device enroll NAME`)")
			case errors.As(err, &ae) && ae.Status == http.StatusConflict:
				return fmt.Errorf("enroll: the device was suspended or revoked while its SVID was signed; ask an admin")
			case errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests:
				return fmt.Errorf("enroll: too many attempts from this address; wait a minute and try again")
			case err != nil:
				// The answer may have been lost after the token was
				// redeemed: the key stays for a retry.
				return fmt.Errorf("enroll: %w (if the token was redeemed, run the same command again: the key is kept in %s)", err, key.path)
			}
			if err := identity.WriteSVIDDir(out, []byte(svid.SVIDPEM), key.keyPEM, []byte(svid.BundlePEM)); err != nil {
				return err
			}
			key.done()
			// The device reaches the API by this URL, which an admin's
			// view of it may not be: `ztgate renew --dir OUT` renews
			// through it. The SVID is in place either way.
			if err := recordAPIURL(out, u.String()); err != nil {
				fmt.Fprintf(c.stderr, "ztgate: warning: %v; give `ztgate renew` the API with --api\n", err)
			}
			fmt.Fprintf(c.stdout, "enrolled as %s\n", svid.SPIFFEID)
			if !svid.ExpiresAt.IsZero() {
				fmt.Fprintf(c.stdout, "expires:   %s\n", svid.ExpiresAt.UTC().Format(time.RFC3339))
			}
			fmt.Fprintf(c.stdout, "wrote %s (certificate chain), %s (private key), %s (CA bundle)\n",
				filepath.Join(out, identity.SVIDFile), filepath.Join(out, identity.SVIDKeyFile), filepath.Join(out, identity.BundleFile))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&apiURL, "api", defaultAPIURL, "enrollment API base URL (env "+envAPI+")")
	fl.StringVar(&token, "token", "", "bootstrap token from ztgate device token (env "+envToken+")")
	fl.StringVar(&pin, "ca-pin", "", "pin of the CA, sha256:HEX, from ztgate device token (required)")
	fl.StringVar(&out, "out", ".", "directory to write svid.pem, svid.key and bundle.pem to")
	return cmd
}
