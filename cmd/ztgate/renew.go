package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/identity/svidrenew"
	"github.com/ztgate/ztgate/internal/atomicfile"
)

const (
	// apiURLFile, in an SVID directory, is the API the device enrolled
	// through (written by `ztgate enroll`): where `ztgate renew` renews
	// when neither --api nor ZTGATE_API says otherwise.
	apiURLFile = "api.url"
	// defaultExecTimeout bounds one run of --exec.
	defaultExecTimeout = time.Minute
	// execWaitDelay is how long a finished or killed --exec command may
	// keep our output open (a child it left behind) before we stop
	// waiting for it.
	execWaitDelay = 5 * time.Second
	// maxSleep bounds one wait for the next renewal, so that a machine
	// that was suspended (when the monotonic clock stands still) notices
	// the wall-clock time of the renewal within this long after resuming.
	maxSleep = time.Minute
)

func (c *cli) newRenewCmd() *cobra.Command {
	var (
		dir, apiURL, execCmd string
		once                 bool
		execTimeout          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "renew --dir DIR [--api URL] [--exec CMD] [--once]",
		Short: "Keep the SVID in DIR fresh: renew it at half-life, then run a command",
		Long: `Keep the X.509-SVID in DIR (svid.pem, svid.key, bundle.pem, as "ztgate enroll"
and "ztgate device enroll" write them) fresh for any program that reads it:
mosquitto_sub, Telegraf, Node-RED, a Python client.

At half-life of the current SVID (up to a tenth of the half earlier, so that
a fleet does not renew at once) it makes a new key and has the API sign it
(POST /v1/svid/renew), authenticated with the current SVID over mutual TLS,
the API verified against DIR/bundle.pem and the URL's host. The new SVID
keeps the lifetime the current one was signed for (the gateway signs at most
its svid_ttl). The key never leaves DIR. The files are replaced so that a
crash leaves a usable pair: the new certificate is written as svid.pem.new,
then bundle.pem and svid.key are replaced, then svid.pem.new is renamed to
svid.pem; a later start finishes an interrupted renewal. Then CMD runs
(sh -c CMD, its output is ours, --exec-timeout bounds it); a failing CMD is
logged and the loop goes on.

A failed renewal is retried with exponential backoff and jitter (1s
doubling, at most 5m, never past the SVID's expiry) and each failure logged
in one line; the files of the still-valid SVID are never touched. An SVID
that has expired cannot renew itself: the command then exits 1 with
"SVID expired at T: re-enroll the device".

The API: --api, else the environment variable ZTGATE_API, else DIR/api.url
(written by "ztgate enroll"), else https://127.0.0.1:8443.

--once renews at once, runs CMD and exits (0, or 1 with the error), for
cron or a systemd timer. Without it the command runs until SIGINT or
SIGTERM. Run one renewer per directory.`,
		Example: `  ztgate renew --dir /etc/ztgate --exec 'systemctl reload mosquitto'
  ztgate renew --dir ./sensor-1 --api https://gw.example.com:8443 --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("renew: --dir is required: the directory with svid.pem, svid.key and bundle.pem")
			}
			if execTimeout <= 0 {
				return fmt.Errorf("renew: --exec-timeout %s: want more than 0", execTimeout)
			}
			cur, err := svidrenew.LoadDir(dir)
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return fmt.Errorf("renew: %w (enroll the device into %s first: ztgate enroll or ztgate device enroll --out)", err, dir)
			}
			if err != nil {
				return fmt.Errorf("renew: %w", err)
			}
			api, from, err := c.renewAPI(cmd, apiURL, dir)
			if err != nil {
				return err
			}
			if err := checkUnexpired(cur); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			r := &renewer{dir: dir, api: api, exec: execCmd, execTimeout: execTimeout, stdout: c.stdout, stderr: c.stderr}
			r.logf("svid %s (serial %s) expires %s; renewing through %s (%s)",
				cur.ID, cur.Serial(), stamp(cur.Leaf().NotAfter), api, from)
			if once {
				return r.once(ctx, cur)
			}
			return r.loop(ctx, cur)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dir, "dir", "", "directory with svid.pem, svid.key and bundle.pem (required)")
	fl.StringVar(&apiURL, "api", defaultAPIURL, "API base URL (env "+envAPI+", else DIR/"+apiURLFile+")")
	fl.StringVar(&execCmd, "exec", "", "command to run (sh -c) after each renewal, e.g. 'systemctl reload mosquitto'")
	fl.DurationVar(&execTimeout, "exec-timeout", defaultExecTimeout, "how long --exec may run before it is killed")
	fl.BoolVar(&once, "once", false, "renew now, once, run --exec and exit")
	return cmd
}

// renewAPI is the API to renew through and where that came from: --api,
// else ZTGATE_API, else DIR/api.url, else the default of the other client
// commands.
func (c *cli) renewAPI(cmd *cobra.Command, flagURL, dir string) (api, from string, err error) {
	raw, from := flagURL, "--api"
	if !cmd.Flags().Changed("api") {
		path := filepath.Join(dir, apiURLFile)
		b, rerr := os.ReadFile(path)
		switch {
		case c.getenv(envAPI) != "":
			raw, from = c.getenv(envAPI), envAPI
		case rerr == nil:
			raw, from = strings.TrimSpace(string(b)), path
		case errors.Is(rerr, fs.ErrNotExist):
			from = "default"
		default:
			return "", "", fmt.Errorf("renew: %w", rerr)
		}
	}
	u, err := parseAPIURL(raw)
	if err != nil {
		return "", "", fmt.Errorf("renew: %w (from %s)", err, from)
	}
	return u.String(), from, nil
}

// recordAPIURL writes DIR/api.url for `ztgate renew`.
func recordAPIURL(dir, apiURL string) error {
	if err := atomicfile.WriteFile(filepath.Join(dir, apiURLFile), []byte(apiURL+"\n"), 0o644); err != nil {
		return fmt.Errorf("recording the API URL in %s: %w", dir, err)
	}
	return nil
}

// checkUnexpired is the one error of an SVID that can no longer renew
// itself: the API authenticates the renewal with it.
func checkUnexpired(sv *svidrenew.SVID) error {
	if exp := sv.Leaf().NotAfter; !time.Now().Before(exp) {
		return fmt.Errorf("renew: SVID expired at %s: re-enroll the device", stamp(exp))
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// renewer keeps the SVID of one directory fresh.
type renewer struct {
	dir, api, exec string
	execTimeout    time.Duration
	stdout, stderr io.Writer
}

// logf writes one log line to stderr, with the time: a service manager
// that adds its own does no harm, one that does not (nohup, cron mail)
// needs it.
func (r *renewer) logf(format string, args ...any) {
	fmt.Fprintf(r.stderr, "%s renew: %s\n", stamp(time.Now()), oneLine(fmt.Sprintf(format, args...)))
}

// once renews now with one attempt and runs --exec. A failing --exec is an
// error here: a scheduler running --once should hear of it.
func (r *renewer) once(ctx context.Context, cur *svidrenew.SVID) error {
	next, err := r.renew(ctx, cur)
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	r.renewed(next)
	if err := r.runExec(ctx); err != nil {
		return fmt.Errorf("renew: the SVID was renewed, but %w", err)
	}
	return nil
}

// loop renews at each renewal time until ctx ends (nil) or the SVID
// expires unrenewed (an error).
func (r *renewer) loop(ctx context.Context, cur *svidrenew.SVID) error {
	at := cur.RenewalTime(rand.Float64())
	r.logf("next renewal at %s", stamp(at))
	for {
		if !sleepUntil(ctx, at) {
			r.logf("stopped")
			return nil
		}
		if disk := r.reload(cur); disk != cur {
			cur, at = disk, disk.RenewalTime(rand.Float64())
			r.logf("the SVID in %s was replaced (serial %s, expires %s); next renewal at %s",
				r.dir, cur.Serial(), stamp(cur.Leaf().NotAfter), stamp(at))
			continue
		}
		next, err := r.renewUntilDone(ctx, cur)
		if err != nil {
			return err
		}
		if next == nil {
			r.logf("stopped")
			return nil
		}
		cur, at = next, r.renewed(next)
		if err := r.runExec(ctx); err != nil {
			r.logf("%v; the renewal stands", err)
		}
	}
}

// reload returns the SVID now in the directory if it is not cur (someone
// enrolled the device again, or restored a backup), so that the loop
// renews what programs read; else, or if the directory cannot be read,
// cur.
func (r *renewer) reload(cur *svidrenew.SVID) *svidrenew.SVID {
	disk, err := svidrenew.LoadDir(r.dir)
	if err != nil {
		r.logf("cannot read the SVID in %s (%v); renewing the one read before", r.dir, err)
		return cur
	}
	if disk.Serial() == cur.Serial() || time.Now().After(disk.Leaf().NotAfter) {
		return cur
	}
	return disk
}

// renewUntilDone renews cur, retrying with backoff, until it succeeds, ctx
// ends (nil, nil) or cur expires (an error).
func (r *renewer) renewUntilDone(ctx context.Context, cur *svidrenew.SVID) (*svidrenew.SVID, error) {
	backoff := svidrenew.MinRetry
	expiry := cur.Leaf().NotAfter
	for attempt := 1; ; attempt++ {
		next, err := r.renew(ctx, cur)
		if err == nil {
			return next, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		left := time.Until(expiry)
		delay := svidrenew.RetryDelay(backoff, left, rand.Float64())
		if delay >= left {
			r.logf("renewal failed (attempt %d): %v; no time left for another before the SVID expires at %s",
				attempt, err, stamp(expiry))
			// The SVID is still valid until then, for whatever reads it.
			if !sleepUntil(ctx, expiry) {
				return nil, nil
			}
			return nil, checkUnexpired(cur)
		}
		r.logf("renewal failed (attempt %d): %v; retrying in %s (the SVID expires at %s)",
			attempt, err, delay.Round(time.Millisecond), stamp(expiry))
		if !sleepUntil(ctx, time.Now().Add(delay)) {
			return nil, nil
		}
		backoff = svidrenew.NextBackoff(backoff)
	}
}

// renew has the API sign a new SVID with cur's lifetime and puts it in the
// directory.
func (r *renewer) renew(ctx context.Context, cur *svidrenew.SVID) (*svidrenew.SVID, error) {
	ren, err := svidrenew.Renew(ctx, r.api, cur, cur.Lifetime())
	if err != nil {
		return nil, err
	}
	if err := ren.WriteDir(r.dir); err != nil {
		return nil, err
	}
	return ren.SVID, nil
}

// renewed logs a renewal and returns when the next one is due.
func (r *renewer) renewed(sv *svidrenew.SVID) time.Time {
	at := sv.RenewalTime(rand.Float64())
	r.logf("renewed svid, expires %s, next renewal at %s (serial %s)", stamp(sv.Leaf().NotAfter), stamp(at), sv.Serial())
	return at
}

// runExec runs --exec, if any, with our output, for at most --exec-timeout.
func (r *renewer) runExec(ctx context.Context) error {
	if r.exec == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.execTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", r.exec)
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	cmd.WaitDelay = execWaitDelay
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("--exec %q did not finish within %s (--exec-timeout)", r.exec, r.execTimeout)
	}
	if err != nil {
		return fmt.Errorf("--exec %q failed: %w", r.exec, err)
	}
	return nil
}

// sleepUntil waits until the wall-clock time t or until ctx ends, and
// reports whether ctx is still live. It wakes at least every maxSleep to
// look at the clock again.
func sleepUntil(ctx context.Context, t time.Time) bool {
	for {
		d := time.Until(t)
		if d <= 0 {
			return ctx.Err() == nil
		}
		timer := time.NewTimer(min(d, maxSleep))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return false
		}
	}
}
