package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// Every instance answers NATS micro discovery with micro's own documents, so
// standard NATS tooling lists mesh services, and its STATS count the traffic.
func TestMicroDiscovery(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	_, a := startCallee(t, s, "disco", app, nil)
	_, b := startCallee(t, s, "disco", app, nil)
	nc := meshtest.Connect(t, s)

	// Known traffic, spread over both instances by the queue group.
	tr := newTransport(t, s, proxy.TransportConfig{})
	send := func(path string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://disco"+path, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for i := 0; i < 7; i++ {
		send("/ok")
	}
	for i := 0; i < 3; i++ {
		send("/fail")
	}

	// $SRV.PING reaches every instance.
	inbox := nats.NewInbox()
	replies := make(chan *nats.Msg, 8)
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest("$SRV.PING", inbox, nil); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for len(ids) < 2 {
		select {
		case m := <-replies:
			var p micro.Ping
			if err := json.Unmarshal(m.Data, &p); err != nil || p.Type != micro.PingResponseType || p.Name != "disco" {
				t.Fatalf("ping answer %s", m.Data)
			}
			ids = append(ids, p.ID)
		case <-time.After(3 * time.Second):
			t.Fatalf("%d ping answers, want 2", len(ids))
		}
	}
	sort.Strings(ids)
	want := []string{a.Instance(), b.Instance()}
	sort.Strings(want)
	if ids[0] != want[0] || ids[1] != want[1] {
		t.Fatalf("ping answered by %v, want %v", ids, want)
	}

	request := func(subject string) map[string]any {
		t.Helper()
		m, err := nc.Request(subject, nil, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		var doc map[string]any
		if err := json.Unmarshal(m.Data, &doc); err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		return doc
	}
	hasKeys := func(what string, doc map[string]any, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, ok := doc[k]; !ok {
				t.Errorf("%s has no %q field: %v", what, k, doc)
			}
		}
	}
	for _, subj := range []string{"$SRV.PING.disco", "$SRV.PING.disco." + a.Instance()} {
		hasKeys(subj, request(subj), "name", "id", "version", "metadata", "type")
	}
	info := request("$SRV.INFO.disco." + a.Instance())
	hasKeys("info", info, "name", "id", "version", "metadata", "type", "description", "endpoints")
	if info["type"] != micro.InfoResponseType {
		t.Fatalf("info type %v", info["type"])
	}
	eps, _ := info["endpoints"].([]any)
	if len(eps) != 1 {
		t.Fatalf("info endpoints %v, want one", info["endpoints"])
	}
	ep := eps[0].(map[string]any)
	hasKeys("info endpoint", ep, "name", "subject", "queue_group", "metadata")
	if ep["subject"] != "mesh.rpc.disco.*" || ep["queue_group"] != "disco" {
		t.Fatalf("endpoint %v, want subject mesh.rpc.disco.* in queue group disco", ep)
	}

	stats := request("$SRV.STATS.disco." + a.Instance())
	hasKeys("stats", stats, "name", "id", "version", "metadata", "type", "started", "endpoints")
	seps, _ := stats["endpoints"].([]any)
	if len(seps) != 1 {
		t.Fatalf("stats endpoints %v", stats["endpoints"])
	}
	hasKeys("stats endpoint", seps[0].(map[string]any), "name", "subject", "queue_group", "num_requests", "num_errors", "last_error", "processing_time", "average_processing_time")

	// The counts add up to the traffic sent, across both instances.
	total, errs := 0, 0
	for _, inst := range []string{a.Instance(), b.Instance()} {
		m, err := nc.Request("$SRV.STATS.disco."+inst, nil, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var st micro.Stats
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != micro.StatsResponseType || st.ID != inst || len(st.Endpoints) != 1 {
			t.Fatalf("stats of %s: %+v", inst, st)
		}
		e := st.Endpoints[0]
		total += e.NumRequests
		errs += e.NumErrors
		if e.NumRequests > 0 && (e.ProcessingTime <= 0 || e.AverageProcessingTime <= 0) {
			t.Fatalf("stats of %s count %d requests but no processing time", inst, e.NumRequests)
		}
	}
	if total != 10 || errs != 3 {
		t.Fatalf("stats count %d requests and %d errors, want 10 and 3", total, errs)
	}
}
