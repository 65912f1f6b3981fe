package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	debouncer "github.com/ztgate/ztgate/internal/debounce"
)

// DefaultDebounce is how long Watch waits for a directory to stay quiet
// before it reloads, when its debounce argument is zero.
const DefaultDebounce = 250 * time.Millisecond

// watchRetry is how often Watch looks for a policy directory that was
// removed or renamed away.
const watchRetry = time.Second

// Watch keeps e in step with the policy directory dir until ctx is done:
// it loads dir once (which makes it e's backing directory), then reloads it
// with e.LoadDir after every change, so a new revision is compiled, tested
// and activated, or refused and reported through Status().LastError and
// OnReject, while the revision in force keeps deciding.
//
// Changes are debounced: a reload starts once dir has been quiet for
// debounce (DefaultDebounce when zero), and at the latest four debounce
// periods after the first change of a burst. Subdirectories are watched
// too. Editors that save by writing a new file and renaming it over the old
// one, and Kubernetes ConfigMap volumes, which swap a hidden symlink, are
// seen like any other change; a reload with unchanged files changes nothing.
// If dir itself is removed or renamed away, the failed reload is reported
// and Watch looks for dir again every second, reloading when it is back.
//
// Watch returns nil when ctx is done, and an error at once if dir cannot be
// watched at all.
func Watch(ctx context.Context, e *Engine, dir string, debounce time.Duration, log *slog.Logger) error {
	if e == nil {
		return errors.New("policy: watch: no engine")
	}
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	if log == nil {
		log = slog.Default()
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", dir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", root, err)
	}
	defer w.Close()
	if err := addTree(w, root, log); err != nil {
		return fmt.Errorf("policy: watch %s: %w", root, err)
	}
	log.Info("policy: watching the policy directory", "dir", root, "debounce", debounce)

	lost := false // root is gone; look for it every watchRetry
	timer := debouncer.New(debounce)
	defer timer.Stop()
	reload := func() {
		timer.Fired()
		if lost {
			_ = w.Remove(root) // in case a stale watch is left
			if err := addTree(w, root, log); err != nil {
				timer.After(watchRetry)
				return
			}
			lost = false
			log.Info("policy: policy directory is back", "dir", root)
		}
		if err := e.LoadDir(root); err != nil {
			log.Debug("policy: reload refused", "dir", root, "err", err)
		}
		if _, err := os.Stat(root); err != nil {
			lost = true
			log.Warn("policy: policy directory is gone; the revision in force stays, looking for the directory again",
				"dir", root, "revision", short(e.Revision()), "err", err)
			timer.After(watchRetry)
		}
	}

	reload() // whatever changed before the watches were in place
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("policy: watch %s: watcher closed", root)
			}
			if ev.Has(fsnotify.Create) {
				if st, err := os.Stat(ev.Name); err == nil && st.IsDir() && !isHidden(filepath.Base(ev.Name)) {
					// Files created in it before the watch was added are
					// read by the reload this event schedules.
					if err := addTree(w, ev.Name, log); err != nil {
						log.Warn("policy: cannot watch a new policy subdirectory", "dir", ev.Name, "err", err)
					}
				}
			}
			if relevant(ev) && !lost {
				timer.Event()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("policy: watch %s: watcher closed", root)
			}
			// An overflow loses events: reload to be sure.
			log.Warn("policy: watching the policy directory", "dir", root, "err", err)
			if !lost {
				timer.Event()
			}
		case <-timer.C:
			reload()
		}
	}
}

// relevant reports whether ev may change what LoadDir reads: any file or
// directory created, removed or renamed (hidden ones too: a ConfigMap volume
// changes by swapping a hidden symlink), and writes to visible *.rego files.
func relevant(ev fsnotify.Event) bool {
	if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		return true
	}
	if ev.Has(fsnotify.Write) {
		base := filepath.Base(ev.Name)
		return strings.HasSuffix(base, ".rego") && !isHidden(base)
	}
	return false
}

// addTree watches dir and every visible directory below it (fsnotify
// watches one level). Only a failure to watch dir itself is an error.
func addTree(w *fsnotify.Watcher, dir string, log *slog.Logger) error {
	if err := w.Add(dir); err != nil {
		return err
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir || !d.IsDir() {
			return nil
		}
		if isHidden(d.Name()) {
			return fs.SkipDir
		}
		if err := w.Add(p); err != nil {
			log.Warn("policy: cannot watch a policy subdirectory", "dir", p, "err", err)
		}
		return nil
	})
}
