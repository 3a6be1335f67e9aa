package cli

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmsd/kmsd/internal/cli/model"
	"go.yaml.in/yaml/v3"
)

// loadParamFile is the aws CLI's file:// (text) and fileb:// (bytes)
// handling; ok is false when v names no file.
func loadParamFile(cliName, v string) (any, bool, error) {
	var prefix string
	switch {
	case strings.HasPrefix(v, "file://"):
		prefix = "file://"
	case strings.HasPrefix(v, "fileb://"):
		prefix = "fileb://"
	default:
		return nil, false, nil
	}
	path := expandPath(v[len(prefix):])
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, true, newParamError(cliName, fmt.Sprintf("Unable to load paramfile %s: %s", v, pyOSError(err, path)))
	}
	if prefix == "fileb://" {
		return b, true, nil
	}
	if !isValidUTF8(b) {
		return nil, true, newParamError(cliName, fmt.Sprintf("Unable to load paramfile (%s), text contents could not be decoded.  If this is a binary file, please use the fileb:// prefix instead of the file:// prefix.", path))
	}
	return string(b), true, nil
}

func isValidUTF8(b []byte) bool { return strings.ToValidUTF8(string(b), "\uFFFD") == string(b) }

// expandPath is os.path.expandvars(os.path.expanduser(p)).
func expandPath(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, p[1:])
		}
	}
	return os.Expand(p, func(k string) string {
		if v, ok := os.LookupEnv(k); ok {
			return v
		}
		return "$" + k
	})
}

// pyOSError renders an open() failure as Python's OSError str().
func pyOSError(err error, path string) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		msg := errno.Error()
		if len(msg) > 0 {
			msg = strings.ToUpper(msg[:1]) + msg[1:]
		}
		return fmt.Sprintf("[Errno %d] %s: %s", int(errno), msg, pyStrRepr(path))
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func isComplex(sh *model.Shape) bool {
	return sh.Type == "structure" || sh.Type == "list" || sh.Type == "map"
}

// supportsShorthand is argprocess._supports_shorthand_syntax.
func (c *opCommand) supportsShorthand(sh *model.Shape) bool {
	if sh.Document {
		return false
	}
	if !isComplex(sh) {
		return false
	}
	if sh.Type == "list" && !isComplex(c.svc.Shape(sh.Member)) {
		return false
	}
	return true
}

func looksLikeJSON(v any) bool {
	if s, ok := v.(string); ok {
		t := strings.TrimSpace(s)
		return strings.HasPrefix(t, "[") || strings.HasPrefix(t, "{")
	}
	return false
}

// unpack turns the raw command-line value of one option into the value
// the aws CLI would pass to botocore: file loading, then shorthand or
// JSON or scalar conversion by the member's shape.
func (c *opCommand) unpack(d *argDef, raw any) (any, error) {
	cliName := "--" + d.cliName
	// file:// and fileb:// first (a list with one element counts).
	probe := raw
	if l, ok := raw.([]string); ok && len(l) == 1 {
		probe = l[0]
	}
	if s, ok := probe.(string); ok {
		v, ok, err := loadParamFile(cliName, s)
		if err != nil {
			return nil, err
		}
		if ok {
			raw = v
		}
	}
	// Shorthand.
	if c.supportsShorthand(d.shape) {
		check := raw
		if l, ok := raw.([]string); ok && len(l) > 0 {
			check = l[0]
		}
		if !looksLikeJSON(check) {
			if _, isStr := check.(string); isStr {
				if v, handled := c.shorthandSpecial(d, raw); handled {
					return v, nil
				}
				var out any
				if l, ok := raw.([]string); ok {
					items := []any{}
					for _, s := range l {
						o, err := ParseShorthand(s)
						if err != nil {
							return nil, newParamError(cliName, err.Error())
						}
						items = append(items, o)
					}
					out = c.backCompat(d.shape, items)
				} else {
					o, err := ParseShorthand(raw.(string))
					if err != nil {
						return nil, newParamError(cliName, err.Error())
					}
					out = c.backCompat(d.shape, o)
				}
				return out, nil
			}
		}
	}
	return c.unpackValue(d.shape, raw, cliName)
}

