package test

import "syscall"

// childProcAttr makes the kernel kill a SPIRE process the test started if
// the test binary dies first (a panic, a -timeout): t.Cleanup does not run
// then, and a SPIRE server left behind would hold its port and socket.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
