package atomicfile

import (
	"syscall"
	"testing"
)

// limitFileSize makes every write past n bytes fail with EFBIG (the Go
// runtime ignores SIGXFSZ), a stand-in for a full disk that also fails for
// root, until the test ends.
func limitFileSize(t *testing.T, n uint64) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skipf("no file size limit here: %v", err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: old.Max}); err != nil {
		t.Skipf("cannot limit the file size: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
			t.Errorf("restoring the file size limit: %v", err)
		}
	})
}
