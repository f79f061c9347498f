package registry

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natsmesh/natsmesh/bus"
)

// Version is the version natsmesh instances report to NATS service
// discovery.
const Version = "0.1.0"

// EndpointCounts are an instance's request counters, for $SRV.STATS.
type EndpointCounts struct {
	Requests       int
	Errors         int
	LastError      string
	ProcessingTime time.Duration
}

// DiscoveryConfig describes an instance to NATS service discovery.
type DiscoveryConfig struct {
	Service     string // required
	Instance    string // required
	Prefix      string
	Description string
	Metadata    map[string]string
	// Counts returns the instance's counters; nil reports zeros.
	Counts func() EndpointCounts
}

// Discovery answers the NATS micro discovery requests ($SRV.PING, $SRV.INFO
// and $SRV.STATS, alone or followed by .<service> or .<service>.<instance>)
// for one instance, with the documents of nats.go's micro package, so that
// standard NATS tooling (`nats micro ls`) lists mesh services.
type Discovery struct {
	id      micro.ServiceIdentity
	desc    string
	started time.Time
	ep      micro.EndpointInfo
	counts  func() EndpointCounts
	subs    []*nats.Subscription
	once    sync.Once
}

// StartDiscovery subscribes the instance to the discovery subjects.
func StartDiscovery(nc *nats.Conn, cfg DiscoveryConfig) (*Discovery, error) {
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if cfg.Counts == nil {
		cfg.Counts = func() EndpointCounts { return EndpointCounts{} }
	}
	meta := map[string]string{"natsmesh.instance_subject": subj.InstCalls(cfg.Service, cfg.Instance)}
	for k, v := range cfg.Metadata {
		meta[k] = v
	}
	d := &Discovery{
		id:      micro.ServiceIdentity{Name: cfg.Service, ID: cfg.Instance, Version: Version, Metadata: meta},
		desc:    cfg.Description,
		started: time.Now().UTC(),
		ep: micro.EndpointInfo{
			Name: "http", Subject: subj.Calls(cfg.Service), QueueGroup: subj.QueueGroup(cfg.Service),
			Metadata: map[string]string{"natsmesh.protocol": "http-over-nats"},
		},
		counts: cfg.Counts,
	}
	if d.desc == "" {
		d.desc = "HTTP service " + cfg.Service + " on the natsmesh mesh"
	}
	for verb, h := range map[string]nats.MsgHandler{"PING": d.ping, "INFO": d.info, "STATS": d.stats} {
		for _, s := range []string{"$SRV." + verb, "$SRV." + verb + "." + cfg.Service, "$SRV." + verb + "." + cfg.Service + "." + cfg.Instance} {
			sub, err := nc.Subscribe(s, h)
			if err != nil {
				d.Stop()
				return nil, fmt.Errorf("registry: subscribe to %s: %w", s, err)
			}
			d.subs = append(d.subs, sub)
		}
	}
	return d, nil
}

func (d *Discovery) ping(m *nats.Msg) {
	respond(m, micro.Ping{ServiceIdentity: d.id, Type: micro.PingResponseType})
}

func (d *Discovery) info(m *nats.Msg) {
	respond(m, micro.Info{ServiceIdentity: d.id, Type: micro.InfoResponseType, Description: d.desc, Endpoints: []micro.EndpointInfo{d.ep}})
}

func (d *Discovery) stats(m *nats.Msg) {
	c := d.counts()
	es := &micro.EndpointStats{
		Name: d.ep.Name, Subject: d.ep.Subject, QueueGroup: d.ep.QueueGroup,
		NumRequests: c.Requests, NumErrors: c.Errors, LastError: c.LastError,
		ProcessingTime: c.ProcessingTime,
	}
	if c.Requests > 0 {
		es.AverageProcessingTime = c.ProcessingTime / time.Duration(c.Requests)
	}
	respond(m, micro.Stats{ServiceIdentity: d.id, Type: micro.StatsResponseType, Started: d.started, Endpoints: []*micro.EndpointStats{es}})
}

func respond(m *nats.Msg, v any) {
	if m.Reply == "" {
		return
	}
	if data, err := json.Marshal(v); err == nil {
		_ = m.Respond(data)
	}
}

// Stop unsubscribes. Safe to call twice.
func (d *Discovery) Stop() {
	d.once.Do(func() {
		for _, s := range d.subs {
			_ = s.Unsubscribe()
		}
	})
}
