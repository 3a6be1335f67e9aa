package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// serviceError is a modelled or unmodelled error answer of the service,
// printed as the aws CLI prints a ClientError; exit 254.
type serviceError struct {
	Code, Message, Op string
	Status            int
	Retries           int // > 0 when the retries ran out on it
}

func (e *serviceError) Error() string {
	info := ""
	if e.Retries > 0 {
		info = fmt.Sprintf(" (reached max retries: %d)", e.Retries)
	}
	return fmt.Sprintf("An error occurred (%s) when calling the %s operation%s: %s", e.Code, e.Op, info, e.Message)
}

// ErrorCode and HTTPStatusCode let the SDK's retryer classify the error
// (throttling codes, 5xx).
func (e *serviceError) ErrorCode() string   { return e.Code }
func (e *serviceError) HTTPStatusCode() int { return e.Status }

// endpointError is a failure to reach the endpoint; exit 255.
type endpointError struct {
	kind string // "Could not connect to", "Connect timeout on", "Read timeout on"
	url  string
	err  error
}

func (e *endpointError) Error() string {
	return fmt.Sprintf("%s the endpoint URL: \"%s\"", e.kind, e.url)
}
func (e *endpointError) Unwrap() error { return e.err }

// client sends awsJson requests for one service through the SDK's
// configuration, credentials, SigV4 signer and standard retryer.
type client struct {
	svc      *model.Service
	cfg      aws.Config
	endpoint string
	http     aws.HTTPClient
	signer   *v4.Signer
	retryer  aws.Retryer
	unsigned bool
	debug    io.Writer // nil unless --debug
}

// seconds is the aws CLI's int() of a timeout option; 0 means none.
func seconds(p *string, def time.Duration) (time.Duration, error) {
	if p == nil {
		return def, nil
	}
	n, err := pyInt(*p)
	if err != nil {
		return 0, &generalError{err.Error()}
	}
	return time.Duration(n) * time.Second, nil
}

// loadConfig loads the SDK configuration the way the aws CLI resolves its
// own: --profile over AWS_PROFILE, --region over AWS_REGION /
// AWS_DEFAULT_REGION over the profile, --ca-bundle over AWS_CA_BUNDLE over
// ca_bundle.
func loadConfig(ctx context.Context, g *globals) (aws.Config, error) {
	connect, err := seconds(g.connectTimeout, 60*time.Second)
	if err != nil {
		return aws.Config{}, err
	}
	read, err := seconds(g.readTimeout, 60*time.Second)
	if err != nil {
		return aws.Config{}, err
	}
	hc := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = connect }).
		WithTransportOptions(func(t *http.Transport) {
			t.ResponseHeaderTimeout = read
			t.Proxy = http.ProxyFromEnvironment
			if g.noVerifySSL {
				if t.TLSClientConfig == nil {
					t.TLSClientConfig = &tls.Config{}
				}
				t.TLSClientConfig.InsecureSkipVerify = true
			}
		})
	opts := []func(*config.LoadOptions) error{config.WithHTTPClient(hc)}
	if g.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(g.profile))
	}
	if g.region != "" {
		opts = append(opts, config.WithRegion(g.region))
	}
	if os.Getenv("AWS_DEFAULT_REGION") != "" && os.Getenv("AWS_REGION") == "" && g.region == "" {
		opts = append(opts, config.WithRegion(os.Getenv("AWS_DEFAULT_REGION")))
	}
	if g.caBundle != "" {
		pem, err := os.ReadFile(expandPath(g.caBundle))
		if err != nil {
			return aws.Config{}, &generalError{fmt.Sprintf("Could not find a suitable TLS CA certificate bundle, invalid path: %s", g.caBundle)}
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		var nf config.SharedConfigProfileNotExistError
		if errors.As(err, &nf) {
			return cfg, &generalError{fmt.Sprintf("The config profile (%s) could not be found", nf.Profile)}
		}
		return cfg, &configError{err.Error()}
	}
	return cfg, nil
}

