package testutil

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/internal/testpki"
)

// Observed is a gateway whose log a test reads and whose decision log is
// written to a file, so that a denial can be followed from the gateway's
// log line to its decision-log entry.
type Observed struct {
	*Env
	// Logs is everything the gateway has logged so far.
	Logs *Logs
	// DecisionLogPath is the decision log file (DataDir/decisions.log, as
	// `ztgate dev` writes it); empty when configure turned the log off.
	DecisionLogPath string
}

// StartObserved is Start with the gateway's log kept for the test to read
// and the decision log written to DataDir/decisions.log (denies only, as
// `ztgate dev` does). configure, if not nil, may change the configuration
// last, for example the decision log's sample rate.
func StartObserved(t testing.TB, configure func(*app.Config), opts ...Option) *Observed {
	t.Helper()
	logs := &Logs{}
	e, cfg := start(t, &logs.buf, func(cfg *app.Config) {
		cfg.DecisionLog.Path = filepath.Join(cfg.DataDir, app.DevDecisionLogFile)
		if configure != nil {
			configure(cfg)
		}
	}, opts)
	ob := &Observed{Env: e, Logs: logs}
	if cfg.DecisionLog.On() && cfg.DecisionLog.Path != "" && cfg.DecisionLog.Path != "-" {
		ob.DecisionLogPath = cfg.DecisionLog.Path
	}
	return ob
}

// Logs is a gateway's log (slog text format), safe to read while the
// gateway writes it.
type Logs struct {
	buf testpki.LogBuffer
}

// String is the whole log so far.
func (l *Logs) String() string { return l.buf.String() }

// Lines returns the lines logged so far that contain every one of substrs.
func (l *Logs) Lines(substrs ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if containsAll(line, substrs) {
			out = append(out, line)
		}
	}
	return out
}

// WaitFor waits up to within for a line that contains every one of
// substrs and returns the first such line; it fails the test if none comes.
func (l *Logs) WaitFor(t testing.TB, within time.Duration, substrs ...string) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if lines := l.Lines(substrs...); len(lines) > 0 {
			return lines[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within %s", substrs, within)
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsAll(s string, substrs []string) bool {
	for _, sub := range substrs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// LogAttr returns the value of key in one slog text line (unquoted), or ""
// when the line has no such attribute.
func LogAttr(line, key string) string {
	for rest := line; ; {
		i := strings.Index(rest, key+"=")
		if i < 0 {
			return ""
		}
		if i > 0 && rest[i-1] != ' ' {
			rest = rest[i+len(key)+1:]
			continue
		}
		v := rest[i+len(key)+1:]
		if strings.HasPrefix(v, `"`) {
			q, err := strconv.QuotedPrefix(v)
			if err != nil {
				return ""
			}
			s, err := strconv.Unquote(q)
			if err != nil {
				return ""
			}
			return s
		}
		if j := strings.IndexByte(v, ' '); j >= 0 {
			v = v[:j]
		}
		return v
	}
}

// Decisions reads every complete entry of the decision log so far. A line
// that is complete but not a decision-log entry fails the test.
func (o *Observed) Decisions(t testing.TB) []decisionlog.Entry {
	t.Helper()
	if o.DecisionLogPath == "" {
		t.Fatal("the decision log is off")
	}
	raw, err := os.ReadFile(o.DecisionLogPath)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("read decision log: %v", err)
	}
	// The writer may be mid-line: only what ends in a newline is complete.
	if i := bytes.LastIndexByte(raw, '\n'); i >= 0 {
		raw = raw[:i+1]
	} else {
		return nil
	}
	var out []decisionlog.Entry
	for _, line := range bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n")) {
		var e decisionlog.Entry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("decision log line is not an entry: %v: %s", err, line)
		}
		out = append(out, e)
	}
	return out
}

// WaitDecision waits up to within for the decision-log entry with id and
// returns it.
func (o *Observed) WaitDecision(t testing.TB, id string, within time.Duration) decisionlog.Entry {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, e := range o.Decisions(t) {
			if e.DecisionID == id {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no decision-log entry %q within %s", id, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// IssueTTL signs an SVID for id with the real CA, valid for ttl from now,
// without touching the registry: for example a short-lived SVID for an
// enrolled device, to watch it expire.
func (e *Env) IssueTTL(t testing.TB, id string, ttl time.Duration) *Device {
	t.Helper()
	sid, err := spiffeid.FromString(id)
	if err != nil {
		t.Fatalf("issue %s: %v", id, err)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := e.App.CA().SignCSR(csrPEM, sid, ttl)
	if err != nil {
		t.Fatalf("issue %s: %v", id, err)
	}
	return e.deviceFromPEM(t, "", id, chain, keyPEM)
}
