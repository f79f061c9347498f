package proxy

import (
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// outcomeOf is what an attempt's reply or failure says, for the retry
// decision and the breaker.
func outcomeOf(m *nats.Msg, merr *bus.Error) traffic.Outcome {
	if merr != nil {
		return traffic.Outcome{Code: merr.Code, Status: merr.Status, Lost: merr.Code == bus.UpstreamLost}
	}
	if c := bus.First(m.Header, bus.HeaderError); c != "" {
		return traffic.Outcome{Code: bus.Code(c)}
	}
	return traffic.Outcome{Status: statusOf(m)}
}

// statusOf is the status a reply carries, 0 if it has none that is valid.
func statusOf(m *nats.Msg) int {
	s := bus.First(m.Header, bus.HeaderStatus)
	if len(s) != 3 {
		return 0
	}
	n := 0
	for i := 0; i < 3; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}