// endpointFor resolves the endpoint: --endpoint-url, then the service's
// own AWS_ENDPOINT_URL_<ID>, AWS_ENDPOINT_URL, the profile's services
// section and endpoint_url, then the AWS default.
func endpointFor(ctx context.Context, cfg aws.Config, svc *model.Service, g *globals) string {
	if g.endpointURL != "" {
		return g.endpointURL
	}
	type svcEndpoint interface {
		GetServiceBaseEndpoint(context.Context, string) (string, bool, error)
	}
	for _, src := range cfg.ConfigSources {
		switch s := src.(type) {
		case config.EnvConfig:
			if v, ok, _ := s.GetServiceBaseEndpoint(ctx, svc.ServiceID); ok {
				return v
			}
			if s.BaseEndpoint != "" {
				return s.BaseEndpoint
			}
		case config.SharedConfig:
			if v, ok, _ := s.GetServiceBaseEndpoint(ctx, svc.ServiceID); ok {
				return v
			}
			if s.BaseEndpoint != "" {
				return s.BaseEndpoint
			}
		case svcEndpoint:
			_ = s
		}
	}
	if cfg.BaseEndpoint != nil && *cfg.BaseEndpoint != "" {
		return *cfg.BaseEndpoint
	}
	suffix := "amazonaws.com"
	if strings.HasPrefix(cfg.Region, "cn-") {
		suffix = "amazonaws.com.cn"
	}
	return fmt.Sprintf("https://%s.%s.%s", svc.EndpointPrefix, cfg.Region, suffix)
}

// requestURL is the URL botocore sends an awsJson request to: the
// endpoint with path "/" when it has none.
func requestURL(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil || u.Path != "" {
		return endpoint
	}
	return strings.TrimRight(endpoint, "/") + "/"
}

func newClient(ctx context.Context, svc *model.Service, cfg aws.Config, g *globals, debug io.Writer) (*client, error) {
	if cfg.Region == "" {
		return nil, &configError{"You must specify a region. You can also configure your region by running \"aws configure\"."}
	}
	ep := endpointFor(ctx, cfg, svc, g)
	if u, err := url.Parse(ep); err != nil || u.Scheme == "" || u.Host == "" {
		return nil, &generalError{fmt.Sprintf("Invalid endpoint: %s", ep)}
	}
	var r aws.Retryer
	if cfg.Retryer != nil {
		r = cfg.Retryer()
	} else {
		r = retry.NewStandard(func(o *retry.StandardOptions) {
			if cfg.RetryMaxAttempts > 0 {
				o.MaxAttempts = cfg.RetryMaxAttempts
			}
		})
	}
	return &client{svc: svc, cfg: cfg, endpoint: ep, http: cfg.HTTPClient, signer: v4.NewSigner(), retryer: r, unsigned: g.noSignRequest, debug: debug}, nil
}

