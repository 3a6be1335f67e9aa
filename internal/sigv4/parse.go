package sigv4

import "strings"

// Credential is the Credential parameter of a SigV4 signature:
// "AccessKeyID/Date/Region/Service/Terminator".
type Credential struct {
	AccessKeyID string
	Date        string // YYYYMMDD, the day of the signing key
	Region      string
	Service     string
	Terminator  string // "aws4_request" in every valid signature
}

// Scope returns the credential scope "Date/Region/Service/Terminator".
func (c Credential) Scope() string {
	return c.Date + "/" + c.Region + "/" + c.Service + "/" + c.Terminator
}

// Authorization is a parsed Authorization header.
type Authorization struct {
	Algorithm string
	Credential
	SignedHeaders []string // as listed, normally lowercase and sorted
	Signature     string   // hex, as sent
}

// ParseAuthorization parses an Authorization header of the form
//
//	AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=hex
//
// Malformed headers fail with an *Error whose Code is
// IncompleteSignatureException and whose Message is AWS's. It checks form
// only: the scope's date, service and terminator are checked by Verify.
func ParseAuthorization(h string) (*Authorization, error) {
	var p authz
	if err := p.parse(h); err != nil {
		return nil, err
	}
	if p.missing != 0 {
		return nil, missingParams(p.missing, h)
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	return &Authorization{
		Algorithm:     p.algorithm,
		Credential:    p.cred,
		SignedHeaders: strings.Split(p.signedHeaders, ";"),
		Signature:     p.signature,
	}, nil
}

// Bits of authz.missing: required parameters absent from the header, in
// the order AWS names them.
const (
	missingCredential = 1 << iota
	missingSignature
	missingSignedHeaders
	missingDate
)

// authz is the parsed form of a signature, from the Authorization header or
// from presigned query parameters. Its strings are substrings of the input,
// so parsing allocates nothing.
type authz struct {
	algorithm     string
	credential    string // raw Credential value
	scope         string // credential without "AccessKeyID/"
	cred          Credential
	signedHeaders string // raw "a;b;c"
	signature     string
	missing       int // missing* bits
}

// parse splits an Authorization header into its parameters. Like AWS it
// separates the algorithm at the first space and parameters at commas and
// whitespace, so a stray space inside a value surfaces as a token without
// an equal sign.
func (p *authz) parse(h string) error {
	alg, rest, _ := strings.Cut(h, " ")
	p.algorithm = alg
	p.missing = missingCredential | missingSignature | missingSignedHeaders
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] != ',' && rest[i] != ' ' && rest[i] != '\t' {
			i++
		}
		tok := rest[:i]
		if i < len(rest) {
			i++
		}
		rest = rest[i:]
		if tok == "" {
			continue
		}
		k, val, ok := strings.Cut(tok, "=")
		if !ok {
			return incomplete("'" + tok + "' not a valid key=value pair (missing equal-sign) in Authorization header: '" + h + "'.")
		}
		switch k {
		case "Credential":
			p.credential = val
			p.missing &^= missingCredential
		case "SignedHeaders":
			p.signedHeaders = val
			p.missing &^= missingSignedHeaders
		case "Signature":
			p.signature = val
			p.missing &^= missingSignature
		}
	}
	return nil
}

// check validates the algorithm and splits the credential, once every
// required parameter is known to be present.
func (p *authz) check() error {
	if p.algorithm != Algorithm {
		return incomplete("Unsupported AWS 'algorithm': '" + p.algorithm + "'.")
	}
	return p.splitCredential()
}

// splitCredential fills p.cred and p.scope from p.credential.
func (p *authz) splitCredential() error {
	c := p.credential
	var parts [5]string
	n := 0
	for n < 4 {
		i := strings.IndexByte(c, '/')
		if i < 0 {
			break
		}
		parts[n], c = c[:i], c[i+1:]
		n++
	}
	if n != 4 || strings.IndexByte(c, '/') >= 0 {
		return incomplete("Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '" + p.credential + "'")
	}
	parts[4] = c
	p.cred = Credential{AccessKeyID: parts[0], Date: parts[1], Region: parts[2], Service: parts[3], Terminator: parts[4]}
	p.scope = p.credential[len(parts[0])+1:]
	return nil
}

// missingParams is AWS's message for an Authorization header lacking
// required parameters (or a request lacking a date): one sentence per
// missing item, then the header as received.
func missingParams(missing int, h string) *Error {
	var b strings.Builder
	if missing&missingCredential != 0 {
		b.WriteString("Authorization header requires 'Credential' parameter. ")
	}
	if missing&missingSignature != 0 {
		b.WriteString("Authorization header requires 'Signature' parameter. ")
	}
	if missing&missingSignedHeaders != 0 {
		b.WriteString("Authorization header requires 'SignedHeaders' parameter. ")
	}
	if missing&missingDate != 0 {
		b.WriteString("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ")
	}
	b.WriteString("Authorization=")
	b.WriteString(h)
	return incomplete(b.String())
}

// listed reports whether the ';'-separated list of signed headers names the
// header name, in any ASCII case.
func listed(signed, name string) bool {
	for signed != "" {
		var n string
		n, signed, _ = strings.Cut(signed, ";")
		if len(n) == len(name) && equalFoldASCII(n, name) {
			return true
		}
	}
	return false
}

// equalFoldASCII reports whether a and b, of equal length, are equal but
// for the case of ASCII letters. Header names are ASCII.
func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
