package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// client sends signed KMS requests to one endpoint, or spreads them over
// several (worker i uses endpoint i mod n).
type client struct {
	urls   []*url.URL
	http   *http.Client
	creds  credentials
	signer string
	keys   dayKeys
}

// newClient is a client of endpoints, one URL or several separated by
// commas.
func newClient(endpoints string, creds credentials, signerKind string, conns int) (*client, error) {
	var urls []*url.URL
	for _, endpoint := range strings.Split(endpoints, ",") {
		u, err := url.Parse(strings.TrimSpace(endpoint))
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("endpoint %q: want http://host:port", endpoint)
		}
		u.Path = "/"
		urls = append(urls, u)
	}
	if _, err := newSigner(signerKind, creds, nil); err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               nil, // never a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: 2 * conns,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		WriteBufferSize:     8 << 10,
		ReadBufferSize:      8 << 10,
	}
	return &client{
		urls:   urls,
		http:   &http.Client{Transport: tr, Timeout: 30 * time.Second},
		creds:  creds,
		signer: signerKind,
	}, nil
}

// worker is one goroutine's sending state.
type worker struct {
	c    *client
	url  *url.URL // the endpoint it sends to
	s    signer
	resp []byte
}

// worker is a worker on the first endpoint.
func (c *client) worker() *worker { return c.workerOn(0) }

// workerOn is worker i of a run, on endpoint i mod n: a run's workers are
// spread evenly over the endpoints.
func (c *client) workerOn(i int) *worker {
	s, _ := newSigner(c.signer, c.creds, &c.keys) // kind checked in newClient
	return &worker{c: c, url: c.urls[i%len(c.urls)], s: s, resp: make([]byte, 0, 4096)}
}

// call sends one request for target ("TrentService.Encrypt") and returns the
// status and response body, which is valid until the next call.
func (w *worker) call(ctx context.Context, target string, body []byte) (int, []byte, error) {
	r := (&http.Request{
		Method:        http.MethodPost,
		URL:           w.url,
		Host:          w.url.Host,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		ContentLength: int64(len(body)),
		Body:          io.NopCloser(bytes.NewReader(body)),
		Header: http.Header{
			"Content-Type": {"application/x-amz-json-1.1"},
			"X-Amz-Target": {target},
		},
	}).WithContext(ctx)
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	if err := w.s.sign(r, body, time.Now()); err != nil {
		return 0, nil, err
	}
	resp, err := w.c.http.Do(r)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	buf := bytes.NewBuffer(w.resp[:0])
	_, err = buf.ReadFrom(resp.Body)
	w.resp = buf.Bytes()
	return resp.StatusCode, w.resp, err
}

// callJSON sends in as the JSON body and decodes a 2xx answer into out.
func (w *worker) callJSON(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	status, resp, err := w.call(ctx, "TrentService."+op, body)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if status/100 != 2 {
		return fmt.Errorf("%s: HTTP %d: %s", op, status, resp)
	}
	return json.Unmarshal(resp, out)
}

// encryptionContext is the small context bound to every Encrypt,
// GenerateDataKey and Decrypt.
var encryptionContext = map[string]string{"purpose": "kmsbench", "tenant": "t-0001"}

// workload holds the fixed request bodies of each benchmarked operation,
// made once at setup so the measured loop only signs and sends.
type workload struct {
	keyID  string
	bodies map[string][]byte // op name -> JSON body
	// keys, when not empty (-key-ids), are the keys the ops of randomOps
	// name instead of keyID: each request one picked at random.
	keys []string
}

// randomOps are the operations that take a random key of -key-ids: those
// whose body names nothing bound to one key but its id.
var randomOps = map[string]bool{"Encrypt": true, "GenerateDataKey": true, "DescribeKey": true}

// payload is what one op sends: body as it is, or, when keys is not
// empty, body with its KeyId replaced by a random one of keys for each
// request (pre + key + post).
type payload struct {
	body      []byte
	pre, post []byte
	keys      []string
}

