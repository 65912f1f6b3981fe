package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// Status describes the policy in force and the last refused change.
type Status struct {
	// Revision is the content hash of the policy modules in force (tests
	// are not part of it), as in every Decision.
	Revision string `json:"revision"`
	// ActivatedAt is when Revision took effect.
	ActivatedAt time.Time `json:"activated_at"`
	// Modules are the files of the accepted policy, tests included, as
	// slash-separated paths in name order.
	Modules []string `json:"modules"`
	// Dir is the backing directory the accepted policy was read from and
	// PutModule writes to; "" if none.
	Dir string `json:"dir,omitempty"`
	// LastError is why the last change was refused; it is cleared when a
	// later change is accepted, so it is set exactly when the latest
	// policy offered is not the one in force.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

var (
	// ErrPolicyRejected is wrapped by the errors of a policy that does not
	// parse, compile or pass its tests. The revision in force stays.
	ErrPolicyRejected = errors.New("policy: revision rejected")
	// ErrNoBackingDir is returned by PutModule when the engine's policy was
	// not loaded from a directory (LoadDir or Watch), so there is nowhere to
	// keep the module.
	ErrNoBackingDir = errors.New("policy: no backing policy directory")
	// ErrInvalidModuleName is wrapped by PutModule's error for a name that
	// is not a plain *.rego file name.
	ErrInvalidModuleName = errors.New("policy: invalid module name")
)

// rejectedError marks a refused revision while keeping its own message.
type rejectedError struct{ err error }

func (r *rejectedError) Error() string        { return r.err.Error() }
func (r *rejectedError) Unwrap() error        { return r.err }
func (r *rejectedError) Is(target error) bool { return target == ErrPolicyRejected }

func rejected(err error) error { return &rejectedError{err: err} }

// Bounds of the checks a revision goes through before activation.
const (
	// MaxModuleSize bounds a module given to PutModule.
	MaxModuleSize = 1 << 20
	// testRunTimeout bounds a whole test run during a load (TestTimeout
	// bounds each test).
	testRunTimeout = 30 * time.Second
	// maxReport bounds the test report kept in an error.
	maxReport = 16 << 10
)

// Status returns the state of the policy in force. It is safe for
// concurrent use.
func (e *Engine) Status() Status {
	st := *e.status.Load()
	st.Modules = slices.Clone(st.Modules)
	return st
}

// OnActivate registers fn to be called after each activation of a new
// revision, with the new Status. Callbacks run in registration order on the
// goroutine that loaded the revision, before Load, LoadDir or PutModule
// returns, and one activation's callbacks finish before the next activation;
// they must not call Load, LoadDir or PutModule.
func (e *Engine) OnActivate(fn func(Status)) {
	if fn == nil {
		return
	}
	e.cbMu.Lock()
	defer e.cbMu.Unlock()
	e.onActivate = append(e.onActivate, fn)
}

// OnReject registers fn to be called after each refused change (a policy
// that does not compile or pass its tests, or a directory that cannot be
// read), with the error the load returns. The same rules as for OnActivate
// apply.
func (e *Engine) OnReject(fn func(error)) {
	if fn == nil {
		return
	}
	e.cbMu.Lock()
	defer e.cbMu.Unlock()
	e.onReject = append(e.onReject, fn)
}

// Load reads the policy in fsys, compiles it and runs its Rego tests (the
// *_test.rego files, with the MQTT builtins, as `ztgate policy test` runs
// them). Only if both succeed is it activated, atomically: every later
// decision uses it. Otherwise the revision in force stays, Status().LastError
// is set and the error is returned (wrapping ErrPolicyRejected when the
// policy itself is at fault). A policy with no test files is compiled only.
// Loading the files in force again changes nothing. After Load the engine
// has no backing directory.
func (e *Engine) Load(fsys fs.FS) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	srcs, err := readSources(fsys, true)
	if err != nil {
		return e.reject(err)
	}
	return e.apply(srcs, "")
}

