package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

// maxInput bounds the input document of `policy eval`.
const maxInput = 4 << 20

func (c *cli) newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Test and evaluate Rego policies, and manage the policy of a running gateway",
		Long: `Test and evaluate Rego policies offline ("policy test", "policy eval"), and
see or change the policy a running gateway enforces ("policy status",
"policy push") through the admin API.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(c.newPolicyTestCmd(), c.newPolicyEvalCmd(), c.newPolicyStatusCmd(), c.newPolicyPushCmd(),
		c.newPolicyCapabilitiesCmd())
	return cmd
}

func (c *cli) newPolicyStatusCmd() *cobra.Command {
	f := &apiFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the policy revision a running gateway enforces and the last refused one",
		Long: `Show the policy revision a running gateway enforces: its content hash, when it
was activated, its modules and directory, and the error of the last revision
that was refused (it did not compile or its tests failed), if any.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var st policyStatus
			if err := client.do(cmd.Context(), http.MethodGet, "/v1/policy", nil, &st); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, st)
			}
			printPolicyStatus(c.stdout, st)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}

func printPolicyStatus(w io.Writer, st policyStatus) {
	fmt.Fprintf(w, "revision:     %s\n", st.Revision)
	if !st.ActivatedAt.IsZero() {
		fmt.Fprintf(w, "activated at: %s\n", st.ActivatedAt.UTC().Format(time.RFC3339))
	}
	mods := "-"
	if len(st.Modules) > 0 {
		mods = strings.Join(st.Modules, ", ")
	}
	fmt.Fprintf(w, "modules:      %s\n", mods)
	if st.Dir != "" {
		fmt.Fprintf(w, "directory:    %s\n", st.Dir)
	}
	if st.LastError != "" {
		at := ""
		if !st.LastErrorAt.IsZero() {
			at = " (at " + st.LastErrorAt.UTC().Format(time.RFC3339) + ")"
		}
		msg, long := summarize(st.LastError)
		if long {
			msg += " (the full report: policy status --json)"
		}
		fmt.Fprintf(w, "last refused: %s%s\n", msg, at)
	}
}

// maxSummary is how long a refusal may be to be shown whole on one line.
const maxSummary = 300

// summarize turns a policy refusal (a compile error, or a test report of
// many lines) into one line: the whole message when it is short, else its
// first line, with long reporting that the rest was left out.
func summarize(msg string) (line string, long bool) {
	if one := oneLine(msg); len(one) <= maxSummary {
		return one, false
	}
	first, _, _ := strings.Cut(strings.TrimSpace(msg), "\n")
	first = strings.TrimSuffix(strings.TrimSpace(first), ":")
	if len(first) > maxSummary {
		first = first[:maxSummary] + "..."
	}
	return first, true
}

// maxModule bounds a module pushed with `policy push`.
const maxModule = 1 << 20

