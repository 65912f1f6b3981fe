package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/ztgate/ztgate/internal/atomicfile"
)

// MaxModules bounds the number of files (tests included) a set given to
// ApplyModules may hold.
const MaxModules = 1000

// maxModulePath bounds the length of a module's slash-separated path.
const maxModulePath = 1024

// ErrNotCommitted is wrapped by the error of a change that passed the
// checks but that the engine's CommitFunc refused (a cluster that cannot
// take it, say). The revision in force stays and nothing is kept.
var ErrNotCommitted = errors.New("policy: revision not committed")

// CommitFunc is offered every new set of files (tests included) after it
// passed the checks and was kept in the backing directory, and before it is
// activated; an error refuses the change, which is then undone. revision is
// ModulesRevision(modules). It runs with the engine's loads serialized, so
// it must not call Load, LoadDir, PutModule, ApplyModules or SetCommit.
type CommitFunc func(revision string, modules map[string][]byte) error

// SetCommit makes fn the engine's CommitFunc (nil: none). It must not be
// called from an OnActivate, OnReject or CommitFunc callback.
func (e *Engine) SetCommit(fn CommitFunc) {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	e.commit = fn
}

// ModulesRevision is the revision of a set of files, tests included, as
// Modules returns it. Two sets have the same revision exactly when they hold
// the same names with the same contents.
func ModulesRevision(modules map[string][]byte) string {
	srcs := make([]source, 0, len(modules))
	for name, text := range modules {
		srcs = append(srcs, source{name: name, text: text})
	}
	slices.SortFunc(srcs, func(a, b source) int { return strings.Compare(a.name, b.name) })
	return revisionID(srcs)
}

// Modules returns the set of files in force, tests included, keyed by their
// slash-separated paths, and its revision (ModulesRevision of the set). It
// differs from Revision, which leaves the tests out: a set travels with its
// tests so that every node gates it alike. The map is the caller's.
func (e *Engine) Modules() (revision string, modules map[string][]byte) {
	rev := e.cur.Load()
	if rev == nil {
		return "", nil
	}
	return rev.sum, modulesOf(rev.srcs)
}

// ApplyModules makes exactly modules (as Modules returns them) the policy:
// the set goes through the checks of Load, then, when the engine has a
// backing directory, is kept there (new and changed files written
// atomically, visible *.rego files no longer in the set removed, everything
// else left alone) so that a restart reads it, then is offered to the
// CommitFunc, then activated. If any step fails, what was written is undone
// and the revision in force stays: the error wraps ErrPolicyRejected when
// the set is at fault (ErrInvalidModuleName too for a bad path) and
// ErrNotCommitted when the CommitFunc refused it. The same set again
// changes nothing.
func (e *Engine) ApplyModules(modules map[string][]byte) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	srcs, err := sourcesOf(modules)
	if err != nil {
		return e.reject(rejected(err))
	}
	cur := e.cur.Load()
	next, err := e.check(cur, srcs)
	if err != nil {
		return e.reject(err)
	}
	if cur != nil && cur.sum == next.sum {
		return nil
	}
	dir := e.dir
	ch := &dirChange{dir: dir}
	if dir != "" {
		if err := ch.mirror(srcs); err != nil {
			return e.reject(ch.undone(fmt.Errorf("policy: keeping the policy in %s: %w", dir, err)))
		}
	}
	if err := e.commitSet(cur, next); err != nil {
		return e.reject(ch.undone(err))
	}
	e.accept(cur, next, dir)
	return nil
}

// commitSet offers next to the CommitFunc unless it is the set in force.
// loadMu is held.
func (e *Engine) commitSet(cur, next *revision) error {
	if e.commit == nil || (cur != nil && cur.sum == next.sum) {
		return nil
	}
	if err := e.commit(next.sum, modulesOf(next.srcs)); err != nil {
		return fmt.Errorf("%w: %w", ErrNotCommitted, err)
	}
	return nil
}

func modulesOf(srcs []source) map[string][]byte {
	out := make(map[string][]byte, len(srcs))
	for _, s := range srcs {
		out[s.name] = bytes.Clone(s.text)
	}
	return out
}

