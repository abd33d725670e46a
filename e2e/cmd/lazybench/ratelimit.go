package main

import (
	"context"
	"net"
	"sync"

	"golang.org/x/time/rate"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// limitedLink is a loopback TCP proxy whose connections share one token
// bucket: a registry behind a link of a given bandwidth. Both directions
// draw from the bucket (requests are a few hundred bytes; the responses
// are what it limits).
type limitedLink struct {
	// Host is "127.0.0.1:PORT": pull through this instead of upstream.
	Host string

	lim    *rate.Limiter
	l      net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// linkBurst is the token bucket's depth: about 2.6 ms at 100 MB/s.
const linkBurst = 256 << 10

// startLimitedLink starts a limitedLink to upstream at bytesPerSec,
// stopped (listener and every connection closed) at s's cleanup.
func startLimitedLink(s *harness.Script, upstream string, bytesPerSec float64) (*limitedLink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &limitedLink{Host: l.Addr().String(), lim: rate.NewLimiter(rate.Limit(bytesPerSec), linkBurst), l: l, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	k.wg.Add(1)
	go k.accept(upstream)
	s.Cleanup(k.close)
	return k, nil
}

func (k *limitedLink) accept(upstream string) {
	defer k.wg.Done()
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		var d net.Dialer
		u, err := d.DialContext(k.ctx, "tcp", upstream)
		if err != nil {
			c.Close()
			continue
		}
		if !k.track(c, u) {
			return
		}
		k.wg.Add(2)
		go k.pipe(u, c)
		go k.pipe(c, u)
	}
}

// track records the pair, or closes it and reports false once closing.
func (k *limitedLink) track(cs ...net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx.Err() != nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		k.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst through the token bucket, then closes both.
func (k *limitedLink) pipe(dst, src net.Conn) {
	defer k.wg.Done()
	defer func() {
		k.mu.Lock()
		delete(k.conns, dst)
		delete(k.conns, src)
		k.mu.Unlock()
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := k.lim.WaitN(k.ctx, n); werr != nil {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF or a closed connection
			return
		}
	}
}

func (k *limitedLink) close() {
	k.mu.Lock()
	k.cancel()
	k.l.Close()
	for c := range k.conns {
		c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
}