// shorthandSpecial is the one special case of ParamShorthandParser that
// can apply to these services: a structure whose only member is a string
// "Value" takes a bare value.
func (c *opCommand) shorthandSpecial(d *argDef, raw any) (any, bool) {
	sh := d.shape
	s, ok := raw.(string)
	if ok && sh.Type == "structure" && len(sh.Members) == 1 && sh.Members[0].Name == "Value" &&
		c.svc.Shape(sh.Members[0].Shape).Type == "string" && !strings.Contains(s, "=") {
		o := NewObject()
		o.Set("Value", s)
		return o, true
	}
	return nil, false
}

// backCompat is shorthand.BackCompatVisitor: scalars converted by shape,
// a lone value where a list is expected wrapped in a list.
func (c *opCommand) backCompat(sh *model.Shape, v any) any {
	switch sh.Type {
	case "structure":
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		for _, m := range sh.Members {
			if mv, ok := o.Get(m.Name); ok {
				o.M[m.Name] = c.backCompat(c.svc.Shape(m.Shape), mv)
			}
		}
		return o
	case "list":
		l, ok := v.([]any)
		if !ok {
			if v == nil {
				return v
			}
			return []any{c.backCompat(c.svc.Shape(sh.Member), v)}
		}
		for i := range l {
			l[i] = c.backCompat(c.svc.Shape(sh.Member), l[i])
		}
		return l
	case "map":
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		for _, k := range o.Keys {
			o.M[k] = c.backCompat(c.svc.Shape(sh.Value), o.M[k])
		}
		return o
	case "integer", "long":
		if s, ok := v.(string); ok {
			if n, err := pyInt(s); err == nil {
				return n
			}
		}
	case "float", "double":
		if s, ok := v.(string); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
				return f
			}
		}
	case "boolean":
		if s, ok := v.(string); ok {
			switch strings.ToLower(s) {
			case "true":
				return true
			case "false":
				return false
			}
		}
	}
	return v
}

