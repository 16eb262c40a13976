package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/api"
	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specCall is one request of the contract test and what it must get.
type specCall struct {
	method, path string
	key          string            // bearer key; "" sends no Authorization header
	header       map[string]string // more request headers
	ctype        string            // Content-Type of body (default application/json when body is set)
	body         string
	want         int
	// breaksSpec marks a request the spec itself forbids (a bad id, a missing field): the
	// spec must reject it too, and the server must still answer with a documented error.
	breaksSpec bool
}

// specChecker sends requests to a running adpulse and validates each request and response
// against api/openapi.yaml.
type specChecker struct {
	t      *testing.T
	base   string
	doc    *openapi3.T
	router routers.Router
	client *http.Client
	// seen is, per operation ("GET /metrics"), the statuses it answered during the test.
	seen map[string][]int
}

// loadStrictSpec loads the spec, checks it is valid, and closes every object schema of a
// response that does not say otherwise (additionalProperties: false). The spec itself leaves
// them open, because clients must accept fields added later; the test closes them so that a
// field a handler adds without documenting it fails here.
func loadStrictSpec(t *testing.T, base string) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.YAML())
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("validate openapi.yaml: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: base}}
	seen := map[*openapi3.Schema]bool{}
	for _, path := range doc.Paths.InMatchingOrder() {
		for _, op := range doc.Paths.Value(path).Operations() {
			for _, resp := range op.Responses.Map() {
				for _, mt := range resp.Value.Content {
					if mt.Schema != nil {
						closeObjects(mt.Schema.Value, seen)
					}
				}
			}
		}
	}
	return doc
}

func closeObjects(s *openapi3.Schema, seen map[*openapi3.Schema]bool) {
	if s == nil || seen[s] {
		return
	}
	seen[s] = true
	if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
		closed := false
		s.AdditionalProperties.Has = &closed
	}
	for _, p := range s.Properties {
		closeObjects(p.Value, seen)
	}
	if s.Items != nil {
		closeObjects(s.Items.Value, seen)
	}
	if s.AdditionalProperties.Schema != nil {
		closeObjects(s.AdditionalProperties.Schema.Value, seen)
	}
	for _, sub := range slices.Concat(s.OneOf, s.AnyOf) {
		closeObjects(sub.Value, seen)
	}
}

// ndjsonDecoder reads an NDJSON body as the array of its lines (blank lines skipped), which
// is how openapi.yaml describes application/x-ndjson bodies.
func ndjsonDecoder(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	out := []any{}
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var v any
		if err := json.Unmarshal(line, &v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

var specOptions = &openapi3filter.Options{
	IncludeResponseStatus: true, // a status the spec does not list is a failure
	SkipSettingDefaults:   true, // send the request as written
	MultiError:            true,
	AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		h := in.RequestValidationInput.Request.Header.Get("Authorization")
		if !strings.HasPrefix(h, "Bearer ") || len(h) == len("Bearer ") {
			return fmt.Errorf("no bearer key")
		}
		return nil
	},
}

// do sends c, validating the request and the response against the spec, and returns the
// response with its body read.
func (sc *specChecker) do(c specCall) (*http.Response, []byte) {
	sc.t.Helper()
	resp, body, err := sc.try(c)
	if err != nil {
		sc.t.Fatal(err)
	}
	if resp.StatusCode != c.want {
		sc.t.Fatalf("%s %s: status %d, want %d: %s", c.method, c.path, resp.StatusCode, c.want, short(body))
	}
	return resp, body
}

// try is do without the status check, for polling.
func (sc *specChecker) try(c specCall) (*http.Response, []byte, error) {
	name := c.method + " " + c.path
	if len(name) > 120 {
		name = name[:120] + "..."
	}
	req, err := http.NewRequest(c.method, sc.base+c.path, strings.NewReader(c.body))
	if err != nil {
		return nil, nil, err
	}
	if c.body != "" {
		ct := c.ctype
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("User-Agent", browserUA)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}

	route, params, err := sc.router.FindRoute(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not in the spec: %v", name, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: specOptions}
	reqErr := openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case reqErr != nil && !c.breaksSpec:
		return nil, nil, fmt.Errorf("%s: the request breaks the spec: %v", name, reqErr)
	case reqErr == nil && c.breaksSpec:
		return nil, nil, fmt.Errorf("%s: the spec accepts a request the test thinks it forbids", name)
	}

	resp, err := sc.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", name, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: read body: %v", name, err)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                specOptions,
	}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		return nil, nil, fmt.Errorf("%s: response %d breaks the spec: %v\nbody: %s", name, resp.StatusCode, err, short(body))
	}
	op := route.Method + " " + route.Path
	sc.seen[op] = append(sc.seen[op], resp.StatusCode)
	return resp, body, nil
}