// payload is op's request body (see payload).
func (wl *workload) payload(op string) (*payload, error) {
	p := &payload{body: wl.bodies[op]}
	if len(wl.keys) == 0 || !randomOps[op] {
		return p, nil
	}
	field, err := json.Marshal(wl.keyID)
	if err != nil {
		return nil, err
	}
	field = append([]byte(`"KeyId":`), field...)
	i := bytes.Index(p.body, field)
	if i < 0 {
		return nil, fmt.Errorf("%s: no %s in its body", op, field)
	}
	p.pre = p.body[:i+len(`"KeyId":"`)]
	p.post = p.body[i+len(field)-1:]
	p.keys = wl.keys
	return p, nil
}

// next is the body of the next request, in buf when it is made per request.
func (p *payload) next(buf *[]byte) []byte {
	if len(p.keys) == 0 {
		return p.body
	}
	b := append((*buf)[:0], p.pre...)
	b = append(b, p.keys[mrand.IntN(len(p.keys))]...)
	*buf = append(b, p.post...)
	return *buf
}

// operation is one benchmarked request: its -ops flag name, the name it
// is reported under and the KMS operation it calls.
type operation struct{ flag, name, target string }

// operations are the benchmarked operations, in the order they run.
var operations = []operation{
	{"encrypt", "Encrypt", "Encrypt"},
	{"decrypt", "Decrypt", "Decrypt"},
	{"generatedatakey", "GenerateDataKey", "GenerateDataKey"},
	{"createkey", "CreateKey", "CreateKey"},
	{"describekey", "DescribeKey", "DescribeKey"},
	{"sign-ecc", "Sign-ECC", "Sign"},                // ECC_NIST_P256, ECDSA_SHA_256
	{"sign-rsa", "Sign-RSA", "Sign"},                // RSA_2048, RSASSA_PSS_SHA_256
	{"verify-ecc", "Verify-ECC", "Verify"},          // ECC_NIST_P256, ECDSA_SHA_256
	{"generatemac", "GenerateMac", "GenerateMac"},   // HMAC_256, HMAC_SHA_256
	{"gdkp-rsa", "GDKP-RSA", "GenerateDataKeyPair"}, // RSA_2048 under the symmetric key
	{"gdkp-ecc", "GDKP-ECC", "GenerateDataKeyPair"}, // ECC_NIST_P256 under the symmetric key
}

// opTarget is the KMS operation behind the reported name.
func opTarget(name string) string {
	for _, op := range operations {
		if op.name == name {
			return op.target
		}
	}
	return name
}

// benchMessage is the message signed and MACed: 64 bytes, RAW, like the
// primitive benchmarks of internal/material.
var benchMessage = func() string {
	m := make([]byte, 64)
	for i := range m {
		m[i] = byte(i)
	}
	return base64.StdEncoding.EncodeToString(m)
}()