// LoadDir is Load(os.DirFS(dir)) and, when the policy is accepted, makes dir
// the backing directory that PutModule writes to and Status reports.
func (e *Engine) LoadDir(dir string) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return e.reject(fmt.Errorf("policy: policy directory: %w", err))
	}
	st, err := os.Stat(abs)
	if err != nil {
		return e.reject(fmt.Errorf("policy: policy directory: %w", err))
	}
	if !st.IsDir() {
		return e.reject(fmt.Errorf("policy: policy directory %s: not a directory", abs))
	}
	srcs, err := readSources(os.DirFS(abs), true)
	if err != nil {
		return e.reject(err)
	}
	return e.apply(srcs, abs)
}

// moduleName is what PutModule accepts: a plain, visible *.rego file name
// of at most 255 bytes (the longest file name most file systems take).
var moduleName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,249}\.rego$`)

// PutModule adds the module name (a file name such as "site.rego" or
// "site_test.rego", no directory) to the policy in force, or replaces the
// module of that name, with src. The new set goes through the checks of
// Load; if it passes, the module is written atomically into the backing
// directory and then activated, so an accepted module is never lost to a
// restart and a refused one leaves the directory untouched. A refused module
// yields an error wrapping ErrPolicyRejected; a bad name one wrapping
// ErrInvalidModuleName; no backing directory ErrNoBackingDir; a module the
// CommitFunc (SetCommit) refuses, one wrapping ErrNotCommitted, and the
// file is put back as it was.
func (e *Engine) PutModule(name string, src []byte) error {
	if !moduleName.MatchString(name) {
		return fmt.Errorf("%w %q: want a file name like name.rego of letters, digits, '_', '.' and '-' (no directory, not hidden, at most 255 bytes)", ErrInvalidModuleName, name)
	}
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	dir := e.dir
	if dir == "" {
		return ErrNoBackingDir
	}
	if len(src) > MaxModuleSize {
		return e.reject(rejected(fmt.Errorf("policy: module %s is %d bytes, more than %d", name, len(src), MaxModuleSize)))
	}
	cur := e.cur.Load()
	if cur == nil {
		return e.reject(errNoPolicy)
	}
	srcs := make([]source, 0, len(cur.srcs)+1)
	for _, s := range cur.srcs {
		if s.name != name {
			srcs = append(srcs, s)
		}
	}
	srcs = append(srcs, source{name: name, text: bytes.Clone(src)})
	slices.SortFunc(srcs, func(a, b source) int { return strings.Compare(a.name, b.name) })

	next, err := e.check(cur, srcs)
	if err != nil {
		return e.reject(err)
	}
	// Atomic so that the watcher, or a restart, reads the old module or the
	// new one, never a part. Kept before it is committed, so a cluster never
	// takes a module this node could not keep; undone if it is not.
	ch := &dirChange{dir: dir}
	if err := ch.write(name, src); err != nil {
		return fmt.Errorf("policy: keeping module %s: %w", name, err)
	}
	if err := e.commitSet(cur, next); err != nil {
		return e.reject(ch.undone(err))
	}
	e.accept(cur, next, dir)
	return nil
}

// apply checks srcs and activates them, or refuses them. loadMu is held.
func (e *Engine) apply(srcs []source, dir string) error {
	cur := e.cur.Load()
	next, err := e.check(cur, srcs)
	if err != nil {
		return e.reject(err)
	}
	if err := e.commitSet(cur, next); err != nil {
		return e.reject(err)
	}
	e.accept(cur, next, dir)
	return nil
}

// check returns the revision for srcs: cur itself when nothing changed, cur's
// compiled queries when only tests changed, a new compilation otherwise;
// tests are run unless nothing changed. loadMu is held.
func (e *Engine) check(cur *revision, srcs []source) (*revision, error) {
	sum := revisionID(srcs)
	if cur != nil && cur.sum == sum {
		return cur, nil
	}
	var next *revision
	if id := revisionID(policySources(srcs)); cur != nil && cur.id == id {
		next = &revision{id: id, sum: sum, srcs: srcs, allow: cur.allow, reasons: cur.reasons, plan: cur.plan}
	} else {
		var err error
		if next, err = e.compile(context.Background(), srcs); err != nil {
			return nil, rejected(err)
		}
	}
	if err := gate(srcs, sum, e.builtin); err != nil {
		return nil, rejected(err)
	}
	return next, nil
}

// accept makes next the revision in force. loadMu is held.
func (e *Engine) accept(cur, next *revision, dir string) {
	e.cur.Store(next)
	e.dir = dir
	prev := e.status.Load()
	st := &Status{
		Revision:    next.id,
		ActivatedAt: prev.ActivatedAt,
		Modules:     sourceNames(next.srcs),
		Dir:         dir,
	}
	activated := cur == nil || cur.id != next.id
	if activated {
		st.ActivatedAt = time.Now().UTC()
	}
	e.status.Store(st)
	if !activated {
		return
	}
	e.log.Info("policy: revision activated", "revision", short(next.id),
		"previous", short(revID(cur)), "modules", len(st.Modules), "dir", dir)
	e.cbMu.Lock()
	fns := slices.Clone(e.onActivate)
	e.cbMu.Unlock()
	for _, fn := range fns {
		fn(*st)
	}
}

// reject records a refused change and returns err. loadMu is held.
func (e *Engine) reject(err error) error {
	prev := e.status.Load()
	st := *prev
	st.LastError = err.Error()
	st.LastErrorAt = time.Now().UTC()
	e.status.Store(&st)
	if prev.Revision == "" {
		e.log.Warn("policy: policy refused", "err", err)
	} else {
		e.log.Warn("policy: change refused; the revision in force stays",
			"revision", short(prev.Revision), "err", err)
	}
	e.cbMu.Lock()
	fns := slices.Clone(e.onReject)
	e.cbMu.Unlock()
	for _, fn := range fns {
		fn(err)
	}
	return err
}

// gate runs the tests among srcs with the builtins of b. It passes when
// there are none.
func gate(srcs []source, sum string, b *builtinSet) error {
	if !slices.ContainsFunc(srcs, func(s source) bool { return isTestFile(s.name) }) {
		return nil
	}
	// A pass holds for the builtins it ran with: tests that passed with
	// http.send allowed must still be refused by an engine that does not
	// allow it.
	sum += "\x00" + b.key
	if passedBefore(sum) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	// A gateway checks a new revision while it enforces the one in force:
	// the tests get half the CPUs, so decisions keep the rest.
	parallel := max(1, runtime.NumCPU()/2)
	// Without tracing first: a passing run is several times faster so.
	results, err := runTests(ctx, srcs, b, false, parallel)
	if err != nil {
		return err
	}
	passed, failed := countResults(results)
	if failed == 0 {
		rememberPassed(sum)
		return nil
	}
	// Run again with tracing for a report that shows each failing
	// expression, as `ztgate policy test` does.
	var rep bytes.Buffer
	if traced, err := runTests(ctx, srcs, b, true, parallel); err == nil {
		_ = report(&rep, traced, false)
	} else {
		_ = report(&rep, results, false)
	}
	text := rep.Bytes()
	if len(text) > maxReport {
		text = append(text[:maxReport:maxReport], "\n... (report truncated)"...)
	}
	return fmt.Errorf("policy: %d of %d tests failed:\n%s", failed, passed+failed, bytes.TrimSpace(text))
}

// Source sets whose tests passed, by sum, so that loading the same files
// again (another engine over the embedded default policy, say) does not run
// the same tests again. Tests see neither Options.Data nor the clock of the
// load, so a pass depends on the files alone.
var (
	passedMu  sync.Mutex
	passedSet = map[string]struct{}{}
)

const maxPassed = 64

func passedBefore(sum string) bool {
	passedMu.Lock()
	defer passedMu.Unlock()
	_, ok := passedSet[sum]
	return ok
}

func rememberPassed(sum string) {
	passedMu.Lock()
	defer passedMu.Unlock()
	if len(passedSet) >= maxPassed {
		clear(passedSet)
	}
	passedSet[sum] = struct{}{}
}

func sourceNames(srcs []source) []string {
	names := make([]string, len(srcs))
	for i, s := range srcs {
		names[i] = s.name
	}
	return names
}
