package cli

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strings"
)

// formatJSON is the aws CLI's JSONFormatter: nothing for an empty
// object, else 4-space-indented JSON with non-ASCII kept.
func formatJSON(w io.Writer, v any) {
	if o, ok := v.(*Object); ok && o.Len() == 0 {
		return
	}
	var b strings.Builder
	pyJSON(&b, v, 4, false)
	b.WriteByte('\n')
	io.WriteString(w, b.String())
}

// formatText is the aws CLI's text.format_text.
func formatText(w io.Writer, v any) {
	var b strings.Builder
	textAny(&b, v, "", nil)
	io.WriteString(w, b.String())
}

func isScalar(v any) bool {
	switch v.(type) {
	case *Object, []any:
		return false
	}
	return true
}

func textAny(b *strings.Builder, v any, ident string, scalarKeys []string) {
	switch t := v.(type) {
	case *Object:
		textDict(b, scalarKeys, t, ident)
	case []any:
		textList(b, t, ident)
	default:
		b.WriteString(pyScalar(t, false))
		b.WriteByte('\n')
	}
}

func textList(b *strings.Builder, l []any, ident string) {
	if len(l) == 0 {
		return
	}
	anyDict, anyList := false, false
	for _, e := range l {
		switch e.(type) {
		case *Object:
			anyDict = true
		case []any:
			anyList = true
		}
	}
	switch {
	case anyDict:
		keys := allScalarKeys(l)
		for _, e := range l {
			textAny(b, e, ident, keys)
		}
	case anyList:
		var scalars, non []any
		for _, e := range l {
			if isScalar(e) {
				scalars = append(scalars, e)
			} else {
				non = append(non, e)
			}
		}
		if len(scalars) > 0 {
			textScalarList(b, scalars, ident)
		}
		for _, e := range non {
			textAny(b, e, ident, nil)
		}
	default:
		textScalarList(b, l, ident)
	}
}

func textScalarList(b *strings.Builder, l []any, ident string) {
	if ident != "" {
		for _, e := range l {
			fmt.Fprintf(b, "%s\t%s\n", strings.ToUpper(ident), pyScalar(e, false))
		}
		return
	}
	var parts []string
	for _, e := range l {
		parts = append(parts, pyScalar(e, false))
	}
	b.WriteString(strings.Join(parts, "\t"))
	b.WriteByte('\n')
}

func textDict(b *strings.Builder, scalarKeys []string, o *Object, ident string) {
	var scalars []string
	type kv struct {
		k string
		v any
	}
	var non []kv
	if scalarKeys == nil {
		for _, k := range o.SortedKeys() {
			if isScalar(o.M[k]) {
				scalars = append(scalars, pyScalar(o.M[k], false))
			} else {
				non = append(non, kv{k, o.M[k]})
			}
		}
	} else {
		set := map[string]bool{}
		for _, k := range scalarKeys {
			set[k] = true
			if v, ok := o.Get(k); ok {
				scalars = append(scalars, pyScalar(v, false))
			} else {
				scalars = append(scalars, "")
			}
		}
		for _, k := range o.SortedKeys() {
			if !set[k] {
				non = append(non, kv{k, o.M[k]})
			}
		}
	}
	if len(scalars) > 0 {
		if ident != "" {
			scalars = append([]string{strings.ToUpper(ident)}, scalars...)
		}
		b.WriteString(strings.Join(scalars, "\t"))
		b.WriteByte('\n')
	}
	for _, e := range non {
		textAny(b, e.v, e.k, nil)
	}
}

