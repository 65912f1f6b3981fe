//go:build !linux

package atomicfile

import "testing"

func limitFileSize(t *testing.T, _ uint64) {
	t.Skip("no file size limit on this platform")
}
