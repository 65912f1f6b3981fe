//go:build !linux

package test

import "syscall"

// childProcAttr: only Linux can tie a child's life to its parent's; here
// the test's cleanup alone stops the SPIRE processes.
func childProcAttr() *syscall.SysProcAttr { return nil }
