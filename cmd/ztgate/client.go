package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/identity"
)

// Defaults of the client commands: the API and admin identity of `ztgate dev`.
const (
	defaultAPIURL   = "https://127.0.0.1:8443"
	defaultAdminDir = "./ztgate-data/admin"
	envAPI          = "ZTGATE_API"
	envAdminDir     = "ZTGATE_ADMIN_DIR"

	// maxResponse bounds what the client reads from the API.
	maxResponse = 8 << 20
)

// apiFlags are the flags shared by the commands that talk to the API.
type apiFlags struct {
	url      string
	adminDir string
}

func (f *apiFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.url, "api", defaultAPIURL, "admin API base URL (env "+envAPI+")")
	pf.StringVar(&f.adminDir, "admin-dir", defaultAdminDir, "directory with the admin identity: svid.pem, svid.key, bundle.pem (env "+envAdminDir+")")
}

// resolve applies the environment to flags the user did not set.
func (c *cli) resolve(cmd *cobra.Command, f *apiFlags) (apiURL, adminDir string) {
	apiURL, adminDir = f.url, f.adminDir
	if !cmd.Flags().Changed("api") {
		if v := c.getenv(envAPI); v != "" {
			apiURL = v
		}
	}
	if !cmd.Flags().Changed("admin-dir") {
		if v := c.getenv(envAdminDir); v != "" {
			adminDir = v
		}
	}
	return apiURL, adminDir
}

// apiClient calls the admin API over mTLS as the admin identity.
type apiClient struct {
	base *url.URL
	http *http.Client
}

func (c *cli) apiClient(cmd *cobra.Command, f *apiFlags) (*apiClient, error) {
	rawURL, adminDir := c.resolve(cmd, f)
	u, err := parseAPIURL(rawURL)
	if err != nil {
		return nil, err
	}
	tlsConf, err := identity.LoadSVIDDir(adminDir)
	if err != nil {
		return nil, fmt.Errorf("cannot load the admin identity from %s (run `ztgate dev` first, or set --admin-dir): %w", adminDir, err)
	}
	return &apiClient{base: u, http: newHTTPClient(tlsConf)}, nil
}

// parseAPIURL checks the --api value: an https URL of a host, nothing else.
func parseAPIURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(rawURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("--api %q: want an https:// URL such as %s", rawURL, defaultAPIURL)
	}
	return u, nil
}

func newHTTPClient(tlsConf *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:       tlsConf,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 20 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		// The API never redirects; following one could carry the admin
		// identity's requests somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// apiError is an error answer of the API: its {"error": "..."} and status.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("the API answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// do sends body (JSON, unless nil) and decodes a 2xx answer into out (unless nil).
func (a *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	if body == nil {
		return a.send(ctx, method, path, "", nil, out)
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return a.send(ctx, method, path, "application/json", raw, out)
}

// send sends body with the given content type (none when body is nil) and
// decodes a 2xx answer into out (unless nil).
func (a *apiClient) send(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	u := a.base.String() + path
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return a.transportError(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("reading the answer of the API at %s: %w", a.base, err)
	}
	if len(raw) > maxResponse {
		return fmt.Errorf("the answer of the API at %s is larger than %d bytes", a.base, maxResponse)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e api.ErrorResponse
		_ = json.Unmarshal(raw, &e)
		return &apiError{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("the API at %s answered %s %s with unexpected JSON: %w", a.base, method, path, err)
	}
	return nil
}

func (a *apiClient) transportError(err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot reach the API at %s (is `ztgate dev` running?)", a.base)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("the API at %s did not answer in time", a.base)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("cannot reach the API at %s: %v", a.base, dnsErr)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("calling the API at %s: %w", a.base, err)
}

// callAPI sends one request to the API as the admin identity of f and
// returns the JSON answer as it came, for --json to print and the caller
// to decode.
func (c *cli) callAPI(cmd *cobra.Command, f *apiFlags, method, path string, body any) (json.RawMessage, error) {
	client, err := c.apiClient(cmd, f)
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := client.do(cmd.Context(), method, path, body, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}
