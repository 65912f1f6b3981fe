package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
)

var (
	// ErrModuleNotFound is wrapped by RemoveModule's error for a module
	// the policy in force does not hold.
	ErrModuleNotFound = errors.New("policy: no such module")
	// ErrPolicyEmpty is wrapped by RemoveModule's error when the module is
	// the last one that is not a test: a policy of tests alone decides
	// nothing, and an engine without one would deny everything, the admin
	// API included, with no way back but the policy directory.
	ErrPolicyEmpty = errors.New("policy: the policy would be empty")
)

// RemoveModule removes the module name (a file name as PutModule takes it)
// from the policy in force. The set without it goes through the checks of
// Load, so removing a module that others or their tests need is refused
// (an error wrapping ErrPolicyRejected) and the revision in force stays.
// If it passes, the file is removed from the backing directory, the set is
// offered to the CommitFunc (in a cluster, replicated as PutModule's is;
// refused: ErrNotCommitted, and the file is put back), then activated.
// A name not in the policy yields ErrModuleNotFound, the last module that
// is not a test ErrPolicyEmpty, a bad name ErrInvalidModuleName, no
// backing directory ErrNoBackingDir.
func (e *Engine) RemoveModule(name string) error {
	if !moduleName.MatchString(name) {
		return fmt.Errorf("%w %q: want a file name like name.rego of letters, digits, '_', '.' and '-' (no directory, not hidden, at most 255 bytes)", ErrInvalidModuleName, name)
	}
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	dir := e.dir
	if dir == "" {
		return ErrNoBackingDir
	}
	cur := e.cur.Load()
	if cur == nil {
		return e.reject(errNoPolicy)
	}
	i := slices.IndexFunc(cur.srcs, func(s source) bool { return s.name == name })
	if i < 0 {
		return fmt.Errorf("%w: %s is not among the %d modules in force", ErrModuleNotFound, name, len(cur.srcs))
	}
	srcs := slices.Delete(slices.Clone(cur.srcs), i, i+1)
	if len(policySources(srcs)) == 0 {
		return fmt.Errorf("%w: %s is its last module that is not a test", ErrPolicyEmpty, name)
	}

	next, err := e.check(cur, srcs)
	if err != nil {
		return e.reject(err)
	}
	// Removed before it is committed, as PutModule writes before: a
	// cluster never takes a set this node could not keep; put back if it
	// does not take it.
	ch := &dirChange{dir: dir}
	if err := ch.remove(name, cur.srcs[i].text); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("policy: removing module %s: %w", name, err)
	}
	if err := e.commitSet(cur, next); err != nil {
		return e.reject(ch.undone(err))
	}
	e.accept(cur, next, dir)
	return nil
}
