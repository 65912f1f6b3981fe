package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// dirNames lists dir, so a test can see that no temporary file was left.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name     string
		file     string // "": f.pem
		old      []byte // nil: no file before
		oldPerm  os.FileMode
		data     []byte
		perm     os.FileMode
		wantPerm os.FileMode
	}{
		{name: "create secret", data: []byte("key"), perm: 0o600, wantPerm: 0o600},
		{name: "create public", data: []byte("cert"), perm: 0o644, wantPerm: 0o644},
		{name: "create empty", data: []byte{}, perm: 0o600, wantPerm: 0o600},
		{name: "replace", old: []byte("old content, longer"), oldPerm: 0o644, data: []byte("new"), perm: 0o644, wantPerm: 0o644},
		// The new mode wins over the old file's: a key rewritten with 0600
		// must not inherit a wider mode from the file it replaces.
		{name: "replace narrows mode", old: []byte("old"), oldPerm: 0o644, data: []byte("new"), perm: 0o600, wantPerm: 0o600},
		{name: "replace widens mode", old: []byte("old"), oldPerm: 0o600, data: []byte("new"), perm: 0o644, wantPerm: 0o644},
		// The longest name most file systems take (policy.PutModule allows
		// it): the temporary name must not grow past it.
		{name: "longest name", file: strings.Repeat("m", 250) + ".rego", data: []byte("x"), perm: 0o644, wantPerm: 0o644},
		{name: "longest name replaced", file: strings.Repeat("m", 250) + ".rego", old: []byte("old"), oldPerm: 0o644, data: []byte("x"), perm: 0o644, wantPerm: 0o644},
		{name: "longest multibyte name", file: strings.Repeat("€", 83) + ".rego", data: []byte("x"), perm: 0o644, wantPerm: 0o644},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := tc.file
			if file == "" {
				file = "f.pem"
			}
			path := filepath.Join(dir, file)
			if tc.old != nil {
				if err := os.WriteFile(path, tc.old, tc.oldPerm); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(path, tc.data, tc.perm); err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Errorf("content = %q, want %q", got, tc.data)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.wantPerm {
				t.Errorf("mode = %v, want %v", fi.Mode().Perm(), tc.wantPerm)
			}
			if names := dirNames(t, dir); len(names) != 1 || names[0] != file {
				t.Errorf("directory holds %q, want only %s", names, file)
			}
		})
	}
}

func TestWriteFileFailureKeepsOld(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the target path
		check func(t *testing.T, path string)       // the old state is intact
	}{
		{
			// The temporary file is written in full before the rename
			// fails: the cleanup path after a complete write.
			name: "target is a directory",
			setup: func(t *testing.T, dir string) string {
				path := filepath.Join(dir, "f.pem")
				if err := os.MkdirAll(filepath.Join(path, "inside"), 0o700); err != nil {
					t.Fatal(err)
				}
				return path
			},
			check: func(t *testing.T, path string) {
				if _, err := os.Stat(filepath.Join(path, "inside")); err != nil {
					t.Errorf("the directory in the way changed: %v", err)
				}
			},
		},
		{
			name: "parent missing",
			setup: func(t *testing.T, dir string) string {
				return filepath.Join(dir, "missing", "f.pem")
			},
			check: func(t *testing.T, path string) {
				if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("parent: %v, want it still missing", err)
				}
			},
		},
		{
			// A full disk (here: the file size limit) fails the write of
			// the new content; the old file must stay as it was.
			name: "write fails",
			setup: func(t *testing.T, dir string) string {
				path := filepath.Join(dir, "f.pem")
				if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
					t.Fatal(err)
				}
				limitFileSize(t, 16)
				return path
			},
			check: func(t *testing.T, path string) {
				got, err := os.ReadFile(path)
				if err != nil || string(got) != "old" {
					t.Errorf("old file = %q, %v; want %q", got, err, "old")
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)
			before := dirNames(t, dir)
			err := WriteFile(path, bytes.Repeat([]byte("n"), 4096), 0o600)
			if err == nil {
				t.Fatal("WriteFile succeeded, want an error")
			}
			if !strings.HasPrefix(err.Error(), "atomicfile: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			tc.check(t, path)
			if after := dirNames(t, dir); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("directory went from %q to %q: a temporary file was left", before, after)
			}
		})
	}
}

func TestTempHint(t *testing.T) {
	tests := []struct {
		name, in string
		wantLen  int
	}{
		{name: "short kept", in: "svid.key", wantLen: 8},
		{name: "at the bound kept", in: strings.Repeat("a", maxHint), wantLen: maxHint},
		{name: "long cut", in: strings.Repeat("a", 255), wantLen: maxHint},
		// 200 = 3*66 + 2: the cut falls inside a three-byte character.
		{name: "cut on a character boundary", in: strings.Repeat("€", 83), wantLen: 3 * 66},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tempHint(tc.in)
			if len(got) != tc.wantLen || !strings.HasPrefix(tc.in, got) || !utf8.ValidString(got) {
				t.Errorf("tempHint = %q (%d bytes), want a valid %d-byte prefix", got, len(got), tc.wantLen)
			}
		})
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		dir     string
		wantErr bool
	}{
		{name: "existing directory", dir: dir},
		{name: "missing directory", dir: filepath.Join(dir, "missing"), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := SyncDir(tc.dir)
			if (err != nil) != tc.wantErr {
				t.Fatalf("SyncDir = %v, want error %v", err, tc.wantErr)
			}
			if err != nil && (!strings.HasPrefix(err.Error(), "atomicfile: ") || !errors.Is(err, fs.ErrNotExist)) {
				t.Errorf("error %q: want the package prefix, wrapping fs.ErrNotExist", err)
			}
		})
	}
}