// sourcesOf checks a set given to ApplyModules, which may come from another
// node: paths that stay inside the directory and would be read back as
// they are, bounded sizes.
func sourcesOf(modules map[string][]byte) ([]source, error) {
	if len(modules) > MaxModules {
		return nil, fmt.Errorf("policy: %d modules, more than %d", len(modules), MaxModules)
	}
	srcs := make([]source, 0, len(modules))
	for name, text := range modules {
		if !validModulePath(name) {
			return nil, fmt.Errorf("%w %q: want a relative path of visible names ending in .rego", ErrInvalidModuleName, name)
		}
		if len(text) > MaxModuleSize {
			return nil, fmt.Errorf("policy: module %s is %d bytes, more than %d", name, len(text), MaxModuleSize)
		}
		srcs = append(srcs, source{name: name, text: bytes.Clone(text)})
	}
	slices.SortFunc(srcs, func(a, b source) int { return strings.Compare(a.name, b.name) })
	return srcs, nil
}

// dirSegment is a directory name on a module's path: visible, no separator.
var dirSegment = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$`)

// validModulePath reports whether name is a path readSources could have
// produced and that stays under the directory: slash-separated visible
// names (no ".", "..", empty or hidden segment, no backslash), the last one
// a module name as PutModule takes it.
func validModulePath(name string) bool {
	if len(name) > maxModulePath {
		return false
	}
	segs := strings.Split(name, "/")
	for _, s := range segs[:len(segs)-1] {
		if !dirSegment.MatchString(s) {
			return false
		}
	}
	return moduleName.MatchString(segs[len(segs)-1])
}

// dirChange changes files under a policy directory and can undo what it
// did, so a set that cannot be kept whole leaves the directory as it was.
type dirChange struct {
	dir  string
	undo []func() error // in the order done
}

// mirror makes the visible *.rego files under the directory exactly srcs:
// new and changed files first, removals last, so a reader in between (the
// directory watcher) sees at worst a superset of the new set.
func (c *dirChange) mirror(srcs []source) error {
	old, err := readSources(os.DirFS(c.dir), true)
	if err != nil {
		return err
	}
	keep := make(map[string]bool, len(srcs))
	for _, s := range srcs {
		keep[s.name] = true
		if err := c.write(s.name, s.text); err != nil {
			return err
		}
	}
	for _, s := range old {
		if !keep[s.name] {
			if err := c.remove(s.name, s.text); err != nil {
				return err
			}
		}
	}
	return nil
}

// write replaces (or creates) the file name with text, unless it already
// holds text.
func (c *dirChange) write(name string, text []byte) error {
	p, err := c.parent(name)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(p)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("policy: %s: %w", name, err)
	}
	if existed && bytes.Equal(old, text) {
		return nil
	}
	if err := atomicfile.WriteFile(p, text, 0o644); err != nil {
		return fmt.Errorf("policy: writing %s: %w", name, err)
	}
	if existed {
		c.undo = append(c.undo, func() error { return atomicfile.WriteFile(p, old, 0o644) })
	} else {
		c.undo = append(c.undo, func() error { return os.Remove(p) })
	}
	return nil
}

// remove deletes the file name, which holds old.
func (c *dirChange) remove(name string, old []byte) error {
	p := filepath.Join(c.dir, filepath.FromSlash(name))
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("policy: removing %s: %w", name, err)
	}
	c.undo = append(c.undo, func() error { return atomicfile.WriteFile(p, old, 0o644) })
	return nil
}

// parent returns the path of name under the directory, creating the
// directories on the way. Each must be a real directory: a symlink there
// would take the module out of the directory.
func (c *dirChange) parent(name string) (string, error) {
	segs := strings.Split(name, "/")
	p := c.dir
	for _, s := range segs[:len(segs)-1] {
		p = filepath.Join(p, s)
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return "", fmt.Errorf("policy: %s: %w", name, err)
			}
			dir := p
			c.undo = append(c.undo, func() error { return os.Remove(dir) })
		case err != nil:
			return "", fmt.Errorf("policy: %s: %w", name, err)
		case !st.IsDir():
			return "", fmt.Errorf("policy: %s: %s is not a directory (a symlink is not followed)", name, s)
		}
	}
	return filepath.Join(p, segs[len(segs)-1]), nil
}

// undone undoes every change, newest first, and returns err with any
// failure to undo joined to it.
func (c *dirChange) undone(err error) error {
	var errs []error
	for i := len(c.undo) - 1; i >= 0; i-- {
		if uerr := c.undo[i](); uerr != nil {
			errs = append(errs, uerr)
		}
	}
	c.undo = nil
	if len(errs) > 0 {
		return errors.Join(err, fmt.Errorf("policy: undoing the change in %s: %w", c.dir, errors.Join(errs...)))
	}
	return err
}