// unpackValue is argprocess._unpack_cli_arg.
func (c *opCommand) unpackValue(sh *model.Shape, raw any, cliName string) (any, error) {
	if sh.Document {
		s, _ := raw.(string)
		return unpackJSON(s, cliName)
	}
	switch sh.Type {
	case "structure", "map":
		s, ok := raw.(string)
		if !ok {
			return raw, nil
		}
		if t := strings.TrimLeft(s, " \t\n\r\v\f"); t != "" && t[0] == '{' {
			return unpackJSON(s, cliName)
		}
		if strings.TrimSpace(s) == "" {
			return nil, &generalError{"string index out of range"}
		}
		return nil, newParamError(cliName, "Invalid JSON:\n"+s)
	case "list":
		var items []string
		switch t := raw.(type) {
		case string:
			if u := strings.TrimLeft(t, " \t\n\r\v\f"); u != "" && u[0] == '[' {
				return unpackJSON(t, cliName)
			}
			for _, r := range t { // Python iterates the characters of a str
				items = append(items, string(r))
			}
		case []string:
			if len(t) == 1 {
				if u := strings.TrimSpace(t[0]); u != "" && u[0] == '[' {
					return unpackJSON(t[0], cliName)
				}
			}
			items = t
		default:
			return raw, nil
		}
		out := []any{}
		for _, it := range items {
			v, err := c.unpackValue(c.svc.Shape(sh.Member), it, cliName)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case "integer", "long":
		s, ok := raw.(string)
		if !ok {
			return raw, nil
		}
		n, err := pyInt(s)
		if err != nil {
			return nil, &generalError{err.Error()}
		}
		return n, nil
	case "float", "double":
		s, ok := raw.(string)
		if !ok {
			return raw, nil
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return nil, &generalError{fmt.Sprintf("could not convert string to float: %s", pyStrRepr(s))}
		}
		return f, nil
	}
	return raw, nil
}

func unpackJSON(s, cliName string) (any, error) {
	v, err := decodeJSON([]byte(s))
	if err != nil {
		return nil, newParamError(cliName, fmt.Sprintf("Invalid JSON: %s\nJSON received: %s", pyJSONError(s, err), s))
	}
	return v, nil
}

// pyJSONError approximates Python's json.JSONDecodeError text.
func pyJSONError(s string, err error) string {
	var se *json.SyntaxError
	off := int64(len(s))
	msg := "Expecting value"
	if errors.As(err, &se) {
		off = se.Offset - 1
		if off < 0 {
			off = 0
		}
		if strings.Contains(se.Error(), "looking for beginning of object key") {
			msg = "Expecting property name enclosed in double quotes"
		} else if strings.Contains(se.Error(), "after object key") {
			msg = "Expecting ':' delimiter"
		} else if strings.Contains(se.Error(), "after object key:value pair") || strings.Contains(se.Error(), "after array element") {
			msg = "Expecting ',' delimiter"
		}
	} else if errors.Is(err, errExtraData) {
		msg = "Extra data"
	}
	line, col := 1, 1
	for i, r := range s {
		if int64(i) >= off {
			break
		}
		if r == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return fmt.Sprintf("%s: line %d column %d (char %d)", msg, line, col, off)
}

// buildParams is the aws CLI's _build_call_parameters followed by the
// --cli-input-json/--cli-input-yaml merge: command-line values win.
func (c *opCommand) buildParams(p *parsedArgs) (*Object, error) {
	params := NewObject()
	for _, d := range c.args {
		if d.member == "" || !p.has(d.cliName) {
			continue
		}
		var raw any
		switch d.kind {
		case argBool:
			params.Set(d.member, p.bools[d.cliName])
			continue
		case argList:
			raw = p.lists[d.cliName]
		default:
			raw = p.scalars[d.cliName]
		}
		v, err := c.unpack(d, raw)
		if err != nil {
			return nil, err
		}
		params.Set(d.member, v)
	}
	_, j := p.scalars["cli-input-json"]
	_, y := p.scalars["cli-input-yaml"]
	if j && y {
		return nil, &paramError{"Only one --cli-input- parameter may be specified."}
	}
	for _, name := range []string{"cli-input-json", "cli-input-yaml"} {
		raw, ok := p.scalars[name]
		if !ok {
			continue
		}
		text := raw
		if v, ok, err := loadParamFile(name, raw); err != nil {
			return nil, err
		} else if ok {
			switch t := v.(type) {
			case string:
				text = t
			case []byte:
				text = string(t)
			}
		}
		var loaded any
		var err error
		if name == "cli-input-json" {
			loaded, err = decodeJSON([]byte(text))
			if err != nil {
				return nil, newParamError(name, "Invalid JSON received.")
			}
		} else {
			loaded, err = decodeYAML([]byte(text))
			if err != nil {
				return nil, newParamError(name, "Invalid YAML received.")
			}
		}
		o, ok := loaded.(*Object)
		if !ok {
			return nil, newParamError("--"+name, fmt.Sprintf("Invalid type: expecting map, received %s", pyTypeName(loaded)))
		}
		for _, k := range o.Keys {
			if _, set := params.Get(k); !set {
				params.Set(k, o.M[k])
			}
		}
	}
	return params, nil
}

// decodeYAML loads YAML keeping mapping order.
func decodeYAML(b []byte) (any, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	if n.Kind == 0 {
		return nil, nil
	}
	return yamlValue(&n)
}

func yamlValue(n *yaml.Node) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return yamlValue(n.Content[0])
	case yaml.AliasNode:
		return yamlValue(n.Alias)
	case yaml.MappingNode:
		o := NewObject()
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := yamlValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			o.Set(n.Content[i].Value, v)
		}
		return o, nil
	case yaml.SequenceNode:
		l := []any{}
		for _, c := range n.Content {
			v, err := yamlValue(c)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, nil
	}
	switch n.Tag {
	case "!!null":
		return nil, nil
	case "!!bool":
		var b bool
		err := n.Decode(&b)
		return b, err
	case "!!int":
		var i int64
		err := n.Decode(&i)
		return i, err
	case "!!float":
		var f float64
		err := n.Decode(&f)
		return f, err
	case "!!binary":
		b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(n.Value), ""))
		return b, err
	}
	return n.Value, nil
}

