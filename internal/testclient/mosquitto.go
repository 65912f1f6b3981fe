package testclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireMosquitto skips the test when the mosquitto command line clients
// are not installed (the CI script installs them).
func RequireMosquitto(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"mosquitto_pub", "mosquitto_sub", "stdbuf"} {
		if _, err := exec.LookPath(bin); err != nil {
			// CI installs them (.ci/run), so there a missing client is a
			// broken set-up, not a reason to skip the 3.1.1 tests.
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed but CI is set (apt-get install mosquitto-clients coreutils)", bin)
			}
			t.Skipf("%s not installed (apt-get install mosquitto-clients coreutils)", bin)
		}
	}
}

// StartSub starts mosquitto_sub in the background with line-buffered
// output (through stdbuf), so that its debug lines ("Subscribed ...") can
// be waited for while it runs.
func StartSub(t testing.TB, args ...string) *Proc {
	t.Helper()
	return StartProc(t, "stdbuf", append([]string{"-oL", "mosquitto_sub"}, args...)...)
}

// MosquittoArgs are the connection flags of the README's quickstart: host
// and port of the gateway's MQTT listener at addr, the CA bundle, the
// SVID and its key.
func MosquittoArgs(addr, bundleFile, svidFile, keyFile string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{
		"-h", host, "-p", port,
		"--cafile", bundleFile,
		"--cert", svidFile,
		"--key", keyFile,
	}
}

// Result is the outcome of a finished command.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Output is stdout and stderr together, for messages.
func (r Result) Output() string { return r.Stdout + r.Stderr }

// Run runs a command to completion, killing it after Wait.
func Run(t testing.TB, name string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := Result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	default:
		t.Fatalf("run %s: %v", name, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %s: %s", name, args, Wait, res.Output())
	}
	return res
}

// Proc is a command running in the background whose stdout lines a test
// can wait for.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	lines   []string
	stderr  bytes.Buffer
	arrived chan struct{}
}

// StartProc starts a command in the background; it is killed when the test
// ends if still running.
func StartProc(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	p := &Proc{cmd: cmd, done: make(chan struct{}), arrived: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.arrived)
			p.arrived = make(chan struct{})
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// WaitLine waits up to within for a stdout line containing substr and
// returns it.
func (p *Proc) WaitLine(t testing.TB, substr string, within time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l, substr) {
				p.mu.Unlock()
				return l
			}
		}
		arrived := p.arrived
		p.mu.Unlock()
		select {
		case <-arrived:
		case <-p.done:
			p.mu.Lock()
			found := false
			for _, l := range p.lines {
				found = found || strings.Contains(l, substr)
			}
			p.mu.Unlock()
			if !found {
				t.Fatalf("process exited without printing %q; output: %s", substr, p.Output())
			}
		case <-deadline.C:
			t.Fatalf("no line containing %q within %s; output: %s", substr, within, p.Output())
		}
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(t testing.TB, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process still running after %s; output: %s", within, p.Output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Lines are the stdout lines printed so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n") + "\n" + p.stderr.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
