package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ztgate/ztgate/registry"
)

// importBatch is how many rows one POST /v1/devices/import carries.
const importBatch = 500

func (c *cli) newImportCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Enroll many devices from a CSV or JSON lines file; safe to run again",
		Long: `Enroll many devices from a file ("-" reads standard input):

  CSV, with a header:   name,spiffe_id,labels,status
                        pump-1,,site=north;role=sensor,
  JSON lines:           {"name": "pump-1", "labels": {"site": "north"}}

Only name is required; spiffe_id defaults to spiffe://TRUST-DOMAIN/device/NAME,
status to active (pending, suspended and revoked are accepted too). The format
is chosen by the extension (.csv; .jsonl, .json) or else by the first
character ('{' is JSON lines).

Rows are sent in batches of 500. A device that already exists as given is
reported unchanged, so an interrupted or repeated import can simply be run
again. A row that cannot be read or is refused is reported as
"row N (NAME): error", N being its line in the file, and the other rows are
still imported; the command then exits 1. A progress bar is shown when
standard error is a terminal.`,
		Example: `  ztgate device import fleet.csv
  ztgate device import fleet.jsonl`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			rows, format, err := readImportFile(cmd.InOrStdin(), name)
			if err != nil {
				return err
			}
			client, err := c.apiClient(cmd, f)
			if err != nil {
				return err
			}
			var bar *progressbar.ProgressBar
			if isTerminal(c.stderr) {
				bar = progressbar.NewOptions(len(rows),
					progressbar.OptionSetWriter(c.stderr),
					progressbar.OptionSetDescription("importing"),
					progressbar.OptionShowCount(),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionClearOnFinish(),
				)
			}

			var counts = map[string]int{}
			// failures are reported in file order once everything is sent.
			var failures []importRow
			var batch []importRow
			flush := func() error {
				if len(batch) == 0 {
					return nil
				}
				req := importRequest{Devices: make([]importDevice, len(batch))}
				for i, r := range batch {
					req.Devices[i] = importDevice{Name: r.Name, SPIFFEID: r.SPIFFEID, Labels: r.Labels, Status: r.Status}
				}
				var resp importResponse
				if err := client.do(cmd.Context(), http.MethodPost, "/v1/devices/import", req, &resp); err != nil {
					imported := counts[registry.ImportCreated] + counts[registry.ImportUnchanged]
					return fmt.Errorf("import: rows %d to %d: %w (%d rows imported before; running the import again is safe)",
						batch[0].Row, batch[len(batch)-1].Row, err, imported)
				}
				seen := make([]bool, len(batch))
				for _, res := range resp.Results {
					if res.Row < 0 || res.Row >= len(batch) || seen[res.Row] {
						return fmt.Errorf("import: the API at %s answered with a result for row %d of a batch of %d", client.base, res.Row, len(batch))
					}
					seen[res.Row] = true
					switch res.Result {
					case registry.ImportCreated, registry.ImportUnchanged:
						counts[res.Result]++
					default:
						r := batch[res.Row]
						r.Err = fmt.Errorf("%s", res.Error)
						if res.Error == "" {
							r.Err = fmt.Errorf("%s", res.Result)
						}
						failures = append(failures, r)
					}
				}
				for i, ok := range seen {
					if !ok {
						r := batch[i]
						r.Err = fmt.Errorf("no result from the API")
						failures = append(failures, r)
					}
				}
				if bar != nil {
					_ = bar.Add(len(batch))
				}
				batch = batch[:0]
				return nil
			}
			for _, r := range rows {
				if r.Err != nil {
					failures = append(failures, r)
					if bar != nil {
						_ = bar.Add(1)
					}
					continue
				}
				batch = append(batch, r)
				if len(batch) == importBatch {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if err := flush(); err != nil {
				return err
			}
			if bar != nil {
				_ = bar.Finish()
			}

			sort.SliceStable(failures, func(i, j int) bool { return failures[i].Row < failures[j].Row })
			for _, r := range failures {
				if r.Name != "" {
					fmt.Fprintf(c.stdout, "row %d (%s): %s\n", r.Row, r.Name, oneLine(r.Err.Error()))
				} else {
					fmt.Fprintf(c.stdout, "row %d: %s\n", r.Row, oneLine(r.Err.Error()))
				}
			}
			fmt.Fprintf(c.stdout, "%s (%s): %d rows: %d created, %d unchanged, %d failed\n", name, format,
				len(rows), counts[registry.ImportCreated], counts[registry.ImportUnchanged], len(failures))
			if len(failures) > 0 {
				return fmt.Errorf("import: %d of %d rows failed", len(failures), len(rows))
			}
			return nil
		},
	}
	return cmd
}

// readImportFile opens and reads name ("-" is stdin), choosing its format.
func readImportFile(stdin io.Reader, name string) ([]importRow, importFormat, error) {
	var r io.Reader = stdin
	if name != "-" {
		fh, err := os.Open(name)
		if err != nil {
			return nil, 0, err
		}
		defer fh.Close()
		r = fh
	}
	br := bufio.NewReader(r)
	head, _ := br.Peek(512)
	format := detectFormat(name, head)
	rows, err := readImport(br, format)
	if err != nil {
		return nil, format, fmt.Errorf("import %s: %w", name, err)
	}
	return rows, format, nil
}

// isTerminal reports whether w is a terminal, where a progress bar can
// redraw itself; anywhere else (a pipe, a file, a test) it would only add
// noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