// decodeBlobs is the aws CLI's Base64DecodeVisitor (cli_binary_format
// base64): text given for a blob member is base64-decoded; bytes from
// fileb:// pass unchanged.
func (c *opCommand) decodeBlobs(sh *model.Shape, v any) (any, error) {
	switch sh.Type {
	case "structure":
		o, ok := v.(*Object)
		if !ok {
			return v, nil
		}
		for _, m := range sh.Members {
			if mv, ok := o.Get(m.Name); ok {
				nv, err := c.decodeBlobs(c.svc.Shape(m.Shape), mv)
				if err != nil {
					return nil, err
				}
				o.M[m.Name] = nv
			}
		}
	case "list":
		if l, ok := v.([]any); ok {
			for i := range l {
				nv, err := c.decodeBlobs(c.svc.Shape(sh.Member), l[i])
				if err != nil {
					return nil, err
				}
				l[i] = nv
			}
		}
	case "map":
		if o, ok := v.(*Object); ok {
			for _, k := range o.Keys {
				nv, err := c.decodeBlobs(c.svc.Shape(sh.Value), o.M[k])
				if err != nil {
					return nil, err
				}
				o.M[k] = nv
			}
		}
	case "blob":
		if s, ok := v.(string); ok {
			b, err := pyB64Decode(s)
			if err != nil {
				return nil, &generalError{fmt.Sprintf("Invalid base64: \"%s\"", s)}
			}
			return b, nil
		}
	}
	return v, nil
}

// pyB64Decode is Python's base64.b64decode without validation:
// characters outside the alphabet are dropped, padding must be right.
func pyB64Decode(s string) ([]byte, error) {
	var data strings.Builder
	pad := 0
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '+', r == '/':
			if pad > 0 {
				// data after padding: Python stops at the complete quad
				continue
			}
			data.WriteRune(r)
		case r == '=':
			pad++
		}
	}
	d := data.String()
	switch len(d) % 4 {
	case 1:
		return nil, errors.New("invalid")
	case 2:
		if pad < 2 {
			return nil, errors.New("incorrect padding")
		}
	case 3:
		if pad < 1 {
			return nil, errors.New("incorrect padding")
		}
	}
	return base64.RawStdEncoding.DecodeString(d)
}

// validation is botocore's ParamValidator, with its report wording.
type validation struct {
	svc  *model.Service
	errs []string
}

func (v *validation) name(n string) string {
	if n == "" {
		return "input"
	}
	return strings.TrimPrefix(n, ".")
}

func (v *validation) invalidType(name string, val any, valid string) {
	v.errs = append(v.errs, fmt.Sprintf("Invalid type for parameter %s, value: %s, type: %s, valid types: %s", v.name(name), pyRepr(val), pyTypeName(val), valid))
}

func (v *validation) rangeCheck(name string, n int64, sh *model.Shape, length bool) {
	if sh.Min != nil && n < *sh.Min {
		if length {
			v.errs = append(v.errs, fmt.Sprintf("Invalid length for parameter %s, value: %d, valid min length: %d", v.name(name), n, *sh.Min))
		} else {
			v.errs = append(v.errs, fmt.Sprintf("Invalid value for parameter %s, value: %d, valid min value: %d", v.name(name), n, *sh.Min))
		}
	}
}

