package main

import (
	"strings"
	"testing"
)

// usageFails runs args and fails the test unless they exit 2 (a usage
// error) with exactly one line "ztgate: ..." on stderr containing want and
// nothing on stdout.
func usageFails(t *testing.T, want string, args ...string) {
	t.Helper()
	r := ztgate(t, nil, "", args...)
	if r.code != 2 {
		t.Fatalf("ztgate %s: exit %d, want 2 (stdout %q, stderr %q)", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "ztgate: ") || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Fatalf("ztgate %s: stderr %q, want one line \"ztgate: ...\"", strings.Join(args, " "), r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("ztgate %s: stderr %q, want it to mention %q", strings.Join(args, " "), r.stderr, want)
	}
	if r.stdout != "" {
		t.Fatalf("ztgate %s: a usage error printed %q on stdout", strings.Join(args, " "), r.stdout)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"enrol"}, `unknown command "enrol" for "ztgate"`},
		{"unknown subcommand", []string{"device", "enrol", "x"}, `unknown command "enrol" for "ztgate device"`},
		{"suggestion", []string{"device", "enrol", "x"}, `(did you mean "enroll"?)`},
		{"unknown policy subcommand", []string{"policy", "remove", "x.rego"}, `unknown command "remove" for "ztgate policy"`},
		{"unknown session subcommand", []string{"session", "kik", "x"}, `unknown command "kik" for "ztgate session"`},
		{"unknown retained subcommand", []string{"retained", "clear"}, `unknown command "clear" for "ztgate retained"`},
		{"unknown flag", []string{"device", "list", "--nope"}, "unknown flag: --nope"},
		{"unknown flag on a parent", []string{"device", "--nope"}, "unknown flag: --nope"},
		{"unknown shorthand", []string{"version", "-x"}, "unknown shorthand flag: 'x' in -x"},
		{"bad flag value", []string{"device", "list", "--limit", "many"}, `invalid argument "many" for "--limit"`},
		{"missing argument", []string{"device", "enroll"}, "accepts 1 arg(s), received 0"},
		{"extra argument", []string{"version", "extra"}, `unknown command "extra" for "ztgate version"`},
		{"required flag", []string{"serve"}, `required flag(s) "config" not set`},
		{"unknown shell", []string{"completion", "tcsh"}, `invalid argument "tcsh" for "ztgate completion"`},
		{"no shell", []string{"completion"}, "accepts 1 arg(s), received 0"},
		{"help of an unknown command", []string{"help", "nosuch"}, `unknown help topic "nosuch"`},
		{"help of an unknown subcommand", []string{"help", "device", "enrol"}, `unknown help topic "device enrol"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			usageFails(t, tc.want, tc.args...)
		})
	}
}

// TestParentsPrintHelp: a parent command given no subcommand prints its
// help and exits 0 (the positive control of the exit 2 above).
func TestParentsPrintHelp(t *testing.T) {
	for _, args := range [][]string{nil, {"device"}, {"policy"}, {"session"}, {"retained"}, {"device", "--help"}, {"help"}, {"help", "device"}} {
		r := ztgate(t, nil, "", args...)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "Available Commands:") {
			t.Errorf("ztgate %s: %+v", strings.Join(args, " "), r)
		}
	}
}