func (c *cli) newPolicyPushCmd() *cobra.Command {
	f := &apiFlags{}
	var name string
	cmd := &cobra.Command{
		Use:   "push FILE",
		Short: "Upload a Rego module to a running gateway; it is enforced only if it compiles and the tests pass",
		Long: `Upload a Rego module (or its *_test.rego tests) to a running gateway as NAME
(default: the file's name), adding it or replacing the module of that name.
The gateway compiles the new set of modules and runs its tests; only if both
succeed is it activated and written to the gateway's policy directory.
Otherwise the revision in force stays, and the error is printed.`,
		Example: `  ztgate policy push ./site_isolation.rego
  ztgate policy push ./new.rego --name authz.rego`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			if name == "" {
				name = filepath.Base(file)
			}
			if !moduleNameRE.MatchString(name) {
				return fmt.Errorf("module name %q: want letters, digits, '.', '_' or '-' ending in .rego", name)
			}
			raw, err := readInput(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			if len(raw) > maxModule {
				return fmt.Errorf("%s: larger than %d bytes", file, maxModule)
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var st policyStatus
			path := "/v1/policy/modules/" + url.PathEscape(name)
			if err := client.send(cmd.Context(), http.MethodPut, path, "text/plain; charset=utf-8", raw, &st); err != nil {
				var ae *apiError
				if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity {
					msg, long := summarize(ae.Message)
					if long {
						// The whole report (the failing tests and their
						// values) is what the author needs to fix it.
						fmt.Fprintln(c.stdout, strings.TrimSpace(ae.Message))
						msg += " (the report is above)"
					}
					return fmt.Errorf("policy push %s: refused, the policy in force is unchanged: %s", name, msg)
				}
				return err
			}
			fmt.Fprintf(c.stdout, "pushed %s\n", name)
			printPolicyStatus(c.stdout, st)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&name, "name", "", "module name in the policy directory (default: the file's name)")
	return cmd
}

var moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+\.rego$`)

// allowBuiltinFlag registers --allow-builtin, the command-line form of
// policy_allow_builtins, so that a policy is tested with what the gateway
// lets it call.
func allowBuiltinFlag(cmd *cobra.Command, names *[]string) {
	cmd.Flags().StringSliceVar(names, "allow-builtin", nil,
		"restricted OPA builtin the policy may call, as policy_allow_builtins allows it in the gateway (repeatable; one of "+
			strings.Join(policy.RestrictedBuiltins(), ", ")+")")
}

// reportFormat is the value of `policy test --format`. Checked when the
// flag is parsed, so that a bad value is a usage error like an unknown flag
// and no test runs.
type reportFormat string

func (f *reportFormat) String() string { return string(*f) }
func (f *reportFormat) Type() string   { return "format" }
func (f *reportFormat) Set(v string) error {
	if v != policy.FormatPretty && v != policy.FormatJSON {
		return fmt.Errorf("want %s or %s", policy.FormatPretty, policy.FormatJSON)
	}
	*f = reportFormat(v)
	return nil
}

func (c *cli) newPolicyTestCmd() *cobra.Command {
	var verbose, coverage bool
	var allow []string
	format := reportFormat(policy.FormatPretty)
	cmd := &cobra.Command{
		Use:   "test DIR",
		Short: "Run the Rego tests (*_test.rego) in DIR with ztgate's builtins",
		Long: `Run the Rego tests (*_test.rego) in DIR with ztgate's builtins
(mqtt.topic_matches, mqtt.filter_within). Fails when a test fails, or when no
test ran at all. As in the gateway, a policy or test calling a restricted
builtin (http.send, net.lookup_ip_addr, time.now_ns, ...) does not compile
unless --allow-builtin names it.

--format json prints a JSON array with a result per test, shaped as
"opa test --format json" prints it ("package", "name", "location",
"duration" in nanoseconds, "fail", "error", "skip"), plus "result" (pass,
fail, error or skip) and, for a failed test, "failure": the location and text
of the expression it failed at.

--coverage reports, per file, the lines the tests evaluated and those they
did not, as "opa test --coverage" does (test files included): a table after
the test report, or with --format json {"tests": [...], "coverage": {...}}
where "coverage" is what "opa test --coverage --format json" prints.`,
		Example: `  ztgate policy test policy/defaultpolicy
  ztgate policy test --coverage ./policies
  ztgate policy test --format json ./policies | jq '.[] | select(.result != "pass")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fsys, err := policy.LoadDir(args[0])
			if err != nil {
				return err
			}
			passed, failed, err := policy.RunTestsWith(cmd.Context(), fsys, c.stdout, policy.TestOptions{
				Verbose: verbose, AllowBuiltins: allow, Format: string(format), Coverage: coverage,
			})
			if err != nil {
				return err
			}
			switch {
			case failed > 0:
				return fmt.Errorf("policy test: %d of %d tests failed", failed, passed+failed)
			case passed == 0:
				return fmt.Errorf("policy test: no tests found in %s", args[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print every test, not only failures")
	cmd.Flags().Var(&format, "format", "report format: pretty or json")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(
		[]string{policy.FormatPretty, policy.FormatJSON}, cobra.ShellCompDirectiveNoFileComp))
	cmd.Flags().BoolVar(&coverage, "coverage", false, "report the lines the tests cover, per file")
	allowBuiltinFlag(cmd, &allow)
	return cmd
}

func (c *cli) newPolicyCapabilitiesCmd() *cobra.Command {
	var allow []string
	cmd := &cobra.Command{
		Use:   "capabilities",
		Short: "Print the OPA capabilities file of ztgate policies, for opa check and Regal",
		Long: `Print, as JSON, the OPA capabilities a ztgate policy is compiled with: OPA's
builtins for the OPA version ztgate is built with, the mqtt.* builtins with
their types, and without the restricted builtins (http.send, time.now_ns, ...)
that the gateway refuses unless policy_allow_builtins (here --allow-builtin)
names them. Give it to "opa check --capabilities FILE" or Regal
(capabilities.from.file in .regal/config.yaml) so that they accept the
mqtt.* builtins and refuse what the gateway refuses. The repository keeps the
default output as policy/capabilities.json.`,
		Example: `  ztgate policy capabilities > capabilities.json
  opa check --strict --capabilities capabilities.json ./policies`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			raw, err := policy.CapabilitiesJSON(allow)
			if err != nil {
				return err
			}
			_, err = c.stdout.Write(raw)
			return err
		},
	}
	allowBuiltinFlag(cmd, &allow)
	return cmd
}

func (c *cli) newPolicyEvalCmd() *cobra.Command {
	var input, dir, td string
	var allow []string
	cmd := &cobra.Command{
		Use:   "eval --input FILE",
		Short: "Decide one policy input document and print the decision as JSON",
		Long: `Decide one policy input document (the JSON of the policy contract; "-" reads
stdin) with the policy in --policy-dir, or the embedded default policy, and print
{"allow": ..., "reasons": [...], "revision": "..."}. The policy sees the same
data as in the gateway (data.ztgate.config.trust_domain from --trust-domain).
A deny is a decision, not an error: the exit code is 0 either way.`,
		Example: `  ztgate policy eval --input publish.json
  ztgate policy eval --input - --policy-dir ./policies < publish.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := readInput(cmd.InOrStdin(), input)
			if err != nil {
				return err
			}
			var fsys fs.FS = defaultpolicy.FS
			if dir != "" {
				if fsys, err = policy.LoadDir(dir); err != nil {
					return err
				}
			}
			eng, err := policy.NewEngine(fsys, policy.Options{
				Logger:        slog.New(slog.DiscardHandler),
				Data:          app.PolicyData(td),
				AllowBuiltins: allow,
			})
			if err != nil {
				return err
			}
			// An evaluation error is reported as an error, not printed as a
			// deny, so that a broken policy is not mistaken for a strict one.
			d, err := eng.DecideJSON(cmd.Context(), raw)
			if err != nil {
				return err
			}
			out := evalOutput{Allow: d.Allow, Reasons: d.Reasons, Revision: d.Revision}
			if out.Reasons == nil {
				out.Reasons = []string{}
			}
			return writeJSON(c.stdout, out)
		},
	}
	cmd.Flags().StringVar(&input, "input", "", `input document file ("-" for stdin)`)
	cmd.Flags().StringVar(&dir, "policy-dir", "", "directory of Rego policy files (default: the embedded default policy)")
	cmd.Flags().StringVar(&td, "trust-domain", app.DefaultTrustDomain, "trust domain the gateway serves, as the policy sees it in data.ztgate.config.trust_domain")
	allowBuiltinFlag(cmd, &allow)
	_ = cmd.MarkFlagRequired("input")
	return cmd
}

type evalOutput struct {
	Allow    bool     `json:"allow"`
	Reasons  []string `json:"reasons"`
	Revision string   `json:"revision"`
}

func readInput(stdin io.Reader, path string) ([]byte, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxInput {
		return nil, errors.New("input larger than 4 MiB")
	}
	return raw, nil
}
