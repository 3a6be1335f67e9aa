package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

const bashCompletion = `# bash completion for kmsctl; load with: source <(kmsctl completion bash)
_kmsctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$(kmsctl __complete "${COMP_WORDS[@]:1:COMP_CWORD-1}" 2>/dev/null)" -- "$cur"))
}
complete -o default -F _kmsctl kmsctl
`

const zshCompletion = `#compdef kmsctl
# zsh completion for kmsctl; load with: source <(kmsctl completion zsh)
_kmsctl() {
    local -a words_before
    words_before=("${(@)words[2,CURRENT-1]}")
    local -a choices
    choices=("${(@f)$(kmsctl __complete "${words_before[@]}" 2>/dev/null)}")
    compadd -a choices
}
if [[ "$(basename -- ${(%):-%x})" != "_kmsctl" ]]; then
    autoload -U compinit && compinit
    compdef _kmsctl kmsctl
fi
`

const completionUsage = `usage: kmsctl completion bash|zsh

Prints a shell completion script for kmsctl, e.g. source <(kmsctl completion bash)
`

func (r *runner) completion(args []string) (int, error) {
	if len(args) == 1 && isHelp(args[0]) {
		io.WriteString(r.env.Stdout, completionUsage)
		return exitOK, nil
	}
	if len(args) != 1 {
		return 0, &usageError{"the following arguments are required: shell (bash or zsh)"}
	}
	switch args[0] {
	case "bash":
		io.WriteString(r.env.Stdout, bashCompletion)
	case "zsh":
		io.WriteString(r.env.Stdout, zshCompletion)
	default:
		return 0, &usageError{fmt.Sprintf("argument shell: Invalid choice, valid choices are:\n\n%s", choiceTable([]string{"bash", "zsh"}))}
	}
	return exitOK, nil
}

// complete prints the candidates for the word after args, one per line.
func (r *runner) complete(args []string) (int, error) {
	var words []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			words = append(words, a)
		}
	}
	var out []string
	switch {
	case len(words) == 0:
		out = commandNames()
	case len(words) == 1:
		if svc, ok := model.Services[words[0]]; ok {
			out = append(opNames(svc), "help")
			if svc == model.KMS {
				out = append(out, "wait")
			}
		} else if words[0] == "completion" {
			out = []string{"bash", "zsh"}
		}
	default:
		if svc, ok := model.Services[words[0]]; ok {
			if words[1] == "wait" {
				out = []string{"custom-key-store-connected", "custom-key-store-disconnected", "--custom-key-store-id"}
			} else if op := findOp(svc, words[1]); op != nil {
				for _, d := range newOpCommand(svc, op).args {
					out = append(out, "--"+d.cliName)
					if d.kind == argBool {
						out = append(out, "--no-"+d.cliName)
					}
				}
			}
		}
		for _, g := range globalOpts {
			out = append(out, g.name)
		}
	}
	for _, o := range out {
		fmt.Fprintln(r.env.Stdout, o)
	}
	return exitOK, nil
}
