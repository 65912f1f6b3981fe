package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newCompletionCmd replaces cobra's default completion command, whose
// unknown shell is answered with help and exit 0.
func (c *cli) newCompletionCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print the shell completion script for bash, zsh or fish",
		Long: `Print the script that makes the shell complete ztgate's commands and flags.
The script calls ztgate itself to complete, so it stays right after upgrades.`,
		Example: `  source <(ztgate completion bash)
  ztgate completion zsh > "${fpath[1]}/_ztgate"
  ztgate completion fish > ~/.config/fish/completions/ztgate.fish`,
		ValidArgs: []string{"bash", "zsh", "fish"},
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(c.stdout, true)
			case "zsh":
				return root.GenZshCompletion(c.stdout)
			case "fish":
				return root.GenFishCompletion(c.stdout, true)
			}
			return fmt.Errorf("completion: unknown shell %q", args[0])
		},
	}
}