func (v *validation) validate(val any, sh *model.Shape, name string) {
	switch sh.Type {
	case "structure":
		o, ok := val.(*Object)
		if !ok {
			v.invalidType(name, val, "<class 'dict'>")
			return
		}
		for _, r := range sh.Required {
			if _, ok := o.Get(r); !ok {
				v.errs = append(v.errs, fmt.Sprintf("Missing required parameter in %s: \"%s\"", v.name(name), r))
			}
		}
		var known []string
		for _, k := range o.Keys {
			found := false
			for _, m := range sh.Members {
				found = found || m.Name == k
			}
			if !found {
				var names []string
				for _, m := range sh.Members {
					names = append(names, m.Name)
				}
				v.errs = append(v.errs, fmt.Sprintf("Unknown parameter in %s: \"%s\", must be one of: %s", v.name(name), k, strings.Join(names, ", ")))
			} else {
				known = append(known, k)
			}
		}
		for _, k := range known {
			for _, m := range sh.Members {
				if m.Name == k {
					v.validate(o.M[k], v.svc.Shape(m.Shape), name+"."+k)
				}
			}
		}
	case "string":
		s, ok := val.(string)
		if !ok {
			v.invalidType(name, val, "<class 'str'>")
			return
		}
		v.rangeCheck(name, int64(len([]rune(s))), sh, true)
	case "list":
		l, ok := val.([]any)
		if !ok {
			v.invalidType(name, val, "<class 'list'>, <class 'tuple'>")
			return
		}
		v.rangeCheck(name, int64(len(l)), sh, true)
		for i, e := range l {
			v.validate(e, v.svc.Shape(sh.Member), fmt.Sprintf("%s[%d]", name, i))
		}
	case "map":
		o, ok := val.(*Object)
		if !ok {
			v.invalidType(name, val, "<class 'dict'>")
			return
		}
		for _, k := range o.Keys {
			v.validate(k, v.svc.Shape(sh.Key), fmt.Sprintf("%s (key: %s)", name, k))
			v.validate(o.M[k], v.svc.Shape(sh.Value), name+"."+k)
		}
	case "integer", "long":
		switch n := val.(type) {
		case int64:
			v.rangeCheck(name, n, sh, false)
		case bool:
			if n {
				v.rangeCheck(name, 1, sh, false)
			} else {
				v.rangeCheck(name, 0, sh, false)
			}
		default:
			v.invalidType(name, val, "<class 'int'>")
		}
	case "float", "double":
		switch val.(type) {
		case int64, float64, bool:
		default:
			v.invalidType(name, val, "<class 'float'>, <class 'decimal.Decimal'>, <class 'int'>")
		}
	case "boolean":
		if _, ok := val.(bool); !ok {
			v.invalidType(name, val, "<class 'bool'>")
		}
	case "blob":
		switch val.(type) {
		case []byte, string:
		default:
			v.invalidType(name, val, "<class 'bytes'>, <class 'bytearray'>, file-like object")
		}
	case "timestamp":
		if _, ok := toTime(val); !ok {
			v.invalidType(name, val, "<class 'datetime.datetime'>, timestamp-string")
		}
	}
}

// validateParams validates params against shape; the error is the aws
// CLI's "Parameter validation failed:" report.
func validateParams(svc *model.Service, params any, shapeName string) error {
	if shapeName == "" {
		return nil
	}
	v := &validation{svc: svc}
	v.validate(params, svc.Shape(shapeName), "")
	if len(v.errs) > 0 {
		return &paramError{"Parameter validation failed:\n" + strings.Join(v.errs, "\n")}
	}
	return nil
}

// toTime accepts what botocore's parse_to_aware_datetime does, for the
// common forms: epoch numbers (also as text) and ISO 8601 / RFC 3339.
func toTime(v any) (time.Time, bool) {
	switch t := v.(type) {
	case skeletonTime:
		return time.Unix(0, 0).UTC(), true
	case int64:
		return time.Unix(t, 0).UTC(), true
	case float64:
		return time.UnixMilli(int64(t * 1000)).UTC(), true
	case string:
		if f, err := strconv.ParseFloat(t, 64); err == nil {
			return time.UnixMilli(int64(f * 1000)).UTC(), true
		}
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02", time.RFC1123, time.RFC1123Z} {
			if tm, err := time.Parse(layout, t); err == nil {
				return tm, true
			}
		}
	}
	return time.Time{}, false
}

// serialize builds the awsJson request body value: blobs as base64,
// timestamps as epoch seconds, everything else as given.
func serialize(svc *model.Service, sh *model.Shape, v any) any {
	switch sh.Type {
	case "structure":
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		out := NewObject()
		for _, k := range o.Keys {
			if ms := svc.MemberShape(sh, k); ms != nil {
				out.Set(k, serialize(svc, ms, o.M[k]))
			}
		}
		return out
	case "list":
		if l, ok := v.([]any); ok {
			out := make([]any, len(l))
			for i := range l {
				out[i] = serialize(svc, svc.Shape(sh.Member), l[i])
			}
			return out
		}
	case "map":
		if o, ok := v.(*Object); ok {
			out := NewObject()
			for _, k := range o.Keys {
				out.Set(k, serialize(svc, svc.Shape(sh.Value), o.M[k]))
			}
			return out
		}
	case "blob":
		switch b := v.(type) {
		case []byte:
			return base64.StdEncoding.EncodeToString(b)
		case string:
			return base64.StdEncoding.EncodeToString([]byte(b))
		}
	case "timestamp":
		if t, ok := toTime(v); ok {
			return t.Unix()
		}
	}
	return v
}
