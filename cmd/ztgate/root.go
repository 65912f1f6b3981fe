package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// cli carries what every command needs from its surroundings, so that tests
// can run the whole command tree in-process.
type cli struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// self is how the user runs this binary, for the hints `dev` prints.
	self string
}

// execute runs the command line args and returns the process exit code.
// Any error is printed as a single line "ztgate: <message>" on stderr.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv, self: selfCommand()}
	root := c.newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "ztgate: %s\n", oneLine(err.Error()))
		return exitCode(err)
	}
	return 0
}

func (c *cli) newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ztgate",
		Short: "Zero Trust MQTT gateway: SPIFFE identities over mTLS, every action decided by Rego policy",
		Long: `ztgate is an MQTT gateway where every device proves who it is with a SPIFFE
X.509-SVID over mutual TLS, and every CONNECT, SUBSCRIBE, PUBLISH, delivery and
Last Will is decided by Open Policy Agent (Rego) policy. Default deny.

Run a gateway with "ztgate dev" (local, everything created for you) or
"ztgate serve --config FILE"; manage it with "ztgate device ...",
"ztgate policy ..." and "ztgate audit". On a device, "ztgate enroll" turns a
bootstrap token into an SVID and "ztgate renew" keeps it fresh.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	policyCmd := c.newPolicyCmd()
	policyCmd.AddCommand(c.newPolicyRmCmd())
	root.AddCommand(c.newDevCmd(), c.newServeCmd(), c.newDeviceCmd(), c.newBootstrapEnrollCmd(),
		c.newAuditCmd(), policyCmd, c.newBenchCmd(), c.newRenewCmd(), c.newCACmd(),
		c.newSessionCmd(), c.newRetainedCmd(), c.newVersionCmd(), c.newCompletionCmd(root), c.newHealthcheckCmd(), c.newDashboardCmd(), c.newBridgeCmd())
	// Last, so that it sees every command.
	markUsageErrors(root)
	return root
}

// oneLine folds a possibly multi-line message (cobra's suggestions, wrapped
// errors from other tools) into one line.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

// selfCommand is how to run this binary again: `go run ./cmd/ztgate` when it
// was started by `go run` (a binary in go's build cache), else its name.
func selfCommand() string {
	arg0 := os.Args[0]
	if strings.Contains(arg0, "go-build") {
		return "go run ./cmd/ztgate"
	}
	return arg0
}

// shellQuote quotes s for a POSIX shell when it needs it, so printed hints
// can be pasted as they are.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
