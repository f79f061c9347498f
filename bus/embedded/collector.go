package embedded

import (
	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
)

// Varzer is what NATSCollector reads: the monitoring figures (varz) of a
// NATS server in this process. *server.Server implements it.
type Varzer interface {
	Varz(*server.VarzOptions) (*server.Varz, error)
}

var _ Varzer = (*server.Server)(nil)

// NATSCollector exposes the monitoring figures of an embedded NATS server as
// natsmesh_nats_* metrics, read from its varz at scrape time.
type NATSCollector struct {
	s Varzer
}

var _ prometheus.Collector = (*NATSCollector)(nil)

// NewNATSCollector collects s's figures.
func NewNATSCollector(s Varzer) *NATSCollector { return &NATSCollector{s: s} }

func natsDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("natsmesh_nats_"+name, help, labels, nil)
}

var (
	descNATSInfo        = natsDesc("info", "The embedded NATS server: its name and version.", "server_name", "version")
	descNATSConns       = natsDesc("connections", "Client connections open now.")
	descNATSConnsTotal  = natsDesc("connections_total", "Client connections accepted since the server started.")
	descNATSSubs        = natsDesc("subscriptions", "Subscriptions held now.")
	descNATSSlow        = natsDesc("slow_consumers_total", "Clients disconnected because they did not read their messages fast enough.")
	descNATSStale       = natsDesc("stale_connections_total", "Connections closed because they stopped answering pings.")
	descNATSRoutes      = natsDesc("routes", "Routes to other servers of a cluster open now.")
	descNATSInMsgs      = natsDesc("received_messages_total", "Messages received from clients, routes, gateways and leaf nodes.")
	descNATSOutMsgs     = natsDesc("sent_messages_total", "Messages sent to clients, routes, gateways and leaf nodes.")
	descNATSInBytes     = natsDesc("received_bytes_total", "Payload bytes received.")
	descNATSOutBytes    = natsDesc("sent_bytes_total", "Payload bytes sent.")
	descNATSMem         = natsDesc("memory_bytes", "Resident memory of the process the server runs in (natsmesh server itself).")
	descNATSJSEnabled   = natsDesc("jetstream_enabled", "1 when JetStream is on.")
	descNATSJSMem       = natsDesc("jetstream_memory_bytes", "Memory JetStream streams use.")
	descNATSJSStore     = natsDesc("jetstream_storage_bytes", "File storage JetStream streams use.")
	descNATSJSAPI       = natsDesc("jetstream_api_requests_total", "JetStream API requests.")
	descNATSJSAPIErrors = natsDesc("jetstream_api_errors_total", "JetStream API requests answered with an error.")
	descNATSUp          = natsDesc("up", "1 when the server's figures could be read.")
)

// Describe implements prometheus.Collector.
func (c *NATSCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descNATSInfo, descNATSConns, descNATSConnsTotal, descNATSSubs, descNATSSlow, descNATSStale, descNATSRoutes,
		descNATSInMsgs, descNATSOutMsgs, descNATSInBytes, descNATSOutBytes, descNATSMem,
		descNATSJSEnabled, descNATSJSMem, descNATSJSStore, descNATSJSAPI, descNATSJSAPIErrors, descNATSUp,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *NATSCollector) Collect(ch chan<- prometheus.Metric) {
	v, err := c.s.Varz(nil)
	if err != nil || v == nil {
		ch <- prometheus.MustNewConstMetric(descNATSUp, prometheus.GaugeValue, 0)
		return
	}
	gauge := func(d *prometheus.Desc, x float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, labels...)
	}
	counter := func(d *prometheus.Desc, x float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, x)
	}
	gauge(descNATSUp, 1)
	gauge(descNATSInfo, 1, v.Name, v.Version)
	gauge(descNATSConns, float64(v.Connections))
	counter(descNATSConnsTotal, float64(v.TotalConnections))
	gauge(descNATSSubs, float64(v.Subscriptions))
	counter(descNATSSlow, float64(v.SlowConsumers))
	counter(descNATSStale, float64(v.StaleConnections))
	gauge(descNATSRoutes, float64(v.Routes))
	counter(descNATSInMsgs, float64(v.InMsgs))
	counter(descNATSOutMsgs, float64(v.OutMsgs))
	counter(descNATSInBytes, float64(v.InBytes))
	counter(descNATSOutBytes, float64(v.OutBytes))
	gauge(descNATSMem, float64(v.Mem))
	js := v.JetStream.Stats
	gauge(descNATSJSEnabled, oneIf(js != nil))
	if js != nil {
		gauge(descNATSJSMem, float64(js.Memory))
		gauge(descNATSJSStore, float64(js.Store))
		counter(descNATSJSAPI, float64(js.API.Total))
		counter(descNATSJSAPIErrors, float64(js.API.Errors))
	}
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
