package cli

import (
	"fmt"
	"regexp"
	"strings"
)

// Shorthand syntax, ported from the aws CLI's shorthand.py: the grammar
// and the error texts are the CLI's, so that a value the aws CLI takes is
// taken here with the same meaning, and a value it rejects is rejected
// with the same message.
//
//	parameter = keyval *("," keyval)
//	keyval    = key "=" [values]
//	values    = csv-value / explicit-list / hash-literal

// ShorthandError is a syntax error in a shorthand value.
type ShorthandError struct{ Msg string }

func (e *ShorthandError) Error() string { return e.Msg }

var (
	shSingleQuoted = regexp.MustCompile(`^'(?:\\\\|\\'|[^'])*'`)
	shDoubleQuoted = regexp.MustCompile(`^"(?:\\\\|\\"|[^"])*"`)
	shStart        = `\x{21}\x{23}-\x{26}\x{28}-\x{2b}\x{2d}-\x{3c}\x{3e}-\x{5a}\x{5c}-\x{7a}\x{7c}-\x{ffff}`
	shFirstFollow  = `\s\x{21}\x{23}-\x{26}\x{28}-\x{2b}\x{2d}-\x{5c}\x{5e}-\x{7c}\x{7e}-\x{ffff}`
	shSecondFollow = `\s\x{21}\x{23}-\x{26}\x{28}-\x{2b}\x{2d}-\x{3c}\x{3e}-\x{ffff}`
	shFirstValue   = regexp.MustCompile(`^((\\,)|[` + shStart + `])((\\,)|[` + shFirstFollow + `])*`)
	shSecondValue  = regexp.MustCompile(`^((\\,)|[` + shStart + `])((\\,)|[` + shSecondFollow + `])*`)
	regexNames     = map[*regexp.Regexp]string{shSingleQuoted: "singled quoted", shDoubleQuoted: "double quoted", shFirstValue: "first", shSecondValue: "second"}
)

type shParser struct {
	in  []rune
	idx int
}

// ParseShorthand parses one shorthand value into an *Object whose values
// are strings, []any and *Object.
func ParseShorthand(s string) (o *Object, err error) {
	p := &shParser{in: []rune(s)}
	defer func() {
		if r := recover(); r != nil {
			se, ok := r.(*ShorthandError)
			if !ok {
				panic(r)
			}
			o, err = nil, se
		}
	}()
	return p.parameter(), nil
}

func (p *shParser) eof() bool { return p.idx >= len(p.in) }

func (p *shParser) cur() rune {
	if p.eof() {
		return -1
	}
	return p.in[p.idx]
}

func (p *shParser) errorLocation(index int) string {
	value := string(p.in)
	consumed, remaining, numSpaces := value, "", index
	before := string(p.in[:index])
	if i := strings.LastIndex(before, "\n"); i >= 0 {
		numSpaces = index - len([]rune(before[:i])) - 1
	}
	after := string(p.in[index:])
	if i := strings.Index(after, "\n"); i >= 0 {
		consumed = before + after[:i]
		remaining = after[i:]
	}
	return fmt.Sprintf("%s\n%s%s", consumed, strings.Repeat(" ", numSpaces)+"^", remaining)
}

func (p *shParser) syntaxError(expected, actual string) {
	panic(&ShorthandError{fmt.Sprintf("Expected: '%s', received: '%s' for input:\n%s", expected, actual, p.errorLocation(p.idx))})
}

func (p *shParser) parameter() *Object {
	params := NewObject()
	k, v := p.keyval()
	params.Set(k, v)
	last := p.idx
	for !p.eof() {
		p.expect(',', true)
		k, v := p.keyval()
		if _, dup := params.Get(k); dup {
			p.idx = last + 1
			panic(&ShorthandError{fmt.Sprintf("Second instance of key \"%s\" encountered for input:\n%s\nThis is often because there is a preceding \",\" instead of a space.", k, p.errorLocation(last+1))})
		}
		params.Set(k, v)
		last = p.idx
	}
	return params
}

func (p *shParser) keyval() (string, any) {
	k := p.key()
	p.expect('=', true)
	return k, p.values()
}