func allScalarKeys(l []any) []string {
	seen := map[string]bool{}
	for _, e := range l {
		if o, ok := e.(*Object); ok {
			for _, k := range o.Keys {
				if isScalar(o.M[k]) {
					seen[k] = true
				}
			}
		}
	}
	keys := []string{}
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---- table (awscli/table.py and TableFormatter) ----

type section struct {
	title     string
	headers   []string
	rows      [][]string
	indent    int
	numCols   int
	maxWidths []int
}

func (s *section) updateWidths(row []string) {
	if len(s.maxWidths) == 0 {
		for _, e := range row {
			s.maxWidths = append(s.maxWidths, textLen(e))
		}
		return
	}
	for i, e := range row {
		if i < len(s.maxWidths) && textLen(e) > s.maxWidths[i] {
			s.maxWidths[i] = textLen(e)
		}
	}
}

func (s *section) addHeader(h []string) {
	s.updateWidths(h)
	if s.numCols == 0 {
		s.numCols = len(h)
	}
	s.headers = h
}

func (s *section) addRow(r []any) {
	row := make([]string, len(r))
	for i, e := range r {
		row[i] = pyScalar(e, false)
	}
	if s.numCols == 0 {
		s.numCols = len(row)
	}
	s.rows = append(s.rows, row)
	s.updateWidths(row)
}

func pyRound(f float64) int {
	// Python 3 round(): half to even.
	return int(math.RoundToEven(f))
}

func (s *section) columnWidths(padding int, maxWidth int) []int {
	var un []int
	sum := 0
	for _, w := range s.maxWidths {
		un = append(un, w+padding)
		sum += w + padding
	}
	if maxWidth < 0 || len(un) == 0 {
		return un
	}
	scale := float64(maxWidth) / float64(sum)
	scaled := make([]int, len(un))
	total := 0
	for i, w := range un {
		scaled[i] = pyRound(scale * float64(w))
		total += scaled[i]
	}
	off := total - maxWidth
	for off != 0 {
		n := len(scaled)
		for j := 0; j < n; j++ {
			i := j
			if off < 0 {
				i = n - 1 - j
			}
			if off > 0 {
				scaled[i]--
				off--
			} else {
				scaled[i]++
				off++
			}
			if off == 0 {
				break
			}
		}
	}
	return scaled
}

func (s *section) totalWidth(padding int, border bool, outer int) int {
	total := 0
	for _, w := range s.columnWidths(0, -1) {
		total += w + padding
	}
	if border {
		total += 2
	}
	total += 2 * outer
	if t := textLen(s.title) + 2 + 2*outer; t > total {
		return t
	}
	return total
}

type tableBuilder struct {
	sections []*section
	cur      *section
}

func (t *tableBuilder) newSection(title string, indent int) {
	t.cur = &section{title: title, indent: indent}
	t.sections = append(t.sections, t.cur)
}

func isEmptyValue(v any) bool {
	switch t := v.(type) {
	case nil:
		return true
	case *Object:
		return t.Len() == 0
	case []any:
		return len(t) == 0
	case string:
		return t == ""
	case bool:
		return !t
	case int64:
		return t == 0
	case float64:
		return t == 0
	}
	return false
}

func (t *tableBuilder) build(title string, hasTitle bool, cur any, indent int) bool {
	if isEmptyValue(cur) {
		return false
	}
	if hasTitle {
		t.newSection(title, indent)
	}
	if l, ok := cur.([]any); ok {
		if _, ok := l[0].(*Object); ok {
			t.subTableFromList(l, indent, title)
		} else {
			for _, item := range l {
				if isScalar(item) {
					t.cur.addRow([]any{item})
				} else if il, ok := item.([]any); ok && allScalars(il) {
					t.cur.addRow(il)
				} else {
					t.build("", false, item, 0)
				}
			}
		}
	}
	if o, ok := cur.(*Object); ok {
		t.subTableFromDict(o, indent)
	}
	return true
}

func allScalars(l []any) bool {
	for _, e := range l {
		if !isScalar(e) {
			return false
		}
	}
	return true
}

func groupScalarKeys(o *Object) (headers, more []string) {
	for _, k := range o.SortedKeys() {
		if isScalar(o.M[k]) {
			headers = append(headers, k)
		} else {
			more = append(more, k)
		}
	}
	return
}

func (t *tableBuilder) subTableFromDict(o *Object, indent int) {
	headers, more := groupScalarKeys(o)
	if len(headers) == 1 {
		t.cur.addRow([]any{headers[0], o.M[headers[0]]})
	} else if len(headers) > 0 {
		t.cur.addHeader(headers)
		row := make([]any, len(headers))
		for i, h := range headers {
			row[i] = o.M[h]
		}
		t.cur.addRow(row)
	}
	for _, k := range more {
		t.build(k, true, o.M[k], indent+1)
	}
}

func (t *tableBuilder) subTableFromList(l []any, indent int, title string) {
	hs, ms := map[string]bool{}, map[string]bool{}
	for _, e := range l {
		if o, ok := e.(*Object); ok {
			h, m := groupScalarKeys(o)
			for _, k := range h {
				hs[k] = true
			}
			for _, k := range m {
				ms[k] = true
			}
		}
	}
	headers, more := sortedSet(hs), sortedSet(ms)
	t.cur.addHeader(headers)
	first := true
	for _, e := range l {
		o, _ := e.(*Object)
		if o == nil {
			o = NewObject()
		}
		if !first && len(more) > 0 {
			t.newSection(title, indent)
			t.cur.addHeader(headers)
		}
		first = false
		row := make([]any, len(headers))
		for i, h := range headers {
			if v, ok := o.Get(h); ok {
				row[i] = v
			} else {
				row[i] = ""
			}
		}
		t.cur.addRow(row)
		for _, k := range more {
			if v, ok := o.Get(k); ok {
				t.build(k, true, v, indent+1)
			}
		}
	}
}

func sortedSet(m map[string]bool) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// styler is awscli.table's Styler / ColorizedStyler; with colour, every
// write is followed by a reset, as colorama's autoreset wrapper does.
type styler struct{ color bool }

func (s styler) row(t string) string {
	if s.color {
		return "\x1b[1m\x1b[34m" + t + "\x1b[0m"
	}
	return t
}

func (s styler) indentChar() string {
	if s.color {
		return "\x1b[2m\x1b[33m|\x1b[0m"
	}
	return "|"
}

type tableWriter struct {
	b     *strings.Builder
	color bool
}

func (w tableWriter) write(s string) {
	w.b.WriteString(s)
	if w.color {
		w.b.WriteString("\x1b[0m")
	}
}

func centerText(text string, length int, left, right string, textLength int) string {
	charStart := length/2 - textLength/2 - 1
	if charStart < 0 {
		charStart = 0
	}
	var b strings.Builder
	b.WriteString(left + strings.Repeat(" ", charStart) + text)
	soFar := textLen(left) + charStart + textLength
	rs := length - textLen(right) - soFar
	if rs > 0 {
		b.WriteString(strings.Repeat(" ", rs))
	}
	b.WriteString(right)
	return b.String()
}

func alignLeft(text string, length int, left, right string, textLength int) string {
	computed := textLength + 2 + textLen(left) + textLen(right)
	padding := 0
	if length-computed >= 0 {
		padding = 2
	}
	soFar := len(left) + padding + textLength
	n := length - soFar - len(right)
	if n < 0 {
		n = 0
	}
	return left + strings.Repeat(" ", padding) + text + strings.Repeat(" ", n) + right
}

// formatTable is the aws CLI's TableFormatter for a response titled with
// the operation's API name.
func formatTable(w io.Writer, title string, v any, termWidth int, color bool) {
	t := &tableBuilder{}
	if !t.build(title, true, v, 0) {
		return
	}
	maxWidth := 0
	calc := func() {
		maxWidth = 0
		for _, s := range t.sections {
			if tw := s.totalWidth(4, true, s.indent); tw > maxWidth {
				maxWidth = tw
			}
		}
	}
	calc()
	if maxWidth > termWidth {
		for i, s := range t.sections {
			if len(s.rows) == 1 && len(s.headers) > 0 {
				ns := &section{title: s.title, indent: s.indent}
				for j, h := range s.headers {
					if j < len(s.rows[0]) {
						ns.addRow([]any{h, s.rows[0][j]})
					}
				}
				t.sections[i] = ns
			}
		}
		calc()
	}
	st := styler{color}
	var b strings.Builder
	tw := tableWriter{&b, color}
	tw.write(strings.Repeat("-", maxWidth) + "\n")
	for _, s := range t.sections {
		// IndentedStream: each write is wrapped in indentation chars.
		iw := func(text string) {
			ind := strings.Repeat(st.indentChar(), s.indent)
			tw.write(ind)
			if strings.HasSuffix(text, "\n") {
				tw.write(text[:len(text)-1])
				tw.write(ind)
				tw.write("\n")
			} else {
				tw.write(text)
			}
		}
		mw := maxWidth - 2*s.indent
		if s.title != "" {
			iw(centerText(s.title, mw, "|", "|", textLen(s.title)) + "\n")
			if len(s.headers) == 0 && len(s.rows) == 0 {
				iw("+" + strings.Repeat("-", mw-2) + "+\n")
			}
		}
		lineBreak := func(widths []int) {
			var parts strings.Builder
			for i, wd := range widths {
				if i == 0 {
					parts.WriteString("+" + strings.Repeat("-", wd-2) + "+")
				} else {
					parts.WriteString(strings.Repeat("-", wd-1) + "+")
				}
			}
			parts.WriteString("\n")
			iw(parts.String())
		}
		if len(s.headers) > 0 {
			widths := s.columnWidths(4, mw)
			var cur strings.Builder
			for i, h := range s.headers {
				if i >= len(widths) {
					break
				}
				left := ""
				if i == 0 {
					left = "|"
				}
				cur.WriteString(centerText(h, widths[i], left, "|", textLen(h)))
			}
			lineBreak(widths)
			iw(cur.String() + "\n")
		}
		if len(s.rows) > 0 {
			widths := s.columnWidths(4, mw)
			if len(widths) > 0 {
				lineBreak(widths)
				for _, row := range s.rows {
					var cur strings.Builder
					for i, e := range row {
						if i >= len(widths) {
							break
						}
						left := ""
						if i == 0 {
							left = "|"
						}
						cur.WriteString(alignLeft(st.row(e), widths[i], left, "|", textLen(e)))
					}
					iw(cur.String() + "\n")
				}
				lineBreak(widths)
			}
		}
	}
	io.WriteString(w, b.String())
}

// ---- YAML (ruamel.yaml safe dumper, block style) ----

var (
	yamlSpecial = regexp.MustCompile(`^(?:~|null|Null|NULL|true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|y|Y|n|N|[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|0x[0-9a-fA-F_]+|0o?[0-7_]+|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*|<<|=)$`)
)

// yamlStyle picks ruamel's style for a string: plain, single-quoted or
// double-quoted (for line breaks next to spaces and unprintables).
func yamlStyle(s string) byte {
	if s == "" {
		return '\''
	}
	for _, r := range s {
		if (r < 0x20 && r != '\n') || r == 0x7f || r == 0xfeff || (r >= 0x80 && r < 0xa0) {
			return '"'
		}
	}
	if strings.Contains(s, "\n") {
		return '"'
	}
	plain := true
	switch {
	case yamlSpecial.MatchString(s):
		plain = false
	case strings.ContainsAny(s[:1], "-?:,[]{}#&*!|>'\"%@` "):
		plain = (s[0] == '-' || s[0] == '?' || s[0] == ':') && len(s) > 1 && s[1] != ' '
	case strings.Contains(s, ": ") || strings.Contains(s, " #") || strings.HasSuffix(s, ":") || strings.HasSuffix(s, " "):
		plain = false
	}
	if plain {
		return 0
	}
	return '\''
}

// yamlScalar renders s unfolded (for keys and short values).
func yamlScalar(s string) string {
	return yamlFold(s, 0, -1)
}

// yamlFold renders s as ruamel's emitter does when the scalar starts at
// column col, folding at spaces past column 80 onto lines indented by
// indent (indent < 0: never fold).
func yamlFold(s string, col, indent int) string {
	const best = 80
	var b strings.Builder
	rs := []rune(s)
	nl := func() {
		b.WriteString("\n" + strings.Repeat(" ", indent))
		col = indent
	}
	switch yamlStyle(s) {
	case 0, '\'':
		q := yamlStyle(s) == '\''
		if q {
			b.WriteByte('\'')
			col++
		}
		for i := 0; i < len(rs); i++ {
			r := rs[i]
			if r == ' ' && indent >= 0 && i > 0 && i+1 < len(rs) && rs[i-1] != ' ' && rs[i+1] != ' ' && col > best {
				nl()
				continue
			}
			if q && r == '\'' {
				b.WriteString("''")
				col += 2
				continue
			}
			b.WriteRune(r)
			col++
		}
		if q {
			b.WriteByte('\'')
		}
		return b.String()
	}
	esc := map[rune]string{0: "0", 7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r", 27: "e", '"': "\"", '\\': "\\", 0x85: "N", 0xa0: "_", 0x2028: "L", 0x2029: "P"}
	b.WriteByte('"')
	col++
	start := 0
	for end := 0; end <= len(rs); end++ {
		var ch rune = -1
		if end < len(rs) {
			ch = rs[end]
		}
		if ch == -1 || ch == '"' || ch == '\\' || ch == 0x85 || ch == 0x2028 || ch == 0x2029 || ch == 0xfeff ||
			!(ch >= 0x20 && ch <= 0x7e || ch >= 0xa0 && ch <= 0xd7ff || ch >= 0xe000 && ch <= 0xfffd || ch > 0xffff) {
			if start < end {
				b.WriteString(string(rs[start:end]))
				col += end - start
				start = end
			}
			if ch != -1 {
				e, ok := esc[ch]
				switch {
				case ok:
					e = "\\" + e
				case ch <= 0xff:
					e = fmt.Sprintf("\\x%02X", ch)
				default:
					e = fmt.Sprintf("\\u%04X", ch)
				}
				b.WriteString(e)
				col += len(e)
				start = end + 1
			}
		}
		// ruamel folds a double-quoted scalar only at a space, which the
		// line break replaces; a space that follows is escaped.
		if indent >= 0 && end > 0 && end < len(rs)-1 && ch == ' ' && col+(end-start) > best {
			b.WriteString(string(rs[start:end]))
			start = end + 1
			nl()
			if start < len(rs) && rs[start] == ' ' {
				b.WriteString("\\")
				col++
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

func yamlScalarAny(v any) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case bool:
		if t {
			return "true"
		}
		return "false"
	case string:
		return yamlScalar(t)
	case float64:
		f := pyFloat(t, true)
		if f == "Infinity" {
			return ".inf"
		}
		return f
	}
	return pyScalar(v, true)
}

// formatYAML is the aws CLI's YAMLDumper.
func formatYAML(w io.Writer, v any) {
	var b strings.Builder
	switch v.(type) {
	case *Object, []any:
		yamlNode(&b, v, 0, false)
	default:
		pyJSON(&b, v, -1, false)
		b.WriteByte('\n')
	}
	io.WriteString(w, b.String())
}

func yamlNode(b *strings.Builder, v any, indent int, inSeq bool) {
	pad := strings.Repeat(" ", indent)
	switch t := v.(type) {
	case *Object:
		if t.Len() == 0 {
			b.WriteString(pad + "{}\n")
			return
		}
		for i, k := range t.SortedKeys() {
			p := pad
			if inSeq && i == 0 {
				p = ""
			}
			val := t.M[k]
			switch vv := val.(type) {
			case *Object:
				if vv.Len() == 0 {
					fmt.Fprintf(b, "%s%s: {}\n", p, yamlScalar(k))
					continue
				}
				fmt.Fprintf(b, "%s%s:\n", p, yamlScalar(k))
				yamlNode(b, vv, indent+2, false)
			case []any:
				if len(vv) == 0 {
					fmt.Fprintf(b, "%s%s: []\n", p, yamlScalar(k))
					continue
				}
				fmt.Fprintf(b, "%s%s:\n", p, yamlScalar(k))
				yamlNode(b, vv, indent, false)
			case string:
				key := yamlScalar(k)
				fmt.Fprintf(b, "%s%s: %s\n", p, key, yamlFold(vv, indent+len(key)+2, indent+2))
			default:
				fmt.Fprintf(b, "%s%s: %s\n", p, yamlScalar(k), yamlScalarAny(val))
			}
		}
	case []any:
		if len(t) == 0 {
			b.WriteString(pad + "[]\n")
			return
		}
		for i, e := range t {
			p := pad
			if inSeq && i == 0 {
				p = ""
			}
			switch ev := e.(type) {
			case *Object:
				if ev.Len() == 0 {
					b.WriteString(p + "- {}\n")
					continue
				}
				b.WriteString(p + "- ")
				yamlNode(b, ev, indent+2, true)
			case []any:
				if len(ev) == 0 {
					b.WriteString(p + "- []\n")
					continue
				}
				b.WriteString(p + "- ")
				yamlNode(b, ev, indent+2, true)
			default:
				b.WriteString(p + "- " + yamlScalarAny(e) + "\n")
			}
		}
	}
}