// call sends one operation with params (already validated) and returns
// the response parsed by the output shape.
func (c *client) call(ctx context.Context, op *model.Operation, params *Object) (any, error) {
	var in any = NewObject()
	if op.Input != "" && params != nil {
		in = serialize(c.svc, c.svc.Shape(op.Input), params)
	}
	var body strings.Builder
	pyJSON(&body, in, -1, false)
	payload := []byte(body.String())

	var creds aws.Credentials
	if !c.unsigned {
		if c.cfg.Credentials == nil {
			return nil, &configError{"Unable to locate credentials. You can configure credentials by running \"aws configure\"."}
		}
		var err error
		creds, err = c.cfg.Credentials.Retrieve(ctx)
		if err != nil || creds.AccessKeyID == "" {
			return nil, &configError{"Unable to locate credentials. You can configure credentials by running \"aws configure\"."}
		}
	}
	target := c.svc.TargetPrefix + "." + op.Name
	u := requestURL(c.endpoint)
	max := c.retryer.MaxAttempts()
	for attempt := 1; ; attempt++ {
		raw, err := c.send(ctx, u, target, payload, creds, op)
		if err == nil {
			return c.parseOutput(op, raw)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if attempt >= max || !c.retryer.IsErrorRetryable(err) {
			var se *serviceError
			if attempt > 1 && attempt >= max && errors.As(err, &se) {
				se.Retries = attempt - 1
			}
			return nil, err
		}
		if _, terr := c.retryer.GetRetryToken(ctx, err); terr != nil {
			return nil, err
		}
		delay, derr := c.retryer.RetryDelay(attempt, err)
		if derr != nil {
			return nil, err
		}
		c.debugf("Retry needed, retrying request after delay of: %v\n", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *client) debugf(format string, a ...any) {
	if c.debug != nil {
		fmt.Fprintf(c.debug, time.Now().UTC().Format("2006-01-02 15:04:05,000")+" - MainThread - kmsctl - DEBUG - "+format, a...)
	}
}

// send makes one signed attempt.
func (c *client) send(ctx context.Context, u, target string, payload []byte, creds aws.Credentials, op *model.Operation) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return nil, &generalError{err.Error()}
	}
	req.Header.Set("Content-Type", "application/x-amz-json-"+c.svc.JSONVersion)
	req.Header.Set("X-Amz-Target", target)
	req.Header.Set("User-Agent", "kmsctl/"+Version+" "+"aws-sdk-go-v2")
	req.ContentLength = int64(len(payload))
	if !c.unsigned {
		sum := sha256.Sum256(payload)
		if err := c.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), c.svc.SigningName, c.cfg.Region, time.Now().UTC()); err != nil {
			return nil, &generalError{err.Error()}
		}
	}
	if c.debug != nil {
		c.debugf("Making request for OperationModel(name=%s) with params: %s\n", op.Name, redactBody(c.svc, op.Input, payload))
		c.debugf("Sending http request: <AWSPreparedRequest stream_output=False, method=POST, url=%s, headers=%s>\n", u, redactHeaders(req.Header))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne net.Error
		kind := "Could not connect to"
		if errors.As(err, &ne) && ne.Timeout() {
			kind = "Read timeout on"
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op == "dial" {
				kind = "Connect timeout on"
			}
		}
		c.debugf("Exception received when sending HTTP request: %v\n", err)
		return nil, &endpointError{kind: kind, url: u, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &endpointError{kind: "Read timeout on", url: u, err: err}
	}
	if c.debug != nil {
		c.debugf("Response headers: %s\n", redactHeaders(resp.Header))
		c.debugf("Response body:\n%s\n", redactBody(c.svc, op.Output, data))
	}
	if resp.StatusCode >= 300 {
		return nil, parseError(op.Name, resp.StatusCode, data)
	}
	return data, nil
}

// parseError is botocore's BaseJSONParser._do_error_parse.
func parseError(opName string, status int, body []byte) error {
	e := &serviceError{Op: opName, Status: status, Code: fmt.Sprint(status)}
	var msg, code any
	if len(bytes.TrimSpace(body)) > 0 {
		v, err := decodeJSON(body)
		if o, ok := v.(*Object); ok && err == nil {
			if m, ok := o.Get("message"); ok {
				msg = m
			} else if m, ok := o.Get("Message"); ok {
				msg = m
			}
			code, _ = o.Get("__type")
		} else {
			msg = string(body)
		}
	}
	if s, ok := msg.(string); ok {
		e.Message = s
	} else if msg != nil {
		e.Message = pyRepr(msg)
	}
	if s, ok := code.(string); ok {
		if i := strings.LastIndex(s, "#"); i >= 0 {
			s = s[i+1:]
		}
		e.Code = s
	}
	return e
}

// parseOutput is botocore's JSON response parser: members in model order,
// nulls and unknown members dropped, timestamps as ISO 8601 in the local
// zone, blobs left as their base64 text.
func (c *client) parseOutput(op *model.Operation, data []byte) (any, error) {
	if op.Output == "" || len(bytes.TrimSpace(data)) == 0 {
		return NewObject(), nil
	}
	v, err := decodeJSON(data)
	if err != nil {
		return nil, &generalError{fmt.Sprintf("Unable to parse response (%v), invalid JSON received:\n%s", err, data)}
	}
	out := parseShape(c.svc, c.svc.Shape(op.Output), v)
	if out == nil {
		return NewObject(), nil
	}
	return out, nil
}

