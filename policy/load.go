package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// source is one Rego file as read from the policy file system.
type source struct {
	name string // slash-separated path inside the file system
	text []byte
}

func isTestFile(name string) bool { return strings.HasSuffix(name, "_test.rego") }

// isHidden reports whether a file or directory name is hidden (starts with
// a dot). Hidden entries are never policy: editors keep their scratch copies
// there, PutModule stages its writes there, and a Kubernetes ConfigMap
// volume keeps a second, timestamped copy of every file in a hidden
// directory, which would otherwise be loaded twice.
func isHidden(name string) bool { return strings.HasPrefix(name, ".") }

// readSources reads every *.rego file under fsys in name order, skipping
// hidden files and directories; test files (*_test.rego) only when withTests
// is set.
func readSources(fsys fs.FS, withTests bool) ([]source, error) {
	if fsys == nil {
		return nil, errors.New("policy: no policy file system")
	}
	var out []source
	err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name != "." && isHidden(d.Name()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || path.Ext(name) != ".rego" || (!withTests && isTestFile(name)) {
			return nil
		}
		text, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		out = append(out, source{name: name, text: text})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: reading policy files: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// parseSources parses Rego v1 modules, all errors reported together.
func parseSources(srcs []source) (map[string]*ast.Module, error) {
	mods := make(map[string]*ast.Module, len(srcs))
	var errs []error
	for _, s := range srcs {
		m, err := ast.ParseModuleWithOpts(s.name, string(s.text), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if m == nil { // a file with nothing but comments
			errs = append(errs, fmt.Errorf("%s: empty module", s.name))
			continue
		}
		mods[s.name] = m
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("policy: parse: %w", errors.Join(errs...))
	}
	return mods, nil
}

// revisionID is the hex sha256 over the sorted module names and contents,
// each length-prefixed so that no two different sets hash alike.
func revisionID(srcs []source) string {
	h := sha256.New()
	var n [8]byte
	for _, s := range srcs {
		binary.BigEndian.PutUint64(n[:], uint64(len(s.name)))
		h.Write(n[:])
		h.Write([]byte(s.name))
		binary.BigEndian.PutUint64(n[:], uint64(len(s.text)))
		h.Write(n[:])
		h.Write(s.text)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// policySources returns the policy modules of srcs, without the tests.
func policySources(srcs []source) []source {
	out := make([]source, 0, len(srcs))
	for _, s := range srcs {
		if !isTestFile(s.name) {
			out = append(out, s)
		}
	}
	return out
}

// LoadDir returns the policy directory dir as a file system for NewEngine,
// Load and RunTests. (Engine.LoadDir loads a directory into an engine and
// makes it the engine's backing directory.) It fails when dir is not a directory or holds no .rego
// file, so a mistyped --policy-dir is an error, not an empty (deny-all) policy.
func LoadDir(dir string) (fs.FS, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: policy directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("policy: policy directory %s: not a directory", dir)
	}
	fsys := os.DirFS(dir)
	srcs, err := readSources(fsys, true)
	if err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("policy: policy directory %s: no .rego files", dir)
	}
	return fsys, nil
}
