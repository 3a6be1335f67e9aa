// Package walkthrough runs the README's walkthrough as CI: the shell blocks
// between the walkthrough markers of README.md, in order, with bash in an
// empty directory, each one's output compared with the block after it.
// This file reads the walkthrough and compares outputs; walkthrough_test.go
// runs it against the real binaries.
package walkthrough

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// The markers around the walkthrough in README.md: every ```sh block
// between them is a step.
const (
	BeginMarker = "<!-- walkthrough begin -->"
	EndMarker   = "<!-- walkthrough end -->"
)

// Placeholder stands, in an expected output, for any text of at least one
// character within one line: the values that change from run to run.
const Placeholder = "…"

// Step is one shell block of the walkthrough and the output it must print.
type Step struct {
	Line   int    // README line of the block's opening fence
	Script string // the commands, lines joined by "\n"
	// Want is the expected output (stdout and stderr together, as a
	// terminal shows them), from the ```text or ```json block right after
	// the script; empty when none follows, and then nothing may be printed.
	Want string
}

// Parse returns the steps between the walkthrough markers of a Markdown
// document. Inside the markers every fenced block is either a ```sh step
// or, right after one (blank lines between allowed), a ```text or ```json
// expected output; any other block, a marker missing or repeated, or an
// unclosed fence is an error, so that nothing in the walkthrough can go
// unchecked.
func Parse(md []byte) ([]Step, error) {
	var (
		steps         []Step
		in, done      bool
		lastWasScript bool // the previous fenced block was a step without output yet
		n             int
	)
	sc := bufio.NewScanner(bytes.NewReader(md))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		n++
		return sc.Text(), true
	}
	for {
		line, ok := next()
		if !ok {
			break
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == BeginMarker:
			if in || done {
				return nil, fmt.Errorf("line %d: a second %s", n, BeginMarker)
			}
			in = true
			continue
		case trimmed == EndMarker:
			if !in {
				return nil, fmt.Errorf("line %d: %s before %s", n, EndMarker, BeginMarker)
			}
			in, done = false, true
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(trimmed, "```") {
			if trimmed != "" {
				lastWasScript = false
			}
			continue
		}
		lang, start := strings.TrimPrefix(trimmed, "```"), n
		var body []string
		closed := false
		for {
			l, ok := next()
			if !ok {
				break
			}
			if strings.TrimSpace(l) == "```" {
				closed = true
				break
			}
			body = append(body, l)
		}
		if !closed {
			return nil, fmt.Errorf("line %d: unclosed ```%s block", start, lang)
		}
		text := strings.Join(body, "\n")
		switch {
		case lang == "sh":
			steps = append(steps, Step{Line: start, Script: text})
			lastWasScript = true
		case (lang == "text" || lang == "json") && lastWasScript:
			steps[len(steps)-1].Want = text
			lastWasScript = false
		case lang == "text" || lang == "json":
			return nil, fmt.Errorf("line %d: a ```%s block that follows no ```sh block", start, lang)
		default:
			return nil, fmt.Errorf("line %d: a ```%s block in the walkthrough (only sh, and text or json for outputs)", start, lang)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	switch {
	case in:
		return nil, fmt.Errorf("no %s after %s", EndMarker, BeginMarker)
	case !done:
		return nil, fmt.Errorf("no %s", BeginMarker)
	}
	return steps, nil
}

// Match reports how got differs from want, or nil when it matches: line
// for line, trailing spaces and trailing empty lines aside, with each
// Placeholder in want standing for at least one character of that line.
func Match(want, got string) error {
	wl, gl := lines(want), lines(got)
	for i := 0; i < len(wl) || i < len(gl); i++ {
		switch {
		case i >= len(gl):
			return fmt.Errorf("output line %d missing; want %q", i+1, wl[i])
		case i >= len(wl):
			return fmt.Errorf("output line %d is extra: %q", i+1, gl[i])
		case !linePattern(wl[i]).MatchString(gl[i]):
			return fmt.Errorf("output line %d is %q; want %q", i+1, gl[i], wl[i])
		}
	}
	return nil
}

// lines splits s into lines without trailing spaces, dropping the empty
// lines at its end.
func lines(s string) []string {
	ls := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i := range ls {
		ls[i] = strings.TrimRight(ls[i], " \t")
	}
	for len(ls) > 0 && ls[len(ls)-1] == "" {
		ls = ls[:len(ls)-1]
	}
	return ls
}

// linePattern is an expected line as an anchored regular expression.
func linePattern(want string) *regexp.Regexp {
	parts := strings.Split(want, Placeholder)
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile(`\A` + strings.Join(parts, `.+`) + `\z`)
}
