package cli

import (
	"regexp"
	"strings"
)

var (
	firstCap   = regexp.MustCompile(`(.)([A-Z][a-z]+)`)
	endCap     = regexp.MustCompile(`([a-z0-9])([A-Z])`)
	pluralAcro = regexp.MustCompile(`[A-Z]{2,}s$`)
)

// kebab is botocore's xform_name(name, '-'): the aws CLI's name for an
// operation or a member ("GenerateDataKeyPair" → "generate-data-key-pair").
func kebab(name string) string {
	if strings.Contains(name, "-") {
		return name
	}
	if m := pluralAcro.FindString(name); m != "" {
		name = name[:len(name)-len(m)] + "-" + strings.ToLower(m)
	}
	s := replaceAllOverlapping(firstCap, name, "${1}-${2}")
	s = strings.ToLower(replaceAllOverlapping(endCap, s, "${1}-${2}"))
	for old, nw := range map[string]string{"ipv-6": "ipv6", "s-3-resources": "s3-resources"} {
		s = strings.ReplaceAll(s, old, nw)
	}
	return s
}

// replaceAllOverlapping is re.sub: non-overlapping, left to right, which
// Go's ReplaceAllString also is.
func replaceAllOverlapping(re *regexp.Regexp, s, repl string) string {
	return re.ReplaceAllString(s, repl)
}
