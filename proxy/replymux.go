package proxy

import (
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// replyChanCap is the room of an ordinary call's channel.
const replyChanCap = 2

// replyMux receives the replies to every request a Transport sends on one
// wildcard inbox subscription, the way nats.go's own request multiplexer does,
// but keeps the waiting call registered until the caller is done with it and
// can fail all waiting calls at once when the connection drops (their replies
// can no longer arrive).
type replyMux struct {
	prefix string // "<inbox>."
	sub    *nats.Subscription

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *nats.Msg

	chans sync.Pool
}

func newReplyMux(nc *nats.Conn) (*replyMux, error) {
	m := &replyMux{
		prefix:  nc.NewInbox() + ".",
		pending: make(map[uint64]chan *nats.Msg),
	}
	// Room for an acknowledgement and the reply that may follow it before
	// the waiting call has read the first.
	m.chans.New = func() any { return make(chan *nats.Msg, replyChanCap) }
	sub, err := nc.Subscribe(m.prefix+"*", m.deliver)
	if err != nil {
		return nil, err
	}
	// Replies are handed over without blocking; this bounds what a flood of
	// stray messages on the inbox can queue.
	if err := sub.SetPendingLimits(64*1024, 256<<20); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	m.sub = sub
	return m, nil
}

// register returns a new reply subject, the channel its reply arrives on, and
// the id to release it with.
func (m *replyMux) register() (string, chan *nats.Msg, uint64) {
	return m.registerChan(m.chans.Get().(chan *nats.Msg))
}

// registerStream registers a call whose request body streams: the callee's
// credits and replies arrive on a channel with room for a window of chunks.
func (m *replyMux) registerStream() (string, chan *nats.Msg, uint64) {
	return m.registerChan(make(chan *nats.Msg, streamChanCap))
}

func (m *replyMux) registerChan(ch chan *nats.Msg) (string, chan *nats.Msg, uint64) {
	m.mu.Lock()
	m.next++
	id := m.next
	m.pending[id] = ch
	m.mu.Unlock()
	var buf [64]byte
	b := append(buf[:0], m.prefix...)
	b = strconv.AppendUint(b, id, 36)
	return string(b), ch, id
}

// release forgets a call. After it, nothing more is sent on ch, so ch is
// emptied and reused.
func (m *replyMux) release(id uint64, ch chan *nats.Msg) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
	if cap(ch) != replyChanCap {
		return // a stream's: not reused
	}
	for len(ch) > 0 {
		<-ch
	}
	m.chans.Put(ch)
}

// current is the channel the messages of call id arrive on now: after a
// response head that announces a stream, its chunks arrive on a channel of
// their own (see deliver).
func (m *replyMux) current(id uint64) chan *nats.Msg {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending[id]
}

func (m *replyMux) deliver(msg *nats.Msg) {
	if len(msg.Subject) <= len(m.prefix) {
		return
	}
	id, err := strconv.ParseUint(msg.Subject[len(m.prefix):], 36, 64)
	if err != nil {
		return
	}
	m.mu.Lock()
	if ch, ok := m.pending[id]; ok {
		if cap(ch) == replyChanCap && msg.Header[bus.HeaderStream] != nil {
			// A response head: a window of chunks may follow at once,
			// more than the call's channel holds. They go to a channel
			// with room for them, which the call takes with current.
			m.pending[id] = make(chan *nats.Msg, streamChanCap)
		}
		select {
		case ch <- msg:
		default: // a duplicate or late reply; the first ones win
		}
	}
	m.mu.Unlock()
}

// failAll wakes every waiting call with a nil message: the connection that
// would carry their replies is gone.
func (m *replyMux) failAll() {
	m.mu.Lock()
	for _, ch := range m.pending {
		select {
		case ch <- nil:
		default:
		}
	}
	m.mu.Unlock()
}

func (m *replyMux) close() {
	_ = m.sub.Unsubscribe()
}