// setup creates the key every operation uses (unless keyID names an
// existing one, e.g. a key in a custom key store) and a ciphertext for
// Decrypt, then the asymmetric and HMAC keys that the operations in ops
// need, so a run of the symmetric operations creates nothing more.
func setup(ctx context.Context, c *client, keyID string, ops []string) (*workload, error) {
	w := c.worker()
	id := keyID
	if id == "" {
		var ck struct{ KeyMetadata struct{ KeyId string } }
		ckBody, err := createKeyBody()
		if err != nil {
			return nil, err
		}
		if err := w.callJSON(ctx, "CreateKey", ckBody, &ck); err != nil {
			return nil, err
		}
		id = ck.KeyMetadata.KeyId
	}
	plaintext := make([]byte, 64)
	for i := range plaintext {
		plaintext[i] = byte(i)
	}
	pt := base64.StdEncoding.EncodeToString(plaintext)
	var enc struct{ CiphertextBlob string }
	if err := w.callJSON(ctx, "Encrypt", map[string]any{"KeyId": id, "Plaintext": pt, "EncryptionContext": encryptionContext}, &enc); err != nil {
		return nil, err
	}
	mustJSON := func(v any) []byte { b, _ := json.Marshal(v); return b }
	wl := &workload{keyID: id, bodies: map[string][]byte{
		"Encrypt":         mustJSON(map[string]any{"KeyId": id, "Plaintext": pt, "EncryptionContext": encryptionContext}),
		"Decrypt":         mustJSON(map[string]any{"KeyId": id, "CiphertextBlob": enc.CiphertextBlob, "EncryptionContext": encryptionContext}),
		"GenerateDataKey": mustJSON(map[string]any{"KeyId": id, "KeySpec": "AES_256", "EncryptionContext": encryptionContext}),
		"CreateKey":       mustJSON(map[string]string{"Description": "kmsbench"}),
		"DescribeKey":     mustJSON(map[string]string{"KeyId": id}),
		"GDKP-RSA":        mustJSON(map[string]any{"KeyId": id, "KeyPairSpec": "RSA_2048", "EncryptionContext": encryptionContext}),
		"GDKP-ECC":        mustJSON(map[string]any{"KeyId": id, "KeyPairSpec": "ECC_NIST_P256", "EncryptionContext": encryptionContext}),
	}}
	created := map[string]string{} // KeySpec -> key id
	key := func(spec, usage string) (string, error) {
		if id, ok := created[spec]; ok {
			return id, nil
		}
		var ck struct{ KeyMetadata struct{ KeyId string } }
		if err := w.callJSON(ctx, "CreateKey", map[string]string{"Description": "kmsbench " + spec, "KeySpec": spec, "KeyUsage": usage}, &ck); err != nil {
			return "", err
		}
		created[spec] = ck.KeyMetadata.KeyId
		return ck.KeyMetadata.KeyId, nil
	}
	signBody := func(spec, alg string) (map[string]any, error) {
		id, err := key(spec, "SIGN_VERIFY")
		return map[string]any{"KeyId": id, "Message": benchMessage, "MessageType": "RAW", "SigningAlgorithm": alg}, err
	}
	for _, op := range ops {
		switch op {
		case "Sign-ECC", "Sign-RSA":
			spec, alg := "ECC_NIST_P256", "ECDSA_SHA_256"
			if op == "Sign-RSA" {
				spec, alg = "RSA_2048", "RSASSA_PSS_SHA_256"
			}
			b, err := signBody(spec, alg)
			if err != nil {
				return nil, err
			}
			wl.bodies[op] = mustJSON(b)
		case "Verify-ECC":
			b, err := signBody("ECC_NIST_P256", "ECDSA_SHA_256")
			if err != nil {
				return nil, err
			}
			var sig struct{ Signature string }
			if err := w.callJSON(ctx, "Sign", b, &sig); err != nil {
				return nil, err
			}
			b["Signature"] = sig.Signature
			wl.bodies[op] = mustJSON(b)
		case "GenerateMac":
			id, err := key("HMAC_256", "GENERATE_VERIFY_MAC")
			if err != nil {
				return nil, err
			}
			wl.bodies[op] = mustJSON(map[string]any{"KeyId": id, "Message": benchMessage, "MacAlgorithm": "HMAC_SHA_256"})
		}
	}
	return wl, nil
}

