//go:build unix

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// connAlive reports whether a kept-alive idle connection can be reused: a
// non-blocking peek sees EOF when the app has closed it, and bytes when the
// app sent something unasked.
func connAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0: // bytes nobody asked for (a 408 before closing, say): unusable
			alive = false
		case n == 0 && rerr == nil: // orderly close
			alive = false
		case rerr != nil && !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EINTR):
			alive = false
		}
		return true
	})
	return err == nil && alive
}