func (p *shParser) key() string {
	start := p.idx
	for !p.eof() {
		c := p.cur()
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.#/:", c)) {
			break
		}
		p.idx++
	}
	return string(p.in[start:p.idx])
}

func (p *shParser) values() any {
	switch {
	case p.eof():
		return ""
	case p.cur() == '[':
		return p.explicitList()
	case p.cur() == '{':
		return p.hashLiteral()
	}
	return p.csvValue()
}

func (p *shParser) csvValue() any {
	first := p.firstValue()
	p.consumeWhitespace()
	if p.eof() || p.cur() != ',' {
		return first
	}
	p.expect(',', true)
	list := []any{first}
	for {
		stop := false
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(*ShorthandError); !ok || p.eof() {
						panic(r)
					}
					p.backtrackTo(',')
					stop = true
				}
			}()
			current := p.secondValue()
			p.consumeWhitespace()
			if p.eof() {
				list = append(list, current)
				stop = true
				return
			}
			p.expect(',', true)
			list = append(list, current)
		}()
		if stop {
			break
		}
	}
	if len(list) == 1 {
		return first
	}
	return list
}

func (p *shParser) value() string {
	if m := shFirstValue.FindString(string(p.in[p.idx:])); m != "" {
		p.idx += len([]rune(m))
		return strings.TrimRight(strings.ReplaceAll(m, `\,`, ","), " \t\n\r\v\f")
	}
	return ""
}

func (p *shParser) explicitList() []any {
	p.expect('[', true)
	values := []any{}
	for p.cur() != ']' {
		values = append(values, p.explicitValues())
		p.consumeWhitespace()
		if p.cur() != ']' {
			p.expect(',', false)
			p.consumeWhitespace()
		}
	}
	p.expect(']', false)
	return values
}

func (p *shParser) explicitValues() any {
	switch p.cur() {
	case '[':
		return p.explicitList()
	case '{':
		return p.hashLiteral()
	}
	return p.firstValue()
}

func (p *shParser) hashLiteral() *Object {
	p.expect('{', true)
	kv := NewObject()
	for p.cur() != '}' {
		k := p.key()
		p.expect('=', true)
		v := p.explicitValues()
		p.consumeWhitespace()
		if p.cur() != '}' {
			p.expect(',', false)
			p.consumeWhitespace()
		}
		kv.Set(k, v)
	}
	p.expect('}', false)
	return kv
}

func (p *shParser) firstValue() string {
	switch p.cur() {
	case '\'':
		return p.quoted(shSingleQuoted, "'")
	case '"':
		return p.quoted(shDoubleQuoted, `"`)
	}
	return p.value()
}

func (p *shParser) quoted(re *regexp.Regexp, esc string) string {
	v := p.mustConsume(re)
	r := []rune(v)
	v = string(r[1 : len(r)-1])
	v = strings.ReplaceAll(v, `\`+esc, esc)
	return strings.ReplaceAll(v, `\\`, `\`)
}

func (p *shParser) secondValue() string {
	switch p.cur() {
	case '\'':
		return p.quoted(shSingleQuoted, "'")
	case '"':
		return p.quoted(shDoubleQuoted, `"`)
	}
	m := p.mustConsume(shSecondValue)
	return strings.TrimRight(strings.ReplaceAll(m, `\,`, ","), " \t\n\r\v\f")
}

func (p *shParser) expect(c rune, ws bool) {
	if ws {
		p.consumeWhitespace()
	}
	if p.eof() {
		p.syntaxError(string(c), "EOF")
	}
	if p.cur() != c {
		p.syntaxError(string(c), string(p.cur()))
	}
	p.idx++
	if ws {
		p.consumeWhitespace()
	}
}

func (p *shParser) mustConsume(re *regexp.Regexp) string {
	if m := re.FindString(string(p.in[p.idx:])); m != "" {
		p.idx += len([]rune(m))
		return m
	}
	p.syntaxError("<"+regexNames[re]+">", "<none>")
	return ""
}

func (p *shParser) backtrackTo(c rune) {
	for p.idx >= 0 && (p.idx >= len(p.in) || p.in[p.idx] != c) {
		p.idx--
	}
}

func (p *shParser) consumeWhitespace() {
	for !p.eof() && strings.ContainsRune(" \t\n\r\v\f", p.cur()) {
		p.idx++
	}
}
