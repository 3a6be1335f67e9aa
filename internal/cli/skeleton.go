package cli

import (
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// skeletonTime is the placeholder botocore's ArgumentGenerator puts in a
// timestamp: datetime(1970, 1, 1), which prints naive.
type skeletonTime struct{}

// skeleton is botocore's ArgumentGenerator: placeholders for every member
// in model order; with memberNames, strings are their member's name (the
// fake response of --generate-cli-skeleton output).
func skeleton(svc *model.Service, sh *model.Shape, memberNames bool) any {
	return genSkeleton(svc, sh, nil, "", memberNames)
}

func genSkeleton(svc *model.Service, sh *model.Shape, stack []string, name string, memberNames bool) any {
	stack = append(stack, sh.Name)
	switch sh.Type {
	case "structure":
		o := NewObject()
		n := 0
		for _, s := range stack {
			if s == sh.Name {
				n++
			}
		}
		if n > 1 {
			return o
		}
		for _, m := range sh.Members {
			o.Set(m.Name, genSkeleton(svc, svc.Shape(m.Shape), stack, m.Name, memberNames))
		}
		return o
	case "list":
		n := ""
		if memberNames {
			n = sh.Member
		}
		return []any{genSkeleton(svc, svc.Shape(sh.Member), stack, n, memberNames)}
	case "map":
		o := NewObject()
		o.Set("KeyName", genSkeleton(svc, svc.Shape(sh.Value), stack, "", memberNames))
		return o
	case "string":
		if memberNames {
			return name
		}
		if len(sh.Enum) > 0 {
			return sh.Enum[0]
		}
		return ""
	case "integer", "long":
		return int64(0)
	case "float", "double":
		return float64(0)
	case "boolean":
		return true
	case "timestamp":
		return skeletonTime{}
	}
	return nil // blob
}

// skeletonJSON prints an input skeleton as json.dump(indent=4) does
// (ASCII escapes on).
func skeletonJSON(v any) string {
	var b strings.Builder
	pyJSON(&b, fixTimes(v), 4, true)
	b.WriteByte('\n')
	return b.String()
}

// fixTimes replaces skeleton timestamps with their printed form.
func fixTimes(v any) any {
	switch t := v.(type) {
	case skeletonTime:
		return "1970-01-01T00:00:00"
	case *Object:
		for _, k := range t.Keys {
			t.M[k] = fixTimes(t.M[k])
		}
	case []any:
		for i := range t {
			t[i] = fixTimes(t[i])
		}
	}
	return v
}

// skeletonYAML prints the yaml-input skeleton: the aws CLI's layout with
// its [REQUIRED] and "Valid values are" comments; the member
// documentation the aws CLI adds is not part of kmsctl's tables.
func skeletonYAML(svc *model.Service, sh *model.Shape) string {
	var b strings.Builder
	yamlSkel(&b, svc, sh, 0, nil, false)
	if b.Len() == 0 {
		return "{}\n"
	}
	return b.String()
}

func yamlSkelComment(svc *model.Service, m model.Member) string {
	var parts []string
	if m.Required {
		parts = append(parts, "[REQUIRED]")
	}
	if sh := svc.Shape(m.Shape); len(sh.Enum) > 0 {
		parts = append(parts, "Valid values are: "+strings.Join(sh.Enum, ", ")+".")
	}
	if len(parts) == 0 {
		return ""
	}
	return " # " + strings.Join(parts, " ")
}

func yamlSkel(b *strings.Builder, svc *model.Service, sh *model.Shape, indent int, stack []string, inSeq bool) {
	stack = append(stack, sh.Name)
	n := 0
	for _, s := range stack {
		if s == sh.Name {
			n++
		}
	}
	if n > 2 {
		return
	}
	pad := strings.Repeat(" ", indent)
	for i, m := range sh.Members {
		p := pad
		if inSeq && i == 0 {
			p = ""
		}
		ms := svc.Shape(m.Shape)
		c := yamlSkelComment(svc, m)
		switch ms.Type {
		case "structure":
			b.WriteString(p + m.Name + ":" + c + "\n")
			yamlSkel(b, svc, ms, indent+2, stack, false)
		case "list":
			b.WriteString(p + m.Name + ":" + c + "\n")
			el := svc.Shape(ms.Member)
			if el.Type == "structure" {
				b.WriteString(pad + "- ")
				yamlSkel(b, svc, el, indent+2, stack, true)
			} else {
				b.WriteString(pad + "- " + yamlLeaf(el) + "\n")
			}
		case "map":
			b.WriteString(p + m.Name + ":" + c + "\n")
			b.WriteString(pad + "  KeyName: " + yamlLeaf(svc.Shape(ms.Value)) + "\n")
		default:
			b.WriteString(p + m.Name + ": " + yamlLeaf(ms) + c + "\n")
		}
	}
}

func yamlLeaf(sh *model.Shape) string {
	switch sh.Type {
	case "string":
		if len(sh.Enum) > 0 {
			return yamlScalar(sh.Enum[0])
		}
		return "''"
	case "integer", "long":
		return "0"
	case "float", "double":
		return "0.0"
	case "boolean":
		return "true"
	case "timestamp":
		return "1970-01-01 00:00:00"
	case "blob":
		return "!!binary |"
	}
	return "{}"
}
