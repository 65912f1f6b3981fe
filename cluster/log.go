package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// slogAdapter feeds nats-server's log into slog. Its Fatalf only logs and
// remembers the message: the server calls Fatalf for recoverable startup
// failures such as a port in use, and the gateway must report those as an
// error instead of exiting.
type slogAdapter struct {
	l *slog.Logger

	mu        sync.Mutex
	lastFatal string // first Fatalf message
}

func newSlogAdapter(l *slog.Logger, node string) *slogAdapter {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &slogAdapter{l: l.With("component", "nats", "node", node)}
}

func (a *slogAdapter) logf(level slog.Level, format string, v ...any) {
	if !a.l.Enabled(context.Background(), level) {
		return
	}
	a.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

func (a *slogAdapter) Noticef(format string, v ...any) { a.logf(slog.LevelInfo, format, v...) }
func (a *slogAdapter) Warnf(format string, v ...any)   { a.logf(slog.LevelWarn, format, v...) }
func (a *slogAdapter) Errorf(format string, v ...any)  { a.logf(slog.LevelError, format, v...) }
func (a *slogAdapter) Debugf(format string, v ...any)  { a.logf(slog.LevelDebug, format, v...) }
func (a *slogAdapter) Tracef(format string, v ...any)  { a.logf(slog.LevelDebug-4, format, v...) }

func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.mu.Lock()
	// The first fatal is the cause; later ones are usually its fallout.
	if a.lastFatal == "" {
		a.lastFatal = msg
	}
	a.mu.Unlock()
	a.l.Error(msg)
}

func (a *slogAdapter) fatal() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastFatal
}