// result is one op at one concurrency.
type result struct {
	Op          string  `json:"op"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	Requests    int64   `json:"requests"`
	Errors      int64   `json:"errors"`
	// ErrorTypes counts the failed requests by the __type of kmsd's answer
	// (e.g. ThrottlingException), "HTTP <status>" when it has none, or
	// "transport" when there was no answer.
	ErrorTypes map[string]int64 `json:"error_types,omitempty"`
	// WarmupRequests is how many requests the unmeasured warm-up sent.
	WarmupRequests int64   `json:"warmup_requests"`
	OpsPerSec      float64 `json:"ops_per_sec"`
	P50us          float64 `json:"p50_us"`
	P99us          float64 `json:"p99_us"`
	// ServerCPUus is server CPU (user+system) per successful or failed
	// request, in µs; -1 when the server's pid is unknown.
	ServerCPUus float64 `json:"server_cpu_us_per_req"`
	// ServerSysUs is the system (kernel) part of ServerCPUus; -1 when the
	// server's pid is unknown. Over loopback it includes waking the
	// generator (see the package doc), which grows as the generator idles
	// more, so ops of different speeds are compared by the user part.
	ServerSysUs float64 `json:"server_sys_us_per_req"`
	// ServerCPUPct and GenCPUPct are the CPU each side used during the run,
	// in % of one core.
	ServerCPUPct float64 `json:"server_cpu_pct"`
	GenCPUPct    float64 `json:"generator_cpu_pct"`
	// OtherCPUPct is what the rest of the machine used meanwhile (% of
	// one core; the machine has NumCPU): more than a few % means the
	// numbers are disturbed. Only meaningful when the server is local.
	OtherCPUPct float64 `json:"other_cpu_pct"`
	// ServerTicks is the raw measurement behind ServerCPUus, whose
	// resolution is one tick (1/CLK_TCK s).
	ServerTicks uint64 `json:"server_cpu_ticks"`
	// Attempts is how many times the run was made (see -retries).
	Attempts int `json:"attempts"`
}

// runConfig bounds one measured run.
type runConfig struct {
	warmup, duration time.Duration
	maxRequests      int64
	serverPID        int // 0: unknown
	clkTck           int
	maxErrorBodies   int
	// rate, when > 0, makes the run open-loop: requests start at this
	// many a second whatever the answers take, and latency counts from
	// when a request was due (see paced).
	rate float64
}

// run drives op at concurrency conc: a warm-up whose results are dropped,
// then the measured phase, bounded by duration and maxRequests.
func run(ctx context.Context, c *client, wl *workload, op string, conc int, rc runConfig) (result, error) {
	target := "TrentService." + opTarget(op)
	body, err := wl.payload(op)
	if err != nil {
		return result{}, err
	}
	workers := make([]*worker, conc)
	for i := range workers {
		workers[i] = c.workerOn(i)
	}
	var printed atomic.Int64
	drive := phase
	if rc.rate > 0 {
		drive = func(ctx context.Context, workers []*worker, target string, body *payload, d time.Duration, max int64, lat [][]time.Duration, tl *tally, printed *atomic.Int64, maxPrinted int) int64 {
			return paced(ctx, workers, target, body, d, rc.rate, max, lat, tl, printed, maxPrinted)
		}
	}
	var warm tally
	if rc.warmup > 0 {
		drive(ctx, workers, target, body, rc.warmup, rc.maxRequests, nil, &warm, &printed, rc.maxErrorBodies)
	}
	if err := ctx.Err(); err != nil {
		return result{}, err
	}

	var srv0, srv1 procTimes
	if rc.serverPID > 0 {
		if srv0, err = readProcTimes(rc.serverPID); err != nil {
			return result{}, fmt.Errorf("server cpu: %w", err)
		}
	}
	sys0, sysErr := readSystemBusy()
	gen0 := selfCPU()
	start := time.Now()
	lat := make([][]time.Duration, conc)
	var tl tally
	errs := drive(ctx, workers, target, body, rc.duration, rc.maxRequests, lat, &tl, &printed, rc.maxErrorBodies)
	wall := time.Since(start)
	gen := selfCPU() - gen0
	sys1, err := readSystemBusy()
	if sysErr == nil {
		sysErr = err
	}
	if rc.serverPID > 0 {
		if srv1, err = readProcTimes(rc.serverPID); err != nil {
			return result{}, fmt.Errorf("server cpu: %w", err)
		}
	}

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sortDurations(all)
	n := int64(len(all))
	res := result{
		Op: op, Concurrency: conc, Seconds: wall.Seconds(),
		Requests: n, Errors: errs, ErrorTypes: tl.types, WarmupRequests: warm.sent.Load(),
		OpsPerSec:   float64(n) / wall.Seconds(),
		P50us:       us(percentile(all, 50)),
		P99us:       us(percentile(all, 99)),
		GenCPUPct:   100 * gen.Seconds() / wall.Seconds(),
		ServerCPUus: -1,
		ServerSysUs: -1,
	}
	if rc.serverPID > 0 {
		res.setServerCPU(srv0, srv1, rc.clkTck, wall)
	}
	if sysErr == nil {
		busy := 100 * float64(sys1-sys0) / float64(rc.clkTck) / wall.Seconds()
		res.OtherCPUPct = max(0, busy-res.ServerCPUPct-res.GenCPUPct)
	}
	return res, nil
}

// setServerCPU fills r's server CPU fields from the server's times before
// and after its r.Requests requests, which took wall.
func (r *result) setServerCPU(before, after procTimes, clkTck int, wall time.Duration) {
	r.ServerTicks = after.total() - before.total()
	cpu := float64(r.ServerTicks) / float64(clkTck) // seconds
	r.ServerCPUPct = 100 * cpu / wall.Seconds()
	if r.Requests > 0 {
		r.ServerCPUus = cpu * 1e6 / float64(r.Requests)
		r.ServerSysUs = float64(after.stime-before.stime) / float64(clkTck) * 1e6 / float64(r.Requests)
	}
}

// tally counts failed requests by kind (see result.ErrorTypes) and all
// requests sent.
type tally struct {
	sent  atomic.Int64
	mu    sync.Mutex
	types map[string]int64
}

// fail records a failed request: err, or a non-2xx answer; it reports
// whether it was the first of its kind.
func (t *tally) fail(status int, resp []byte, err error) bool {
	kind := "transport"
	if err == nil {
		var e struct {
			Type string `json:"__type"`
		}
		kind = fmt.Sprintf("HTTP %d", status)
		if json.Unmarshal(resp, &e) == nil && e.Type != "" {
			kind = e.Type
			if i := strings.LastIndexByte(kind, '#'); i >= 0 { // a namespaced type
				kind = kind[i+1:]
			}
		}
	}
	t.mu.Lock()
	if t.types == nil {
		t.types = map[string]int64{}
	}
	t.types[kind]++
	first := t.types[kind] == 1
	t.mu.Unlock()
	return first
}

// phase runs the workers for d or until max requests in all, recording each
// request's latency in lat[i] for worker i when lat is not nil. Every
// request counts, failed ones too; it returns how many failed.
func phase(ctx context.Context, workers []*worker, target string, body *payload, d time.Duration, max int64, lat [][]time.Duration, tl *tally, printed *atomic.Int64, maxPrinted int) int64 {
	// Requests run under ctx, not under a context ending with the phase:
	// cancelling one in flight would close its connection, and the next
	// phase would then measure dials. The phase so ends when the last
	// request that started before the deadline has its answer.
	deadline := time.Now().Add(d)
	var issued, failed atomic.Int64
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l []time.Duration
			if lat != nil {
				l = make([]time.Duration, 0, 1<<14)
			}
			var buf []byte
			for time.Now().Before(deadline) && issued.Add(1) <= max {
				t0 := time.Now()
				tl.sent.Add(1)
				status, resp, err := w.call(ctx, target, body.next(&buf))
				el := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					break // the whole benchmark's time is up
				}
				if err != nil || status/100 != 2 {
					failed.Add(1)
					// The first failure of each kind is printed, and
					// maxPrinted more.
					if tl.fail(status, resp, err) || printed.Add(1) <= int64(maxPrinted) {
						if err != nil {
							fmt.Fprintf(os.Stderr, "kmsbench: %s: %v\n", target, err)
						} else {
							fmt.Fprintf(os.Stderr, "kmsbench: %s: HTTP %d: %s\n", target, status, resp)
						}
					}
				}
				if lat != nil {
					l = append(l, el)
				}
			}
			if lat != nil {
				lat[i] = l
			}
		}()
	}
	wg.Wait()
	return failed.Load()
}

// paced is phase in open loop: request i is due at start + i/rate, for d,
// and the first free worker sends it. A request's latency counts from
// when it was due, not from when a worker got to it, so a server that
// falls behind shows its queue in the percentiles instead of slowing the
// generator down (no coordinated omission). With too few workers for the
// rate, the queue builds up in kmsbench and shows the same way.
func paced(ctx context.Context, workers []*worker, target string, body *payload, d time.Duration, rate float64, max int64, lat [][]time.Duration, tl *tally, printed *atomic.Int64, maxPrinted int) int64 {
	n := min(max, int64(d.Seconds()*rate))
	due := make(chan time.Time, n)
	start := time.Now()
	go func() {
		defer close(due)
		for i := range n {
			at := start.Add(time.Duration(float64(i) * float64(time.Second) / rate))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			due <- at
		}
	}()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l []time.Duration
			var buf []byte
			for at := range due {
				tl.sent.Add(1)
				status, resp, err := w.call(ctx, target, body.next(&buf))
				el := time.Since(at)
				if err != nil && ctx.Err() != nil {
					break
				}
				if err != nil || status/100 != 2 {
					failed.Add(1)
					if tl.fail(status, resp, err) || printed.Add(1) <= int64(maxPrinted) {
						fmt.Fprintf(os.Stderr, "kmsbench: %s: HTTP %d: %s %v\n", target, status, resp, err)
					}
				}
				l = append(l, el)
			}
			if lat != nil {
				lat[i] = l
			}
		}()
	}
	wg.Wait()
	return failed.Load()
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// selfCPU is the user+system CPU this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
