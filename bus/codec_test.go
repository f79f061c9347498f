package bus_test

import (
	"errors"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// roundTripCase is one HTTP header set sent through PutHTTPHeader and back
// through CopyToHTTP.
type roundTripCase struct {
	name string
	in   http.Header
	// want is the HTTP header after the round trip.
	want http.Header
	// natsHas are keys the nats.Header must hold, spelled exactly, with
	// their values.
	natsHas nats.Header
	// natsLacks are keys the nats.Header must not hold (compared exactly).
	natsLacks []string
}

var roundTripCases = []roundTripCase{
	{
		name: "plain end-to-end headers",
		in: http.Header{
			"Content-Type":  {"application/json"},
			"Accept":        {"*/*"},
			"Cache-Control": {"no-cache"},
			"X-Request-Id":  {"abc-123"},
		},
		want: http.Header{
			"Content-Type":  {"application/json"},
			"Accept":        {"*/*"},
			"Cache-Control": {"no-cache"},
			"X-Request-Id":  {"abc-123"},
		},
	},
	{
		name: "hop-by-hop headers removed",
		in: http.Header{
			"Connection":          {"keep-alive"},
			"Proxy-Connection":    {"keep-alive"},
			"Keep-Alive":          {"timeout=5"},
			"Proxy-Authenticate":  {"Basic"},
			"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
			"Te":                  {"trailers"},
			"Trailer":             {"Expires"},
			"Transfer-Encoding":   {"chunked"},
			"Upgrade":             {"websocket"},
			"Authorization":       {"Bearer t"},
		},
		want: http.Header{"Authorization": {"Bearer t"}},
		natsLacks: []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
			"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"},
	},
	{
		name: "non-canonical hop-by-hop keys removed",
		in: http.Header{
			"transfer-encoding": {"chunked"},
			"UPGRADE":           {"h2c"},
			"x-kept":            {"yes"},
		},
		want:      http.Header{"X-Kept": {"yes"}},
		natsLacks: []string{"transfer-encoding", "UPGRADE", "Transfer-Encoding", "Upgrade"},
	},
	{
		name: "headers named in Connection removed",
		in: http.Header{
			"Connection": {"X-Foo, close", "x-bar"},
			"X-Foo":      {"secret"},
			"X-Bar":      {"also"},
			"Close":      {"odd but listed"},
			"X-Baz":      {"kept"},
		},
		want:      http.Header{"X-Baz": {"kept"}},
		natsLacks: []string{"Connection", "X-Foo", "X-Bar", "Close"},
	},
	{
		name: "several Set-Cookie keep their order",
		in: http.Header{
			"Set-Cookie": {"a=1; Path=/", "b=2; HttpOnly", "c=3; Secure", "a=4"},
		},
		want: http.Header{
			"Set-Cookie": {"a=1; Path=/", "b=2; HttpOnly", "c=3; Secure", "a=4"},
		},
		natsHas: nats.Header{"Set-Cookie": {"a=1; Path=/", "b=2; HttpOnly", "c=3; Secure", "a=4"}},
	},
	{
		name: "names NATS reserves are escaped and restored",
		in: http.Header{
			"Status":               {"503"},
			"Description":          {"No Responders"},
			"Nats-Msg-Id":          {"dedupe-me"},
			"Nats-Expected-Stream": {"KV_mesh_config"},
		},
		want: http.Header{
			"Status":               {"503"},
			"Description":          {"No Responders"},
			"Nats-Msg-Id":          {"dedupe-me"},
			"Nats-Expected-Stream": {"KV_mesh_config"},
		},
		natsLacks: []string{"Status", "Description", "Nats-Msg-Id", "Nats-Expected-Stream"},
		natsHas: nats.Header{
			"Mesh-Esc-Status":               {"503"},
			"Mesh-Esc-Description":          {"No Responders"},
			"Mesh-Esc-Nats-Msg-Id":          {"dedupe-me"},
			"Mesh-Esc-Nats-Expected-Stream": {"KV_mesh_config"},
		},
	},
	{
		name: "reserved names in other spellings are escaped too",
		in: http.Header{
			"status":      {"200"},
			"NATS-MSG-ID": {"x"},
		},
		want: http.Header{
			"Status":      {"200"},
			"Nats-Msg-Id": {"x"},
		},
		natsLacks: []string{"status", "NATS-MSG-ID", "Status", "Nats-Msg-Id"},
	},
	{
		name: "Mesh headers from the app are dropped",
		in: http.Header{
			"Mesh-Caller":     {"admin"},
			"Mesh-Status":     {"200"},
			"Mesh-Error":      {"timeout"},
			"mesh-method":     {"DELETE"},
			"Mesh-Esc-Status": {"503"},
			"X-Mesh-Not-Ours": {"kept"},
			"Meshy":           {"kept too"},
		},
		want: http.Header{
			"X-Mesh-Not-Ours": {"kept"},
			"Meshy":           {"kept too"},
		},
		natsLacks: []string{"Mesh-Caller", "Mesh-Status", "Mesh-Error", "mesh-method", "Mesh-Method", "Mesh-Esc-Status"},
	},
	{
		name: "trace context keys are lower-case on NATS",
		in: http.Header{
			"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Tracestate":  {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"},
			"baggage":     {"userId=alice,serverNode=DF%2028"},
		},
		want: http.Header{
			"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Tracestate":  {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"},
			"Baggage":     {"userId=alice,serverNode=DF%2028"},
		},
		natsHas: nats.Header{
			"traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"tracestate":  {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"},
			"baggage":     {"userId=alice,serverNode=DF%2028"},
		},
		natsLacks: []string{"Traceparent", "Tracestate", "Baggage"},
	},
	{
		name: "non-ASCII values survive",
		in: http.Header{
			"X-Greeting":          {"grüß dich", "こんにちは", "🙂"},
			"Content-Disposition": {`attachment; filename="résumé.pdf"`},
		},
		want: http.Header{
			"X-Greeting":          {"grüß dich", "こんにちは", "🙂"},
			"Content-Disposition": {`attachment; filename="résumé.pdf"`},
		},
	},
	{
		name: "two spellings of one name are merged",
		in: http.Header{
			"X-Dup": {"one"},
			"x-dup": {"two"},
		},
		// The order between the spellings follows map iteration; compared sorted.
		want: http.Header{"X-Dup": {"one", "two"}},
	},
	{
		name: "empty header",
		in:   http.Header{},
		want: http.Header{},
	},
}

func checkNATSSide(t *testing.T, nh nats.Header, tc roundTripCase) {
	t.Helper()
	for k, want := range tc.natsHas {
		if got, ok := nh[k]; !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("nats header %q = %q (present %v), want %q", k, got, ok, want)
		}
	}
	for _, k := range tc.natsLacks {
		if v, ok := nh[k]; ok {
			t.Errorf("nats header has %q = %q, want it absent", k, v)
		}
	}
	checkNoReservedKeys(t, nh)
}

