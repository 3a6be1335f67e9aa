// Command kmsctl is an aws-cli-compatible command line for kms and
// cloudhsmv2: `kmsctl kms describe-key --key-id …` takes exactly what
// `aws kms describe-key` takes and prints the same bytes. See
// internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/kmsd/kmsd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	env := cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin}
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		env.ReadPassword = func() ([]byte, error) { return term.ReadPassword(fd) }
	}
	if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil {
		env.StdoutTTY, env.TermWidth = true, int(ws.Col)
	}
	if _, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS); err == nil {
		env.StderrTTY = true
	}
	rc := cli.Run(ctx, os.Args[1:], env)
	stop()
	os.Exit(rc)
}