// eventually repeats c until it answers want (the pipeline behind the API is asynchronous),
// validating every answer on the way.
func (sc *specChecker) eventually(c specCall, ok func(body []byte) bool) []byte {
	sc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, body, err := sc.try(c)
		if err != nil {
			sc.t.Fatal(err)
		}
		if resp.StatusCode == c.want && (ok == nil || ok(body)) {
			return body
		}
		if time.Now().After(deadline) {
			sc.t.Fatalf("%s %s: still %d after 20s: %s", c.method, c.path, resp.StatusCode, short(body))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// short cuts a body for an error message.
func short(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "..."
	}
	return string(b)
}

func jsonField(t *testing.T, body []byte, field string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	s, _ := m[field].(string)
	return s
}

// TestOpenAPIContract runs the real server and sends every endpoint of the API listener
// valid and invalid requests. Each request is checked against api/openapi.yaml (valid ones
// must conform, the ones marked breaksSpec must be refused by the spec too) and each
// response must be one the spec documents for that operation: status, headers and a body
// matching its schema exactly (no undocumented fields). At the end every operation of the
// spec must have been exercised with a success and, where it documents any, a 4xx.
func TestOpenAPIContract(t *testing.T) {
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", ndjsonDecoder)
	feedsDir := t.TempDir()
	_, base := startApp(t, func(c *config.Config) {
		c.FeedsURL, c.FeedsInterval = feedsDir, time.Second
		c.MaxBody = 8 << 10
		c.MaxBatch = 20
		c.IVTRules = true
		c.IVTMinClickDelay = 0 // the batches below send clicks in their impression's second
	})
	doc := loadStrictSpec(t, base)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	sc := &specChecker{t: t, base: base, doc: doc, router: router, client: benchClient(4), seen: map[string][]int{}}
	const admin = testAdminKey
	kr, err := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	sign := func(ad, imp, user string, issued time.Time) string {
		tok, err := kr.Sign(clicktoken.Claims{AdID: ad, ImpressionID: imp, UserID: user, IssuedAt: issued})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	big := strings.Repeat("x", 70<<10)

	// The catalog: two advertisers, their campaigns and ads, and keys.
	for _, c := range []specCall{
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":"Acme","timezone":"Asia/Kolkata"}`, want: 200},
		{method: "PUT", path: "/api/v1/advertisers/adv2", key: admin, body: `{"id":"adv2","name":"Other"}`, want: 200},
		{method: "PUT", path: "/api/v1/advertisers/adv1", body: `{"name":"Acme"}`, want: 401, breaksSpec: true},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: "adp_unknown", body: `{"name":"Acme"}`, want: 401},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":""}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":"A","colour":"red"}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":"A","timezone":"Mars/Olympus"}`, want: 400},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"id":"other","name":"A"}`, want: 400},
		{method: "PUT", path: "/api/v1/advertisers/bad*id", key: admin, body: `{"name":"A"}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":"` + big + `"}`, want: 413, breaksSpec: true},
		{method: "PUT", path: "/api/v1/advertisers/adv1", key: admin, body: `{"name":`, want: 400, breaksSpec: true},

		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali","status":"active","cpc_bid_micros":500000,"daily_budget_micros":10000000,"total_budget_micros":0}`, want: 200},
		{method: "PUT", path: "/api/v1/campaigns/c2", key: admin, body: `{"advertiser_id":"adv2","name":"Later","status":"paused","cpc_bid_micros":1,"start_time":"2030-01-01T00:00:00Z","end_time":1924992000}`, want: 200},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali"}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali","cpc_bid_micros":-1}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali","cpc_bid_micros":1,"status":"deleted"}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/campaigns/c3", key: admin, body: `{"advertiser_id":"nobody","name":"X","cpc_bid_micros":1}`, want: 400},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv2","name":"Diwali","cpc_bid_micros":1}`, want: 400},
		{method: "PUT", path: "/api/v1/campaigns/c3", key: admin, body: `{"advertiser_id":"adv1","name":"X","cpc_bid_micros":1,"start_time":"2030-01-02T00:00:00Z","end_time":"2030-01-01T00:00:00Z"}`, want: 400},

		{method: "PUT", path: "/api/v1/ads/ad1", key: admin, body: `{"campaign_id":"c1","landing_url":"https://shop.example/p/9","catalog_id":"cat7"}`, want: 200},
		{method: "PUT", path: "/api/v1/ads/ad2", key: admin, body: `{"campaign_id":"c1","landing_url":"https://shop.example/p/2","cpc_bid_micros":400000,"catalog_id":null}`, want: 200},
		{method: "PUT", path: "/api/v1/ads/ad3", key: admin, body: `{"campaign_id":"c2","landing_url":"http://other.example/"}`, want: 200},
		{method: "PUT", path: "/api/v1/ads/ad1", key: admin, body: `{"campaign_id":"c1","landing_url":"javascript:alert(1)"}`, want: 400, breaksSpec: true},
		{method: "PUT", path: "/api/v1/ads/ad1", key: admin, body: `{"campaign_id":"c1","landing_url":"https://a.example\\@evil.example/"}`, want: 400},
		{method: "PUT", path: "/api/v1/ads/ad1", key: admin, body: `{"campaign_id":"c2","landing_url":"https://shop.example/"}`, want: 400},
		{method: "PUT", path: "/api/v1/ads/ad9", key: admin, body: `{"campaign_id":"nope","landing_url":"https://shop.example/"}`, want: 400},

		{method: "POST", path: "/api/v1/bulk/ads", key: admin, ctype: "application/x-ndjson", want: 200,
			body: "{\"id\":\"b1\",\"campaign_id\":\"c1\",\"landing_url\":\"https://shop.example/b1\"}\n\n{\"id\":\"b2\",\"campaign_id\":\"c1\",\"landing_url\":\"https://shop.example/b2\",\"cpc_bid_micros\":7}\n"},
		{method: "POST", path: "/api/v1/bulk/ads", key: admin, ctype: "application/x-ndjson", want: 200, breaksSpec: true,
			body: "{\"id\":\"b3\",\"campaign_id\":\"c1\",\"landing_url\":\"https://shop.example/b3\"}\n{\"id\":\"b4\",\"campaign_id\":\"c1\",\"landing_url\":\"ftp://shop.example/\"}\n"},
		{method: "POST", path: "/api/v1/bulk/ads", key: admin, ctype: "application/x-ndjson", want: 413, body: strings.Repeat("\n", 100_001)},
		{method: "POST", path: "/api/v1/bulk/ads", ctype: "application/x-ndjson", want: 401, breaksSpec: true, body: "\n"},
	} {
		sc.do(c)
	}
	_, body := sc.do(specCall{method: "POST", path: "/api/v1/advertisers/adv1/keys", key: admin, want: 200})
	advKey := jsonField(t, body, "key")
	_, body = sc.do(specCall{method: "POST", path: "/api/v1/ingest-keys", key: admin, want: 200})
	ingestKey := jsonField(t, body, "key")
	if advKey == "" || ingestKey == "" {
		t.Fatal("no keys")
	}
	for _, c := range []specCall{
		{method: "POST", path: "/api/v1/advertisers/nobody/keys", key: admin, want: 404},
		{method: "POST", path: "/api/v1/advertisers/bad*id/keys", key: admin, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/advertisers/adv1/keys", key: advKey, want: 403},
		{method: "POST", path: "/api/v1/ingest-keys", want: 401, breaksSpec: true},
		{method: "POST", path: "/api/v1/ingest-keys", key: ingestKey, want: 403},

		{method: "GET", path: "/api/v1/advertisers/adv1", key: admin, want: 200},
		{method: "GET", path: "/api/v1/advertisers/adv1", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/advertisers/adv2", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/advertisers/nobody", key: admin, want: 404},
		{method: "GET", path: "/api/v1/advertisers/adv1", key: ingestKey, want: 403},
		{method: "GET", path: "/api/v1/advertisers/bad*id", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/campaigns/c1", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns/c2", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns/c1", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/campaigns/c2", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/campaigns/c1", want: 401, breaksSpec: true},
		{method: "GET", path: "/api/v1/campaigns/c1", key: ingestKey, want: 403},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: ingestKey, body: `{"advertiser_id":"adv1","name":"D","cpc_bid_micros":1}`, want: 403},
		{method: "GET", path: "/api/v1/ads/ad1", key: admin, want: 200},
		{method: "GET", path: "/api/v1/ads/ad2", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/ads/ad3", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/ads/ad1", key: ingestKey, want: 403},
		{method: "PUT", path: "/api/v1/ads/ad1", key: advKey, body: `{"campaign_id":"c1","landing_url":"https://shop.example/"}`, want: 403},
		{method: "POST", path: "/api/v1/bulk/ads", key: advKey, ctype: "application/x-ndjson", body: "\n", want: 403},

		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ad1","impression_id":"imp-1","user_id":"u1","cpc_micros":400000}`, want: 200},
		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ghost","impression_id":"imp-1"}`, want: 404},
		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ad1"}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ad1","impression_id":"imp-1","cpc_micros":0}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ad1","impression_id":"imp-1","price":1}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/click-urls", key: admin, body: `{"ad_id":"ad1","impression_id":"` + big + `"}`, want: 413, breaksSpec: true},
		{method: "POST", path: "/api/v1/click-urls", key: ingestKey, body: `{"ad_id":"ad1","impression_id":"imp-1"}`, want: 403},
	} {
		sc.do(c)
	}

	// Public endpoints. A valid click and its repeat, an expired click, a click whose ad is
	// gone, a forged token; the pixel; HEAD records nothing.
	now := time.Now()
	tok1 := sign("ad1", "imp-1", "u1", now)
	for _, c := range []specCall{
		{method: "GET", path: "/c/" + tok1, want: 302},
		{method: "GET", path: "/c/" + tok1, want: 302},
		{method: "HEAD", path: "/c/" + tok1, want: 302},
		{method: "GET", path: "/c/" + sign("ad1", "imp-old", "", now.Add(-2*time.Hour)), want: 302},
		{method: "GET", path: "/c/" + sign("ghost", "imp-g", "", now), want: 404},
		{method: "GET", path: "/c/" + tok1[:len(tok1)-2] + "AA", want: 400},
		{method: "GET", path: "/c/not*a*token", want: 400, breaksSpec: true},
		{method: "HEAD", path: "/c/AAAA", want: 400},
		{method: "GET", path: "/i/" + sign("ad1", "imp-px", "u2", now), want: 200},
		{method: "HEAD", path: "/i/" + sign("ad1", "imp-px2", "", now), want: 200},
		{method: "GET", path: "/i/AAAA", want: 400},
		{method: "HEAD", path: "/i/AAAA", want: 400},
		{method: "GET", path: "/i/" + sign("ghost", "imp-g", "", now), want: 404},
		{method: "HEAD", path: "/i/" + sign("ghost", "imp-g", "", now), want: 404},
		{method: "HEAD", path: "/c/" + sign("ghost", "imp-g", "", now), want: 404},

		{method: "POST", path: "/click", body: `{"ad_id":"ad2","impression_id":"imp-app-1","user_id":"u1"}`, want: 302},
		{method: "POST", path: "/click", header: map[string]string{"Idempotency-Key": "imp-app-2"}, body: `{"ad_id":"ad2"}`, want: 302},
		{method: "POST", path: "/click", body: `{"ad_id":"ad2"}`, want: 400},
		{method: "POST", path: "/click", body: `{"impression_id":"imp-app-3"}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/click", body: `{"ad_id":"ghost","impression_id":"imp-app-3"}`, want: 404},
		{method: "POST", path: "/click", body: `{"ad_id":"ad2","impression_id":"bad id"}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/click", body: `{"ad_id":"ad2",`, want: 400, breaksSpec: true},
		{method: "POST", path: "/click", body: `{"ad_id":"` + big + `"}`, want: 413, breaksSpec: true},
	} {
		resp, body := sc.do(c)
		if c.want == 302 && resp.Header.Get("Location") == "" {
			t.Fatalf("%s %s: 302 without Location", c.method, c.path)
		}
		if c.method == "GET" && c.want == 200 && !bytes.HasPrefix(body, []byte("GIF89a")) {
			t.Fatalf("%s: not a GIF: %q", c.path, body)
		}
	}

	// Batches: NDJSON and a JSON array, bad lines, limits and keys.
	evs := func(lines ...string) string { return strings.Join(lines, "\n") + "\n" }
	ts := now.UTC().Format(time.RFC3339)
	for _, c := range []specCall{
		{method: "POST", path: "/events", key: ingestKey, ctype: "application/x-ndjson", want: 200, body: evs(
			`{"type":"impression","impression_id":"imp-3","ad_id":"ad1","user_id":"u1","catalog_id":"cat7","event_time":"`+ts+`"}`,
			`{"type":"click","impression_id":"imp-3","ad_id":"ad1","event_time":`+fmt.Sprint(now.Unix())+`}`,
			`{"type":"add_to_cart","event_id":"e-77","impression_id":"imp-3","ad_id":"ad1"}`,
			`{"type":"click","impression_id":"imp-3","ad_id":"ad1"}`,
			`{"type":"click","impression_id":"imp-bot","ad_id":"ad1","user_agent":"Googlebot/2.1 (+http://www.google.com/bot.html)"}`,
			`{"type":"click","impression_id":"imp-4","ad_id":"ad2","cpc_micros":300000,"extra":"ignored"}`,
		)},
		{method: "POST", path: "/events", key: admin, ctype: "application/json", want: 200,
			body: `[{"type":"impression","impression_id":"imp-5","ad_id":"ad2"},{"type":"signup","event_id":"e-78","ad_id":"ad2"}]`},
		{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 200,
			body: evs(`{"type":"click","impression_id":"imp-6","ad_id":"ghost"}`)},
		{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 200, breaksSpec: true, body: evs(
			`{"type":"impression","impression_id":"imp-7","ad_id":"ad1"}`,
			`{"type":"Not A Type","impression_id":"imp-8","ad_id":"ad1"}`,
			`{"type":"click","ad_id":"ad1"}`,
			`{"type":"click","impression_id":"imp-9","ad_id":"ad1","event_time":"2001-01-01T00:00:00Z"}`,
			`not json`,
		)},
		{method: "POST", path: "/events", key: admin, ctype: "application/json", want: 400, breaksSpec: true, body: `[{"type":`},
		{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 400,
			body: strings.Repeat(`{"type":"impression","impression_id":"imp-x","ad_id":"ad1"}`+"\n", 21)},
		{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 413,
			body: strings.Repeat(`{"type":"impression","impression_id":"imp-y","ad_id":"ad1"}`+"\n", 200)},
		{method: "POST", path: "/events", ctype: "application/x-ndjson", want: 401, breaksSpec: true, body: evs(`{"type":"click","impression_id":"i","ad_id":"ad1"}`)},
		{method: "POST", path: "/events", key: advKey, ctype: "application/x-ndjson", want: 403, body: evs(`{"type":"click","impression_id":"i","ad_id":"ad1"}`)},
	} {
		sc.do(c)
	}

	// Conversions: an order from a checkout, attributed to the view of imp-3 (u1, cat7).
	for _, c := range []specCall{
		{method: "POST", path: "/events", key: ingestKey, ctype: "application/x-ndjson", want: 200, body: evs(
			`{"type":"order","event_id":"o-1","user_id":"u1","catalog_id":"cat7","value_micros":25000000}`,
			`{"type":"order","event_id":"o-2","user_id":"u9","catalog_id":"cat7","value_micros":1}`,
		)},
		{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 200, breaksSpec: true, body: evs(
			`{"type":"order","event_id":"o-3","catalog_id":"cat7"}`,
			`{"type":"order","event_id":"o-4","user_id":"u1","catalog_id":"cat7","value_micros":-1}`,
		)},
	} {
		sc.do(c)
	}
	sc.eventually(specCall{method: "GET", path: "/api/v1/conversions/o-1", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `"credited":true`) })
	sc.eventually(specCall{method: "GET", path: "/api/v1/conversions/o-2", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `"reason":"no_touch"`) })
	for _, c := range []specCall{
		{method: "GET", path: "/api/v1/conversions/o-1", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/conversions/o-2", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/conversions/o-unknown", key: admin, want: 404},
		{method: "GET", path: "/api/v1/conversions/bad*id", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/conversions/o-1", key: ingestKey, want: 403},
		{method: "GET", path: "/api/v1/conversions/o-1", want: 401, breaksSpec: true},
	} {
		sc.do(c)
	}
	sc.eventually(specCall{method: "GET", path: "/metrics/top?n=10&minutes=5&metric=conversion_value_micros&by=campaign", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `"conversion_value_micros":25000000`) })

	// Analytics, once the events above are counted.
	sc.eventually(specCall{method: "GET", path: "/metrics?ad_ids=ad1,ad2&interval=1m", key: admin, want: 200},
		func(b []byte) bool {
			s := string(b)
			return strings.Contains(s, `"interactions":{"add_to_cart":1}`) && strings.Contains(s, `"invalid_by_reason"`) && strings.Contains(s, `"spend_micros":1000000`)
		})
	sc.eventually(specCall{method: "GET", path: "/metrics/top?n=10&minutes=5&metric=clicks&by=ad", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `{"ad_id":"ad1","clicks":2}`) })
	start := url.QueryEscape(now.Add(-time.Hour).UTC().Format(time.RFC3339))
	for _, c := range []specCall{
		{method: "GET", path: "/metrics?ad_ids=ad1&ad_ids=ad2&ad_ids=ad1", key: advKey, want: 200},
		{method: "GET", path: "/metrics?campaign_ids=c1&interval=1d&tz=Asia/Kolkata", key: admin, want: 200},
		{method: "GET", path: "/metrics?advertiser_ids=adv1,adv2&interval=60m&start_time=" + start + "&end_time=" + fmt.Sprint(now.Unix()), key: admin, want: 200},
		{method: "GET", path: "/metrics", key: admin, want: 400},
		{method: "GET", path: "/metrics?ad_ids=ad1&campaign_ids=c1", key: admin, want: 400},
		{method: "GET", path: "/metrics?ad_ids=ad1&start_time=" + fmt.Sprint(now.Unix()) + "&end_time=" + fmt.Sprint(now.Unix()-60), key: admin, want: 400},
		{method: "GET", path: "/metrics?ad_ids=ad1&interval=1m&start_time=0", key: admin, want: 400},
		{method: "GET", path: "/metrics?ad_ids=ad1&interval=5s", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/metrics?ad_ids=ad1&interval=1h&tz=Asia/Kolkata", key: admin, want: 400},
		{method: "GET", path: "/metrics?ad_ids=bad*id", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/metrics?ad_ids=ad3", key: advKey, want: 404},
		{method: "GET", path: "/metrics?ad_ids=ad1", key: ingestKey, want: 403},
		{method: "GET", path: "/metrics?ad_ids=ad1", want: 401, breaksSpec: true},

		{method: "GET", path: "/metrics/top", key: advKey, want: 200},
		{method: "GET", path: "/metrics/top?by=campaign&metric=spend_micros&campaign_id=c1", key: admin, want: 200},
		{method: "GET", path: "/metrics/top?by=advertiser&metric=impressions&start_time=" + start, key: admin, want: 200},
		{method: "GET", path: "/metrics/top?n=0", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/metrics/top?n=ten", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/metrics/top?metric=ctr", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/metrics/top?minutes=5&start_time=" + start, key: admin, want: 400},
		{method: "GET", path: "/metrics/top?start_time=" + fmt.Sprint(now.Add(-48*time.Hour).Unix()), key: admin, want: 400},
		{method: "GET", path: "/metrics/top?advertiser_id=adv2", key: advKey, want: 404},
		{method: "GET", path: "/metrics/top?campaign_id=c2", key: advKey, want: 404},
		{method: "GET", path: "/metrics/top", key: ingestKey, want: 403},
		{method: "GET", path: "/metrics/top", want: 401, breaksSpec: true},
	} {
		sc.do(c)
	}

	// Billing: the serving feed, user views, the ledger and refunds.
	sc.eventually(specCall{method: "GET", path: "/api/v1/users/u1/views", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `"cat7":1`) })
	sc.eventually(specCall{method: "GET", path: "/api/v1/clicks/imp-1", key: admin, want: 200}, nil)
	sc.eventually(specCall{method: "GET", path: "/api/v1/clicks/imp-4", key: admin, want: 200}, nil)
	for _, c := range []specCall{
		{method: "GET", path: "/api/v1/serving/campaigns", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns?advertiser_id=adv2", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/campaigns?advertiser_id=adv2", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/campaigns?advertiser_id=bad*id", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/campaigns?colour=red", key: admin, want: 400},
		{method: "GET", path: "/api/v1/campaigns", key: ingestKey, want: 403},
		{method: "GET", path: "/api/v1/campaigns", want: 401, breaksSpec: true},
		{method: "GET", path: "/api/v1/health/ingest", key: admin, want: 200},
		{method: "GET", path: "/api/v1/health/ingest?verbose=1", key: admin, want: 400},
		{method: "GET", path: "/api/v1/health/ingest", key: advKey, want: 403},
		{method: "GET", path: "/api/v1/health/ingest", want: 401, breaksSpec: true},
		{method: "GET", path: "/api/v1/serving/campaigns", key: advKey, want: 403},
		{method: "GET", path: "/api/v1/serving/campaigns", want: 401, breaksSpec: true},
		{method: "GET", path: "/api/v1/users/u1/views?date=" + now.UTC().Format(time.DateOnly), key: admin, want: 200},
		{method: "GET", path: "/api/v1/users/nobody/views", key: admin, want: 200},
		{method: "GET", path: "/api/v1/users/u1/views?date=2001-01-01", key: admin, want: 400},
		{method: "GET", path: "/api/v1/users/u1/views?date=yesterday", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/users/bad*id/views", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/users/u1/views", key: advKey, want: 403},

		{method: "GET", path: "/api/v1/clicks/imp-1", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/clicks/imp-unknown", key: admin, want: 404},
		{method: "GET", path: "/api/v1/clicks/bad*id", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/clicks/imp-1", key: ingestKey, want: 403},
		{method: "GET", path: "/api/v1/clicks/imp-1", want: 401, breaksSpec: true},
		{method: "POST", path: "/api/v1/clicks/imp-1/refund", key: admin, want: 200},
		{method: "POST", path: "/api/v1/clicks/imp-1/refund", key: admin, want: 200},
		{method: "GET", path: "/api/v1/clicks/imp-1", key: admin, want: 200},
		{method: "POST", path: "/api/v1/clicks/imp-unknown/refund", key: admin, want: 404},
		{method: "POST", path: "/api/v1/clicks/bad*id/refund", key: admin, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/clicks/imp-1/refund", key: advKey, want: 403},
		{method: "POST", path: "/api/v1/clicks/imp-1/refund", want: 401, breaksSpec: true},

		{method: "GET", path: "/openapi.json", want: 200},
	} {
		sc.do(c)
	}

	// Behavioural rules: a click with no impression on an ad whose impressions are tracked is
	// flagged, explained on the click, and listed in its advertiser's credits.
	sc.do(specCall{method: "POST", path: "/events", key: admin, ctype: "application/x-ndjson", want: 200, body: evs(
		`{"type":"impression","impression_id":"imp-t1","ad_id":"ad3","ip":"81.2.3.4","device_id":"dev-9"}`,
		`{"type":"click","impression_id":"imp-t2","ad_id":"ad3","ip":"81.2.3.4","device_id":"dev-9","user_agent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0"}`,
	)})
	sc.do(specCall{method: "POST", path: "/click", body: `{"ad_id":"ad2","impression_id":"imp-app-9","device_id":"dev-app"}`, want: 302})
	sc.eventually(specCall{method: "GET", path: "/api/v1/clicks/imp-t2", key: admin, want: 200},
		func(b []byte) bool { return strings.Contains(string(b), `"invalid_traffic":{"reason":"no_impression"`) })
	sc.eventually(specCall{method: "GET", path: "/api/v1/advertisers/adv2/credits", key: admin, want: 200},
		func(b []byte) bool {
			return strings.Contains(string(b), `"click_id":"imp-t2"`) && strings.Contains(string(b), `"status":"credited"`)
		})
	for _, c := range []specCall{
		{method: "GET", path: "/api/v1/advertisers/adv2/credits?limit=1", key: admin, want: 200},
		{method: "GET", path: "/api/v1/advertisers/adv1/credits", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits?limit=0", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits?limit=1001", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits?before=x", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/advertisers/bad*id/credits", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits", key: ingestKey, want: 403},
		{method: "GET", path: "/api/v1/advertisers/adv2/credits", want: 401, breaksSpec: true},
	} {
		sc.do(c)
	}

	// Data-science feeds: two versions of auto_cpc (one rejected), budget recommendations.
	dropFeed(t, feedsDir, "auto_cpc", "v1", map[string]string{"a.csv": "catalog_id,bid_micros\ncat7,300000\n"})
	dropFeed(t, feedsDir, "budget_recommendations", "r1", map[string]string{"r.csv": "campaign_id,recommended_daily_budget_micros\nc1,9000000\n"})
	sc.eventually(specCall{method: "GET", path: "/api/v1/feeds", key: admin, want: 200},
		func(b []byte) bool {
			return strings.Contains(string(b), `"active_version":"v1"`) && strings.Contains(string(b), `"active_version":"r1"`)
		})
	dropFeed(t, feedsDir, "auto_cpc", "v2", map[string]string{"a.csv": "catalog_id,bid_micros\ncat7,400000\n"})
	dropFeed(t, feedsDir, "auto_cpc", "v3", map[string]string{"a.csv": "catalog_id,bid_micros\ncat7,-1\n"})
	sc.eventually(specCall{method: "GET", path: "/api/v1/feeds", key: admin, want: 200},
		func(b []byte) bool {
			return strings.Contains(string(b), `"active_version":"v2"`) && strings.Contains(string(b), `"state":"rejected"`)
		})
	for _, c := range []specCall{
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali","cpc_bid_micros":500000,"daily_budget_micros":10000000,"auto_cpc":true}`, want: 200},
		{method: "PUT", path: "/api/v1/campaigns/c1", key: admin, body: `{"advertiser_id":"adv1","name":"Diwali","cpc_bid_micros":500000,"auto_cpc":"yes"}`, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/feeds", key: advKey, want: 403},
		{method: "GET", path: "/api/v1/feeds", want: 401, breaksSpec: true},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: admin, body: `{"version":"v1"}`, want: 200},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: admin, body: `{"version":"v9"}`, want: 404},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: admin, body: `{"version":"v3"}`, want: 400},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: admin, body: `{"version":"../x"}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: admin, body: `{}`, want: 400, breaksSpec: true},
		{method: "POST", path: "/api/v1/feeds/other/rollback", key: admin, body: `{"version":"v1"}`, want: 404, breaksSpec: true},
		{method: "POST", path: "/api/v1/feeds/auto_cpc/rollback", key: advKey, body: `{"version":"v1"}`, want: 403},
		{method: "GET", path: "/api/v1/campaigns/c1/recommendations", key: admin, want: 200},
		{method: "GET", path: "/api/v1/campaigns/c1/recommendations", key: advKey, want: 200},
		{method: "GET", path: "/api/v1/campaigns/c2/recommendations", key: advKey, want: 404},
		{method: "GET", path: "/api/v1/campaigns/c2/recommendations", key: admin, want: 404},
		{method: "GET", path: "/api/v1/campaigns/bad*id/recommendations", key: admin, want: 400, breaksSpec: true},
		{method: "GET", path: "/api/v1/campaigns/c1/recommendations", key: ingestKey, want: 403},
	} {
		sc.do(c)
	}

	// Paths and methods the API does not serve answer the same error shape.
	notFound := doc.Components.Schemas["NotFoundError"].Value
	for _, c := range []struct{ method, path string }{{"GET", "/nope"}, {"PUT", "/metrics"}, {"DELETE", "/api/v1/ads/ad1"}} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := sc.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v any
		if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 404 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, resp.StatusCode, body)
		}
		if err := notFound.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
	}

	// The strictness is real: a response with a field the spec does not document fails.
	_, body = sc.do(specCall{method: "GET", path: "/api/v1/ads/ad1", key: admin, want: 200})
	var ad map[string]any
	_ = json.Unmarshal(body, &ad)
	ad["undocumented"] = 1
	drifted, _ := json.Marshal(ad)
	req, _ := http.NewRequest("GET", base+"/api/v1/ads/ad1", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	route, params, _ := router.FindRoute(req)
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: specOptions},
		Status:                 200, Header: http.Header{"Content-Type": {"application/json"}}, Options: specOptions,
	}
	out.SetBodyBytes(drifted)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err == nil {
		t.Fatal("a response with an undocumented field passed validation")
	}

	// Coverage: every operation of the spec answered a success, and a 4xx where it lists any.
	for _, path := range doc.Paths.InMatchingOrder() {
		for method, op := range doc.Paths.Value(path).Operations() {
			name := method + " " + path
			got := sc.seen[name]
			if !slices.ContainsFunc(got, func(s int) bool { return s < 400 }) {
				t.Errorf("%s: never answered with success (statuses seen: %v)", name, got)
			}
			has4xx := false
			for code := range op.Responses.Map() {
				if strings.HasPrefix(code, "4") {
					has4xx = true
				}
			}
			if has4xx && !slices.ContainsFunc(got, func(s int) bool { return s >= 400 && s < 500 }) {
				t.Errorf("%s: never answered a 4xx (statuses seen: %v)", name, got)
			}
			t.Logf("%-45s %v", name, got)
		}
	}
}
