package secretsfs

import (
	"context"
	"sync"
	"time"
)

// cache holds resolved plaintexts in memory for a TTL, shares one fetch
// among concurrent readers of the same key, and remembers failures briefly
// so that a directory listing or a retrying reader does not re-run a KBS
// handshake per request. Entries are zeroed when dropped.
type cache struct {
	ttl     time.Duration
	failTTL time.Duration
	now     func() time.Time
	// fetchTimeout bounds one fetch; the fetch runs detached from the
	// FUSE request that started it so that other waiters still get it.
	fetchTimeout time.Duration

	mu        sync.Mutex
	entries   map[string]*entry
	lastSweep time.Time
}

type entry struct {
	done    chan struct{} // closed when data/err/expires are set
	data    []byte
	err     error
	expires time.Time
}

func newCache(ttl time.Duration, now func() time.Time) *cache {
	failTTL := time.Second
	if ttl < failTTL {
		failTTL = ttl
	}
	return &cache{ttl: ttl, failTTL: failTTL, now: now, fetchTimeout: 2 * time.Minute, entries: map[string]*entry{}}
}

// get returns a copy of the value for key, fetching it when absent or
// expired. The caller owns the copy and should clear it when done.
func (c *cache) get(ctx context.Context, key string, fetch func(context.Context) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	e := c.entries[key]
	if e != nil {
		select {
		case <-e.done:
			if c.now().Before(e.expires) {
				defer c.mu.Unlock()
				return e.value()
			}
			c.dropLocked(key, e)
			e = nil
		default:
		}
	}
	if e != nil { // a fetch is in flight: wait for it
		c.mu.Unlock()
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return e.value()
	}
	e = &entry{done: make(chan struct{})}
	c.entries[key] = e
	c.sweepLocked(false)
	c.mu.Unlock()

	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.fetchTimeout)
	data, err := fetch(fctx)
	cancel()

	c.mu.Lock()
	defer c.mu.Unlock()
	e.data, e.err = data, err
	if err != nil {
		e.data = nil
		e.expires = c.now().Add(c.failTTL)
	} else {
		e.expires = c.now().Add(c.ttl)
	}
	close(e.done)
	return e.value()
}

// size is the length of key's value when it is cached and fresh; ok is
// false otherwise. It never fetches.
func (c *cache) size(key string) (n int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		return 0, false
	}
	select {
	case <-e.done:
		if e.err == nil && c.now().Before(e.expires) {
			return int64(len(e.data)), true
		}
	default:
	}
	return 0, false
}

// value copies the entry's data; c.mu must be held (dropLocked zeroes
// data under it).
func (e *entry) value() ([]byte, error) {
	if e.err != nil {
		return nil, e.err
	}
	out := make([]byte, len(e.data))
	copy(out, e.data)
	return out, nil
}

func (c *cache) dropLocked(key string, e *entry) {
	clear(e.data)
	e.data = nil
	if c.entries[key] == e {
		delete(c.entries, key)
	}
}

// sweep drops expired entries, so plaintexts nobody reads any more (or of
// sealed files that left their source) do not stay in memory past the TTL.
func (c *cache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(true)
}

// sweepLocked sweeps when forced or at most once per TTL.
func (c *cache) sweepLocked(force bool) {
	now := c.now()
	if !force && now.Sub(c.lastSweep) < c.ttl {
		return
	}
	c.lastSweep = now
	for k, e := range c.entries {
		select {
		case <-e.done:
			if !now.Before(e.expires) {
				c.dropLocked(k, e)
			}
		default:
		}
	}
}

// purge zeroes and drops every completed entry.
func (c *cache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		select {
		case <-e.done:
			c.dropLocked(k, e)
		default:
		}
	}
}
