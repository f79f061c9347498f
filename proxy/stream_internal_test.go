package proxy

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

func chunkMsg(seq int, data []byte, k, v string) *nats.Msg {
	h := nats.Header{bus.HeaderSeq: {strconv.Itoa(seq)}}
	if k != "" {
		h[k] = []string{v}
	}
	return &nats.Msg{Header: h, Data: data}
}

// feed makes a chunkReader over msgs, recording its credits.
func feed(msgs []*nats.Msg, credits *[]int64) *chunkReader {
	i := 0
	return &chunkReader{
		next: func() (*nats.Msg, error) {
			if i == len(msgs) {
				return nil, errors.New("no more messages")
			}
			i++
			return msgs[i-1], nil
		},
		credit: func(n int64) { *credits = append(*credits, n) },
	}
}

func TestChunkReaderCreditsInHalfWindows(t *testing.T) {
	var msgs []*nats.Msg
	var want []byte
	// A window and a quarter in 64 KiB chunks.
	n := int(streamWindow/(64<<10)) * 5 / 4
	for i := 1; i <= n; i++ {
		b := bytes.Repeat([]byte{byte(i)}, 64<<10)
		want = append(want, b...)
		msgs = append(msgs, chunkMsg(i, b, "", ""))
	}
	msgs = append(msgs, chunkMsg(n+1, nil, bus.HeaderEnd, "1"))
	var credits []int64
	got, err := io.ReadAll(feed(msgs, &credits))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(want))
	}
	// A credit of half a window after each half window, none for the last
	// quarter (the sender has room for it).
	if len(credits) != 2 || credits[0] != creditBatch || credits[1] != creditBatch {
		t.Fatalf("credits %v, want two of %d", credits, creditBatch)
	}
}

func TestChunkReaderSmallChunksCostMinCharge(t *testing.T) {
	var msgs []*nats.Msg
	for i := 1; i <= 64; i++ {
		msgs = append(msgs, chunkMsg(i, []byte("data: event\n\n"), "", ""))
	}
	msgs = append(msgs, chunkMsg(65, nil, bus.HeaderEnd, "1"))
	var credits []int64
	if _, err := io.ReadAll(feed(msgs, &credits)); err != nil {
		t.Fatal(err)
	}
	// A window holds at most 64 chunks however small: each costs minCharge.
	if len(credits) != 2 || credits[0] != creditBatch {
		t.Fatalf("credits %v, want two of %d", credits, creditBatch)
	}
}

func TestChunkReaderAborts(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []*nats.Msg
		code bus.Code
	}{
		{"a gap in Mesh-Seq", []*nats.Msg{chunkMsg(1, []byte("a"), "", ""), chunkMsg(3, []byte("c"), "", "")}, bus.UpstreamLost},
		{"a repeated chunk", []*nats.Msg{chunkMsg(1, []byte("a"), "", ""), chunkMsg(1, []byte("a"), "", "")}, bus.UpstreamLost},
		{"Mesh-Error", []*nats.Msg{chunkMsg(1, []byte("a"), "", ""), chunkMsg(2, []byte("the app closed the connection\n"), bus.HeaderError, string(bus.UpstreamUnreachable))}, bus.UpstreamUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var credits []int64
			got, err := io.ReadAll(feed(tc.msgs, &credits))
			var e *bus.Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("read %q, err %v; want %s", got, err, tc.code)
			}
			if string(got) != "a" {
				t.Fatalf("read %q before the failure, want %q", got, "a")
			}
		})
	}
}

// TestSenderStaysWithinCredit: a sender never has more bytes out than its
// receiver granted, and numbers its chunks from 1 up to the end.
func TestSenderStaysWithinCredit(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe("chunks", ch)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	grants := make(chan int64)
	snd := &sender{nc: nc, subject: "chunks", credit: streamWindow, chunk: chunkSize(nc.MaxPayload()),
		wait: func() (int64, error) {
			select {
			case n := <-grants:
				return n, nil
			case <-time.After(5 * time.Second):
				return 0, errors.New("no credit")
			}
		}}
	body := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // 3 MiB: three windows
	done := make(chan error, 1)
	go func() {
		err := snd.write(body)
		if err == nil {
			err = snd.end()
		}
		done <- err
	}()
	var got []byte
	var out int64 // sent and not credited back
	seq := 0
	for {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-time.After(100 * time.Millisecond):
			// The sender waits for credit: it has used the window.
			if out < streamWindow-charge(snd.chunk)+1 {
				t.Fatalf("the sender stopped with %d bytes out, before its window of %d", out, streamWindow)
			}
			grants <- creditBatch
			out -= creditBatch
			continue
		}
		seq++
		if bus.First(m.Header, bus.HeaderSeq) != strconv.Itoa(seq) {
			t.Fatalf("chunk %d has Mesh-Seq %q", seq, bus.First(m.Header, bus.HeaderSeq))
		}
		if m.Header[bus.HeaderEnd] != nil {
			break
		}
		out += charge(len(m.Data))
		if out > streamWindow {
			t.Fatalf("%d bytes out, over the window of %d", out, streamWindow)
		}
		got = append(got, m.Data...)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("received %d bytes, sent %d", len(got), len(body))
	}
}