// checkNoReservedKeys fails if nh holds a key NATS gives meaning to, in any case.
func checkNoReservedKeys(t *testing.T, nh nats.Header) {
	t.Helper()
	for k := range nh {
		if strings.EqualFold(k, "Status") || strings.EqualFold(k, "Description") ||
			len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") {
			t.Errorf("nats header carries reserved key %q unescaped", k)
		}
	}
}

func sortedValues(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, vv := range h {
		c := append([]string(nil), vv...)
		sort.Strings(c)
		out[k] = c
	}
	return out
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, tc := range roundTripCases {
		t.Run(tc.name, func(t *testing.T) {
			nh := nats.Header{}
			bus.PutHTTPHeader(nh, tc.in)
			checkNATSSide(t, nh, tc)

			got := http.Header{}
			bus.CopyToHTTP(got, nh)
			want := tc.want
			if tc.name == "two spellings of one name are merged" {
				got, want = sortedValues(got), sortedValues(want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after round trip\n got %q\nwant %q", got, want)
			}
		})
	}
}

// TestHeaderRoundTripOverNATS sends every round-trip case through a real
// server, so that nats.go's own header encoding is part of the trip: key case
// (lower-case trace keys), value order and non-ASCII values must survive it.
func TestHeaderRoundTripOverNATS(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	sub, err := nc.SubscribeSync("codec.roundtrip")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range roundTripCases {
		t.Run(tc.name, func(t *testing.T) {
			nh := nats.Header{}
			bus.PutHTTPHeader(nh, tc.in)
			if err := nc.PublishMsg(&nats.Msg{Subject: "codec.roundtrip", Header: nh}); err != nil {
				t.Fatalf("publish: %v", err)
			}
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if bus.IsNoResponders(m) {
				t.Errorf("message taken for a no-responders status: %v", m.Header)
			}
			checkNATSSide(t, m.Header, tc)

			got := http.Header{}
			bus.CopyToHTTP(got, m.Header)
			want := tc.want
			if tc.name == "two spellings of one name are merged" {
				got, want = sortedValues(got), sortedValues(want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after round trip over NATS\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestPutHTTPHeaderKeepsExistingValues(t *testing.T) {
	nh := nats.Header{"X-A": {"from-before"}}
	src := http.Header{"X-A": {"new"}}
	bus.PutHTTPHeader(nh, src)
	if got, want := nh["X-A"], []string{"from-before", "new"}; !reflect.DeepEqual(got, want) {
		t.Errorf("X-A = %q, want %q", got, want)
	}
	if got := src["X-A"]; !reflect.DeepEqual(got, []string{"new"}) {
		t.Errorf("src was modified: %q", got)
	}
}

func TestCopyToHTTPLeavesNATSHeadersOut(t *testing.T) {
	nh := nats.Header{
		"Status":          {"503"},
		"Description":     {"No Responders"},
		"Nats-Msg-Id":     {"1"},
		"nats-sequence":   {"9"},
		"Mesh-Status":     {"200"},
		"Mesh-Instance":   {"reviews-1"},
		"Mesh-Caller":     {"productpage"},
		"mesh-esc-status": {"418"},
		"x-lower":         {"v"},
	}
	got := http.Header{"X-Existing": {"keep"}}
	bus.CopyToHTTP(got, nh)
	want := http.Header{
		"X-Existing": {"keep"},
		"Status":     {"418"},
		"X-Lower":    {"v"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CopyToHTTP\n got %q\nwant %q", got, want)
	}
}

func TestEncodeRequest(t *testing.T) {
	hdr := http.Header{
		"Accept":      {"text/html"},
		"Mesh-Caller": {"spoofed"},
		"Mesh-Method": {"DELETE"},
		"Connection":  {"close"},
	}
	nh := nats.Header{}
	bus.EncodeRequest(nh, http.MethodGet, "/reviews/1?x=%2F", "reviews:9080", hdr)
	want := nats.Header{
		bus.HeaderMethod: {"GET"},
		bus.HeaderPath:   {"/reviews/1?x=%2F"},
		bus.HeaderHost:   {"reviews:9080"},
		"Accept":         {"text/html"},
	}
	if !reflect.DeepEqual(nh, want) {
		t.Errorf("EncodeRequest\n got %q\nwant %q", nh, want)
	}

	nh = nats.Header{}
	bus.EncodeRequest(nh, http.MethodPost, "/", "", nil)
	if _, ok := nh[bus.HeaderHost]; ok {
		t.Errorf("empty host encoded as %q", nh[bus.HeaderHost])
	}
	if bus.First(nh, bus.HeaderMethod) != "POST" || bus.First(nh, bus.HeaderPath) != "/" {
		t.Errorf("EncodeRequest(POST /) = %q", nh)
	}
}

func TestEncodeResponse(t *testing.T) {
	nh := nats.Header{}
	bus.EncodeResponse(nh, http.StatusTeapot, "reviews-1", http.Header{
		"Content-Type":  {"text/plain"},
		"Status":        {"503"},
		"Mesh-Instance": {"spoofed"},
		"Mesh-Error":    {"circuit-open"},
	})
	want := nats.Header{
		bus.HeaderStatus:   {"418"},
		bus.HeaderInstance: {"reviews-1"},
		"Content-Type":     {"text/plain"},
		"Mesh-Esc-Status":  {"503"},
	}
	if !reflect.DeepEqual(nh, want) {
		t.Errorf("EncodeResponse\n got %q\nwant %q", nh, want)
	}

	nh = nats.Header{}
	bus.EncodeResponse(nh, http.StatusOK, "", nil)
	if _, ok := nh[bus.HeaderInstance]; ok {
		t.Errorf("empty instance encoded as %q", nh[bus.HeaderInstance])
	}
	if got := bus.First(nh, bus.HeaderStatus); got != "200" {
		t.Errorf("Mesh-Status = %q, want 200", got)
	}
}

func TestFirst(t *testing.T) {
	h := nats.Header{"A": {"1", "2"}, "b": {"x"}, "Empty": {}}
	for _, tc := range []struct{ key, want string }{
		{"A", "1"}, {"b", "x"}, {"B", ""}, {"Empty", ""}, {"missing", ""},
	} {
		if got := bus.First(h, tc.key); got != tc.want {
			t.Errorf("First(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if got := bus.First(nil, "A"); got != "" {
		t.Errorf("First(nil) = %q", got)
	}
}

func TestStatusCode(t *testing.T) {
	for _, tc := range []struct {
		code int
		want string
	}{
		{0, "0"}, {-1, "-1"}, {42, "42"}, {99, "99"}, {100, "100"}, {200, "200"}, {404, "404"},
		{503, "503"}, {599, "599"}, {600, "600"}, {1000, "1000"},
	} {
		if got := bus.StatusCode(tc.code); got != tc.want {
			t.Errorf("StatusCode(%d) = %q, want %q", tc.code, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = bus.StatusCode(http.StatusServiceUnavailable) }); n != 0 {
		t.Errorf("StatusCode(503) allocates %v times, want 0", n)
	}
}

func TestIsNoRespondersInMemory(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  *nats.Msg
		want bool
	}{
		{"status 503 empty body", &nats.Msg{Header: nats.Header{"Status": {"503"}}}, true},
		{"status 503 with body", &nats.Msg{Header: nats.Header{"Status": {"503"}}, Data: []byte("x")}, false},
		{"other status", &nats.Msg{Header: nats.Header{"Status": {"408"}}}, false},
		{"escaped app status", &nats.Msg{Header: nats.Header{"Mesh-Esc-Status": {"503"}}}, false},
		{"mesh status 503", &nats.Msg{Header: nats.Header{bus.HeaderStatus: {"503"}}}, false},
		{"no header", &nats.Msg{}, false},
	} {
		if got := bus.IsNoResponders(tc.msg); got != tc.want {
			t.Errorf("%s: IsNoResponders = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// appStatus503 is an app's response that carries its own "Status: 503"
// header and an empty body, encoded for NATS.
func appStatus503() nats.Header {
	h := nats.Header{}
	bus.EncodeResponse(h, http.StatusServiceUnavailable, "reviews-1", http.Header{
		"Status":      {"503"},
		"Description": {"No Responders"},
		"Retry-After": {"3"},
	})
	return h
}

func checkAppStatus503(t *testing.T, m *nats.Msg) {
	t.Helper()
	if bus.IsNoResponders(m) {
		t.Errorf("an app's 503 with a Status header was taken for no-responders: %q", m.Header)
	}
	if len(m.Data) != 0 {
		t.Errorf("body = %q, want empty", m.Data)
	}
	if got := bus.First(m.Header, bus.HeaderStatus); got != "503" {
		t.Errorf("Mesh-Status = %q, want 503", got)
	}
	h := http.Header{}
	bus.CopyToHTTP(h, m.Header)
	want := http.Header{"Status": {"503"}, "Description": {"No Responders"}, "Retry-After": {"3"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("HTTP headers after the trip = %q, want %q", h, want)
	}
}

// TestAppStatusHeaderIsNotNoResponders proves over a real server that an
// app's response whose HTTP headers include "Status: 503" and whose body is
// empty is neither mistaken by nats.go for a no-responders status nor by
// IsNoResponders, while the server's real no-responders status is.
func TestAppStatusHeaderIsNotNoResponders(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)

	t.Run("plain subscription", func(t *testing.T) {
		sub, err := nc.SubscribeSync("codec.status")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := nc.PublishMsg(&nats.Msg{Subject: "codec.status", Header: appStatus503()}); err != nil {
			t.Fatal(err)
		}
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("NextMsg: %v", err)
		}
		checkAppStatus503(t, m)
	})

	t.Run("request to responder", func(t *testing.T) {
		sub, err := nc.Subscribe("codec.responder", func(m *nats.Msg) {
			_ = m.RespondMsg(&nats.Msg{Header: appStatus503()})
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		m, err := nc.Request("codec.responder", nil, 5*time.Second)
		if err != nil {
			t.Fatalf("Request returned %v, want the app's 503 response", err)
		}
		checkAppStatus503(t, m)
	})

	t.Run("echo of an encoded request", func(t *testing.T) {
		sub, err := nc.Subscribe("codec.echo", func(m *nats.Msg) {
			_ = m.RespondMsg(&nats.Msg{Header: m.Header, Data: m.Data})
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		req := nats.Header{}
		in := http.Header{"Status": {"503"}, "Nats-Msg-Id": {"42"}, "Traceparent": {"00-abc-def-01"}}
		bus.EncodeRequest(req, http.MethodGet, "/x", "svc", in)
		m, err := nc.RequestMsg(&nats.Msg{Subject: "codec.echo", Header: req}, 5*time.Second)
		if err != nil {
			t.Fatalf("RequestMsg returned %v", err)
		}
		if bus.IsNoResponders(m) {
			t.Errorf("echo taken for no-responders: %q", m.Header)
		}
		if got := bus.First(m.Header, "traceparent"); got != "00-abc-def-01" {
			t.Errorf("traceparent after echo = %q, header %q", got, m.Header)
		}
		h := http.Header{}
		bus.CopyToHTTP(h, m.Header)
		if !reflect.DeepEqual(h, in) {
			t.Errorf("echoed HTTP header = %q, want %q", h, in)
		}
	})

	// Control: without the codec's escaping, nats.go itself mistakes the
	// same response for no-responders. This is what the escaping prevents.
	t.Run("control: unescaped Status header", func(t *testing.T) {
		sub, err := nc.Subscribe("codec.raw", func(m *nats.Msg) {
			_ = m.RespondMsg(&nats.Msg{Header: nats.Header{"Status": {"503"}}})
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		_, err = nc.Request("codec.raw", nil, 5*time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("unescaped Status: 503 gave %v; expected nats.go to report ErrNoResponders (if this changed, the test's premise did)", err)
		}
	})

	t.Run("real no-responders on a manual inbox", func(t *testing.T) {
		// A channel subscription hands over the raw status message;
		// SubscribeSync's NextMsg would turn it into ErrNoResponders itself.
		inbox := nc.NewRespInbox()
		ch := make(chan *nats.Msg, 4)
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		next := func() *nats.Msg {
			t.Helper()
			select {
			case m := <-ch:
				return m
			case <-time.After(5 * time.Second):
				t.Fatal("no status message arrived")
				return nil
			}
		}
		subj := bus.Subjects{}.Call("nobody-listens")
		if err := nc.PublishMsg(&nats.Msg{Subject: subj, Reply: inbox, Header: nats.Header{"X-A": {"1"}}}); err != nil {
			t.Fatal(err)
		}
		if m := next(); !bus.IsNoResponders(m) {
			t.Errorf("IsNoResponders = false for the server's status %q, data %q", m.Header, m.Data)
		}

		// And with PublishRequest (no headers on the request).
		if err := nc.PublishRequest(subj, inbox, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if m := next(); !bus.IsNoResponders(m) {
			t.Errorf("IsNoResponders = false for the server's status %q, data %q", m.Header, m.Data)
		}

		// nats.go's own Request agrees.
		if _, err := nc.Request(subj, nil, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("Request to %s = %v, want ErrNoResponders", subj, err)
		}
	})
}

// isToken reports whether s is an HTTP field name (RFC 9110 token).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isFieldValue reports whether s can travel as an HTTP field value unchanged:
// no control bytes (so no CR, LF or NUL) and no leading or trailing whitespace.
func isFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return s == strings.TrimSpace(s) && s == strings.Trim(s, " \t")
}

func isHopByHop(canon string) bool {
	switch canon {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

func FuzzHeaderRoundTrip(f *testing.F) {
	seeds := []struct {
		name, v1, v2 string
		inConn       bool
	}{
		{"X-Foo", "bar", "baz", false},
		{"x-foo", "bar", "", false},
		{"X-Foo", "bar", "baz", true},
		{"Status", "503", "", false},
		{"status", "503", "200", false},
		{"Description", "No Responders", "", false},
		{"Nats-Msg-Id", "1", "", false},
		{"nats-expected-stream", "s", "", false},
		{"Mesh-Caller", "admin", "", false},
		{"mesh-esc-status", "503", "", false},
		{"Connection", "close", "", false},
		{"transfer-encoding", "chunked", "", false},
		{"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", false},
		{"tracestate", "a=1", "b=2", false},
		{"BAGGAGE", "k=v", "", false},
		{"Set-Cookie", "a=1", "b=2", false},
		{"X-Unicode", "grüß 🙂", "日本", false},
		{"!#$%&'*+-.^_`|~", "v", "", false},
		{"X", "", "", false},
		{"bad name", "v", "", false},
		{"X-Bad", " lead", "trail ", false},
		{"X-Bad", "a\r\nInjected: 1", "", false},
	}
	for _, s := range seeds {
		f.Add(s.name, s.v1, s.v2, s.inConn)
	}
	f.Fuzz(func(t *testing.T, name, v1, v2 string, inConn bool) {
		if len(name)+len(v1)+len(v2) > 1024 || !isToken(name) || !isFieldValue(v1) || !isFieldValue(v2) {
			t.Skip()
		}
		canon := http.CanonicalHeaderKey(name)
		src := http.Header{name: {v1, v2}}
		if inConn && canon != "Connection" {
			src["Connection"] = []string{"keep-alive, " + name}
		}
		nh := nats.Header{}
		bus.PutHTTPHeader(nh, src)
		checkNoReservedKeys(t, nh)
		for k := range nh {
			if len(k) >= 5 && strings.EqualFold(k[:5], "Mesh-") && !strings.HasPrefix(k, "Mesh-Esc-") {
				t.Errorf("app header became mesh control header %q", k)
			}
		}

		got := http.Header{}
		bus.CopyToHTTP(got, nh)
		mayDrop := isHopByHop(canon) || strings.HasPrefix(canon, "Mesh-") || inConn
		vv, ok := got[canon]
		switch {
		case !ok && !mayDrop:
			t.Fatalf("header %q (canonical %q) lost: nats %q, http %q", name, canon, nh, got)
		case ok && mayDrop:
			t.Fatalf("header %q (canonical %q) must be dropped but came back as %q", name, canon, vv)
		case ok && !reflect.DeepEqual(vv, []string{v1, v2}):
			t.Fatalf("header %q came back as %q, want %q", name, vv, []string{v1, v2})
		}
		if ok && len(got) != 1 {
			t.Fatalf("round trip of %q added headers: %q", name, got)
		}
		if !ok && len(got) != 0 {
			t.Fatalf("round trip of dropped %q left headers: %q", name, got)
		}
	})
}

// TestCodeStatus checks each code's HTTP status against the table in
// docs/architecture.md ("Wire format of a proxied HTTP call").
func TestCodeStatus(t *testing.T) {
	tests := []struct {
		code       bus.Code
		wire       string
		status     int
		retryAfter bool
	}{
		{bus.NoResponders, "no-responders", 503, false},
		{bus.Timeout, "timeout", 504, false},
		{bus.CircuitOpen, "circuit-open", 503, false},
		{bus.Overloaded, "overloaded", 503, true},
		{bus.UpstreamUnreachable, "upstream-unreachable", 502, false},
		{bus.TooLarge, "too-large", 413, false},
		{bus.MeshUnavailable, "mesh-unavailable", 503, false},
		{bus.UpstreamLost, "upstream-lost", 502, false},
		{bus.BadRequest, "bad-request", 400, false},
		{bus.Forbidden, "forbidden", 403, false},
		{bus.NotSupported, "not-supported", 501, false},
	}
	for _, tt := range tests {
		t.Run(tt.wire, func(t *testing.T) {
			if string(tt.code) != tt.wire {
				t.Errorf("code = %q, want %q on the wire", tt.code, tt.wire)
			}
			if got := tt.code.Status(); got != tt.status {
				t.Errorf("%s.Status() = %d, want %d", tt.code, got, tt.status)
			}

			e := bus.Errorf(tt.code, "service %q said %d", "reviews", 7)
			if e.Code != tt.code || e.Status != tt.status || e.Message != `service "reviews" said 7` {
				t.Errorf("Errorf = %+v", e)
			}
			if got, want := e.Error(), tt.wire+`: service "reviews" said 7`; got != want {
				t.Errorf("Error() = %q, want %q", got, want)
			}

			h, body := bus.ErrorResponse(e, "reviews-1")
			if got := bus.First(h, bus.HeaderStatus); got != bus.StatusCode(tt.status) {
				t.Errorf("Mesh-Status = %q, want %d", got, tt.status)
			}
			if got := bus.First(h, bus.HeaderError); got != tt.wire {
				t.Errorf("Mesh-Error = %q, want %q", got, tt.wire)
			}
			if got := bus.First(h, bus.HeaderInstance); got != "reviews-1" {
				t.Errorf("Mesh-Instance = %q, want reviews-1", got)
			}
			if got := string(body); got != e.Message+"\n" || strings.Count(got, "\n") != 1 {
				t.Errorf("body = %q, want the message as one line", got)
			}
			if _, ok := h["Retry-After"]; ok != tt.retryAfter {
				t.Errorf("Retry-After present = %v, want %v", ok, tt.retryAfter)
			}
			checkNoReservedKeys(t, h)

			// What an HTTP client sees: no mesh control headers.
			hh := http.Header{}
			bus.CopyToHTTP(hh, h)
			if got := hh.Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", got)
			}
			for k := range hh {
				if strings.HasPrefix(k, "Mesh-") {
					t.Errorf("mesh header %q leaked to HTTP", k)
				}
			}
		})
	}
}

func TestErrorResponseWithoutInstance(t *testing.T) {
	h, _ := bus.ErrorResponse(bus.Errorf(bus.MeshUnavailable, "no NATS"), "")
	if _, ok := h[bus.HeaderInstance]; ok {
		t.Errorf("Mesh-Instance = %q, want absent", h[bus.HeaderInstance])
	}
}

func TestErrorResponseKeepsExplicitStatus(t *testing.T) {
	// A response that is too large is reported as 502, not too-large's 413.
	e := &bus.Error{Code: bus.TooLarge, Status: http.StatusBadGateway, Message: "response over 1 MiB"}
	h, _ := bus.ErrorResponse(e, "")
	if got := bus.First(h, bus.HeaderStatus); got != "502" {
		t.Errorf("Mesh-Status = %q, want 502", got)
	}
	if got := bus.Code("something-new").Status(); got != http.StatusBadGateway {
		t.Errorf("unknown code status = %d, want 502", got)
	}
}

// TestErrorResponseOverNATS checks that a mesh error, which has a body, is
// never taken for a no-responders status and arrives intact.
func TestErrorResponseOverNATS(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	sub, err := nc.Subscribe("codec.err", func(m *nats.Msg) {
		h, body := bus.ErrorResponse(bus.Errorf(bus.Overloaded, "reviews is at its concurrency limit"), "reviews-1")
		_ = m.RespondMsg(&nats.Msg{Header: h, Data: body})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := nc.Request("codec.err", nil, 5*time.Second)
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	if bus.IsNoResponders(m) {
		t.Error("error response taken for no-responders")
	}
	if bus.First(m.Header, bus.HeaderError) != "overloaded" || bus.First(m.Header, bus.HeaderStatus) != "503" ||
		bus.First(m.Header, "Retry-After") != "1" || string(m.Data) != "reviews is at its concurrency limit\n" {
		t.Errorf("got header %q body %q", m.Header, m.Data)
	}
}

func TestHTTPName(t *testing.T) {
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"Content-Type", "Content-Type", true},
		{"x-request-id", "X-Request-Id", true},
		{"traceparent", "Traceparent", true},
		{"tracestate", "Tracestate", true},
		{"baggage", "Baggage", true},
		{"Mesh-Esc-Status", "Status", true},
		{"mesh-esc-description", "Description", true},
		{"Mesh-Esc-Nats-Msg-Id", "Nats-Msg-Id", true},
		{"Mesh-Esc-", "", false},
		{"Mesh-Status", "", false},
		{"Mesh-Caller", "", false},
		{"mesh-instance", "", false},
		{"Status", "", false},
		{"Description", "", false},
		{"Nats-Msg-Id", "", false},
		{"NATS-SEQUENCE", "", false},
	}
	for _, tt := range tests {
		name, ok := bus.HTTPName(tt.key)
		if name != tt.want || ok != tt.wantOK {
			t.Errorf("HTTPName(%q) = %q, %v; want %q, %v", tt.key, name, ok, tt.want, tt.wantOK)
		}
	}
}
