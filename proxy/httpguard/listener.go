package httpguard

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Listener is a net.Listener that holds at most max connections: one
// accepted beyond them is answered with a 503 and closed at once, and
// counted.
type Listener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Uint64
}

// Limit wraps ln so that it holds at most max connections.
func Limit(ln net.Listener, max int) *Listener {
	if max <= 0 {
		max = DefaultMaxConns
	}
	return &Listener{Listener: ln, max: int64(max)}
}

// Refused counts the connections refused for being over the limit.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

// Open is the number of connections held now.
func (l *Listener) Open() int64 { return l.open.Load() }

// Accept returns the next connection within the limit, refusing those
// beyond it.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			go l.refuse(c)
			continue
		}
		return &conn{Conn: c, l: l}, nil
	}
}

// refuse answers a connection over the limit with a 503 and closes it.
func (l *Listener) refuse(c net.Conn) {
	msg := "this proxy holds its limit of " + strconv.FormatInt(l.max, 10) + " client connections; try again, reuse connections, or raise the limit (--max-conns)\n"
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nMesh-Error: overloaded\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
		strconv.Itoa(len(msg)) + "\r\n\r\n" + msg))
	_ = c.Close()
}

type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