func parseShape(svc *model.Service, sh *model.Shape, v any) any {
	if v == nil {
		return nil
	}
	switch sh.Type {
	case "structure":
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		out := NewObject()
		for _, m := range sh.Members {
			if mv, ok := o.Get(m.Name); ok && mv != nil {
				out.Set(m.Name, parseShape(svc, svc.Shape(m.Shape), mv))
			}
		}
		return out
	case "list":
		l, ok := v.([]any)
		if !ok {
			return v
		}
		out := make([]any, len(l))
		for i := range l {
			out[i] = parseShape(svc, svc.Shape(sh.Member), l[i])
		}
		return out
	case "map":
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		out := NewObject()
		for _, k := range o.Keys {
			out.Set(k, parseShape(svc, svc.Shape(sh.Value), o.M[k]))
		}
		return out
	case "timestamp":
		return isoTimestamp(v)
	}
	return v
}

// isoTimestamp is the aws CLI's iso_format(parse_timestamp(value)):
// datetime.fromtimestamp(value, tzlocal()).isoformat().
func isoTimestamp(v any) any {
	var t time.Time
	switch n := v.(type) {
	case int64:
		t = time.Unix(n, 0)
	case float64:
		sec := float64(int64(n))
		frac := n - sec
		us := roundHalfEven(frac * 1e6)
		t = time.Unix(int64(sec), 0).Add(time.Duration(us) * time.Microsecond)
	case string:
		tt, ok := toTime(n)
		if !ok {
			return v
		}
		t = tt
	default:
		return v
	}
	t = t.In(time.Local)
	s := t.Format("2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		s += fmt.Sprintf(".%06d", us)
	}
	_, off := t.Zone()
	sign := "+"
	if off < 0 {
		sign = "-"
		off = -off
	}
	s += fmt.Sprintf("%s%02d:%02d", sign, off/3600, off%3600/60)
	if off%60 != 0 {
		s += fmt.Sprintf(":%02d", off%60)
	}
	return s
}

func roundHalfEven(f float64) int64 {
	r := int64(f)
	diff := f - float64(r)
	switch {
	case diff > 0.5:
		r++
	case diff == 0.5 && r%2 != 0:
		r++
	case diff < -0.5:
		r--
	case diff == -0.5 && r%2 != 0:
		r--
	}
	return r
}

// redactHeaders renders headers with the signature and tokens hidden.
func redactHeaders(h http.Header) string {
	var parts []string
	for k, vs := range h {
		v := strings.Join(vs, ",")
		switch strings.ToLower(k) {
		case "authorization":
			if i := strings.Index(v, "Signature="); i >= 0 {
				v = v[:i] + "Signature=REDACTED"
			}
		case "x-amz-security-token":
			v = "REDACTED"
		}
		parts = append(parts, fmt.Sprintf("'%s': b'%s'", k, v))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// redactBody renders a JSON body with the model's sensitive members
// (plaintexts, passwords) replaced.
func redactBody(svc *model.Service, shapeName string, body []byte) string {
	v, err := decodeJSON(body)
	if err != nil || shapeName == "" {
		return string(body)
	}
	var b strings.Builder
	pyJSON(&b, redact(svc, svc.Shape(shapeName), v), -1, false)
	return b.String()
}

func redact(svc *model.Service, sh *model.Shape, v any) any {
	if sh.Sensitive {
		return "*** sensitive data redacted ***"
	}
	switch sh.Type {
	case "structure":
		if o, ok := v.(*Object); ok {
			out := NewObject()
			for _, k := range o.Keys {
				if ms := svc.MemberShape(sh, k); ms != nil {
					out.Set(k, redact(svc, ms, o.M[k]))
				} else {
					out.Set(k, o.M[k])
				}
			}
			return out
		}
	case "list":
		if l, ok := v.([]any); ok {
			out := make([]any, len(l))
			for i := range l {
				out[i] = redact(svc, svc.Shape(sh.Member), l[i])
			}
			return out
		}
	case "map":
		if o, ok := v.(*Object); ok {
			out := NewObject()
			for _, k := range o.Keys {
				out.Set(k, redact(svc, svc.Shape(sh.Value), o.M[k]))
			}
			return out
		}
	}
	return v
}
