package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
)

// maxHealthAnswer bounds what the probe reads of /readyz's answer.
const maxHealthAnswer = 64 << 10

func (c *cli) newHealthcheckCmd() *cobra.Command {
	var (
		cfgPath, rawURL, caFile string
		timeout                 = 3 * time.Second
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 when the gateway's /readyz answers 200, else 1",
		Long: `Probe the gateway's readiness endpoint, as a container HEALTHCHECK or a
monitoring script does: exit 0 when GET /readyz answers 200, else exit 1 with
one line saying why. /readyz is public, so no client certificate is needed,
but the gateway is verified: its certificate must chain to the CA in --ca and
carry the URL's host (or, with --config, a SPIFFE ID of its trust domain).

With --config (the file "ztgate serve" runs with), the URL is the API's
api_addr (an unspecified host, 0.0.0.0 or ::, probed on loopback) and the CA
is the built-in CA's certificate in the data dir, or identity.bundle_file.
Without it, the defaults of "ztgate dev": https://127.0.0.1:8443/readyz and
./ztgate-data/ca/ca.pem. --url and --ca override either.`,
		Example: `  ztgate healthcheck --config /etc/ztgate/ztgate.yaml
  ztgate healthcheck --url https://127.0.0.1:8443/readyz --ca ./ztgate-data/ca/ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: want more than 0", timeout)
			}
			cfg := app.DefaultConfig()
			trustDomain := ""
			if cfgPath != "" {
				var err error
				if cfg, err = app.LoadConfig(cfgPath); err != nil {
					return err
				}
				trustDomain = cfg.TrustDomain
			}
			target, ca, targetErr := healthTarget(cfg)
			if rawURL != "" {
				u, err := healthURL(rawURL)
				if err != nil {
					return err
				}
				target = u
			}
			if caFile != "" {
				ca = caFile
			} else if targetErr != nil {
				return targetErr
			}
			if target == "" {
				return targetErr
			}
			return c.probe(cmd.Context(), target, ca, trustDomain, timeout)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfgPath, "config", "", "the gateway's YAML configuration: the URL and the CA from it")
	fl.StringVar(&rawURL, "url", "", "readiness URL (default https://127.0.0.1:8443/readyz, or from --config); a bare https://host:port means its /readyz")
	fl.StringVar(&caFile, "ca", "", "PEM file of the CA certificates the gateway's certificate must chain to (default: from --config, or ./ztgate-data/ca/ca.pem)")
	fl.DurationVar(&timeout, "timeout", timeout, "give up after this long")
	return cmd
}

// healthTarget is the readiness URL and the CA file of the gateway cfg
// configures. The URL is set even when the CA cannot be known (the error).
func healthTarget(cfg app.Config) (target, caFile string, err error) {
	host, port, err := net.SplitHostPort(cfg.APIAddr)
	if err != nil {
		return "", "", fmt.Errorf("healthcheck: api_addr %q: %w", cfg.APIAddr, err)
	}
	// A listener on every interface is reached on loopback, which the
	// built-in CA's serving certificate always carries.
	switch ip := net.ParseIP(host); {
	case host == "" || ip != nil && ip.Equal(net.IPv4zero):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	target = "https://" + net.JoinHostPort(host, port) + "/readyz"
	switch cfg.Identity.Source {
	case "", app.IdentityBuiltin:
		dir := cfg.Identity.CADir
		if dir == "" {
			dir = filepath.Join(cfg.DataDir, "ca")
		}
		return target, filepath.Join(dir, identity.CACertFile), nil
	case app.IdentityFiles:
		return target, cfg.Identity.BundleFile, nil
	}
	return target, "", fmt.Errorf("healthcheck: identity source %s keeps no CA file on disk: give --ca", cfg.Identity.Source)
}

// healthURL checks --url: https, a host, no credentials; a bare base URL
// means its /readyz.
func healthURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return "", fmt.Errorf("--url %q: want an https:// URL such as https://127.0.0.1:8443/readyz", raw)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/readyz"
	}
	return u.String(), nil
}

// probe GETs target once, verifying the server against the CA certificates
// in caFile, and answers nil only for a 200.
func (c *cli) probe(ctx context.Context, target, caFile, trustDomain string, timeout time.Duration) error {
	roots, err := loadRoots(caFile)
	if err != nil {
		return err
	}
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is VerifyConnection's, which accepts what the
		// standard check accepts and also the gateway's SVID on an
		// address its certificate does not name; nothing unverified
		// gets through.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   verifyGateway(roots, u.Hostname(), trustDomain),
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true, Proxy: nil},
		// A probe follows nothing: a redirect is not a 200.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return probeError(target, timeout, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxHealthAnswer))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := http.StatusText(resp.StatusCode)
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return fmt.Errorf("%s: %s (HTTP %d)", target, msg, resp.StatusCode)
	}
	fmt.Fprintf(c.stdout, "%s: ready\n", target)
	return nil
}

func loadRoots(caFile string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read the CA file (give --ca or --config): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s: no CA certificate in it", caFile)
	}
	return roots, nil
}

// verifyGateway accepts a chain to roots whose leaf names host, or, when
// the trust domain is known, whose leaf is an X.509-SVID of it: a gateway
// with the operator's serving certificate (identity.source files) may not
// carry the loopback address the probe dials.
func verifyGateway(roots *x509.CertPool, host, trustDomain string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			return fmt.Errorf("the server's certificate does not chain to the CA: %w", err)
		}
		hostErr := leaf.VerifyHostname(host)
		if hostErr == nil || trustDomain == "" {
			return hostErr
		}
		td, err := spiffeid.TrustDomainFromString(trustDomain)
		if err != nil {
			return hostErr
		}
		id, err := x509svid.IDFromCert(leaf)
		if err != nil || !id.MemberOf(td) {
			return hostErr
		}
		return nil
	}
}

func probeError(target string, timeout time.Duration, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach %s: connection refused", target)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%s did not answer within %s", target, timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if msg := err.Error(); strings.Contains(msg, "certificate") {
		return fmt.Errorf("%s: TLS: %s", target, msg)
	}
	return fmt.Errorf("cannot reach %s: %w", target, err)
}
