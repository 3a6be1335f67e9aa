package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// maxPasswordLine bounds a password line read from standard input.
const maxPasswordLine = 1024

// readPassword obtains a password that --password left out, as the
// CloudHSM CLI does: on a terminal it is prompted for on standard error
// without echo ("Enter password:", then "Confirm password:" when confirm);
// otherwise it is the first line of standard input, so that scripts can
// pass it without putting it on a command line, where other users see it.
func (r *runner) readPassword(confirm bool) (string, error) {
	if r.env.ReadPassword == nil {
		return readPasswordLine(r.env.Stdin)
	}
	pw, err := r.prompt("Enter password:")
	if err != nil || !confirm {
		return pw, err
	}
	again, err := r.prompt("Confirm password:")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", &generalError{"Passwords do not match."}
	}
	return pw, nil
}

// prompt asks for one password on the terminal.
func (r *runner) prompt(text string) (string, error) {
	fmt.Fprint(r.env.Stderr, text)
	b, err := r.env.ReadPassword()
	fmt.Fprintln(r.env.Stderr) // the user's newline was not echoed
	if err != nil {
		return "", &generalError{"Unable to read the password: " + err.Error()}
	}
	return string(b), nil
}

// readPasswordLine reads one line, without its line ending, from in. It
// reads a byte at a time, so that nothing after the line is consumed.
func readPasswordLine(in io.Reader) (string, error) {
	if in == nil {
		in = bytes.NewReader(nil)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := in.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			if len(line) == maxPasswordLine {
				return "", &generalError{fmt.Sprintf("The password on standard input is longer than %d bytes.", maxPasswordLine)}
			}
			line = append(line, b[0])
		}
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return "", &usageError{"no password: give --password, type it at the prompt, or pipe it as one line on standard input"}
			}
			break
		}
		if err != nil {
			return "", &generalError{"Unable to read the password from standard input: " + err.Error()}
		}
	}
	return string(bytes.TrimSuffix(line, []byte("\r"))), nil
}
