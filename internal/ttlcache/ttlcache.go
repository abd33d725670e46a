// Package ttlcache is the one in-memory result cache of cocoon: per key, one
// fetch runs at a time and every concurrent caller shares its result, which
// is then served until its lifetime ends. The lifetime is chosen per result,
// so a caller decides what is cached and for how long (verified manifests,
// policy verdicts, secret plaintexts, briefly a failure) and what never is
// (an error that a retry may cure).
//
// It never serves a result past its lifetime, never runs two fetches of one
// key at once, and never keeps a result whose lifetime is zero.
package ttlcache

import (
	"context"
	"math"
	"sync"
	"time"
)

// Forever is a lifetime that does not end: the result stays until it is
// evicted (MaxEntries, Purge).
const Forever time.Duration = math.MaxInt64

// Options configure a Cache.
type Options[V any] struct {
	// Lifetime says how long a finished fetch's result is served, counted
	// from when the fetch returned. Zero or less caches nothing: the result
	// goes to the callers that waited for that fetch and the next Get
	// fetches again. Nil caches every result Forever.
	Lifetime func(V, error) time.Duration
	// MaxEntries bounds the number of keys; when a new key finds the cache
	// full, every finished entry is dropped (fetches in flight stay). Zero
	// means no bound.
	MaxEntries int
	// SweepEvery makes a Get that starts a fetch first drop expired entries
	// when the last sweep is at least this old; zero leaves it to Sweep.
	SweepEvery time.Duration
	// FetchTimeout, when positive, runs each fetch detached from the
	// context of the caller that started it (other callers may be waiting
	// for it) and bounded by this timeout. Zero runs the fetch with the
	// caller's context.
	FetchTimeout time.Duration
	// Clone copies a value before a caller gets it; it runs under the
	// cache's lock. Nil hands out the cached value itself.
	Clone func(V) V
	// Evict is called, under the cache's lock, for each cached value the
	// cache drops (expired, swept, purged, over MaxEntries), e.g. to zero a
	// secret. It is not called for results that were never cached.
	Evict func(V)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Cache is a per-key single-flight cache whose entries expire. It is safe
// for concurrent use; the zero value is not usable, call New.
type Cache[K comparable, V any] struct {
	o Options[V]

	mu        sync.Mutex
	entries   map[K]*entry[V]
	lastSweep time.Time
}

type entry[V any] struct {
	done    chan struct{} // closed when v, err and expires are set
	v       V
	err     error
	expires time.Time // zero: never
}

// Result is a finished fetch's outcome.
type Result[V any] struct {
	Value V
	Err   error
}

// New returns an empty Cache.
func New[K comparable, V any](o Options[V]) *Cache[K, V] {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Cache[K, V]{o: o, entries: map[K]*entry[V]{}}
}

// Get returns the cached result for key, or runs fetch once for all the
// callers that ask for key while it runs. A caller whose ctx ends while it
// waits for another caller's fetch gets ctx.Err(); the fetch goes on.
func (c *Cache[K, V]) Get(ctx context.Context, key K, fetch func(context.Context) (V, error)) (V, error) {
	c.mu.Lock()
	if e := c.entries[key]; e != nil {
		select {
		case <-e.done:
			if c.fresh(e, c.o.Now()) {
				defer c.mu.Unlock()
				return c.result(e)
			}
			c.dropLocked(key, e)
		default:
			c.mu.Unlock()
			select {
			case <-e.done:
			case <-ctx.Done():
				var zero V
				return zero, ctx.Err()
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.result(e)
		}
	}
	if c.o.MaxEntries > 0 && len(c.entries) >= c.o.MaxEntries {
		c.dropFinishedLocked(func(*entry[V]) bool { return true })
	}
	e := &entry[V]{done: make(chan struct{})}
	c.entries[key] = e
	if c.o.SweepEvery > 0 {
		if now := c.o.Now(); now.Sub(c.lastSweep) >= c.o.SweepEvery {
			c.sweepLocked(now)
		}
	}
	c.mu.Unlock()

	fctx := ctx
	if c.o.FetchTimeout > 0 {
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), c.o.FetchTimeout)
		defer cancel()
	}
	v, err := fetch(fctx)

	c.mu.Lock()
	defer c.mu.Unlock()
	e.v, e.err = v, err
	life := Forever
	if c.o.Lifetime != nil {
		life = c.o.Lifetime(v, err)
	}
	switch {
	case life <= 0:
		if c.entries[key] == e {
			delete(c.entries, key)
		}
	case life < Forever:
		e.expires = c.o.Now().Add(life)
	}
	close(e.done)
	return c.result(e)
}

// Peek returns key's finished, unexpired result without fetching; ok is
// false when there is none. The value is not cloned: the caller must not
// modify or keep it (Evict may clear it once it expires).
func (c *Cache[K, V]) Peek(key K) (r Result[V], ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		return r, false
	}
	select {
	case <-e.done:
		if c.fresh(e, c.o.Now()) {
			return Result[V]{Value: e.v, Err: e.err}, true
		}
	default:
	}
	return r, false
}

// Len returns the number of keys held, fetches in flight included.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Sweep drops the expired entries, so that values nobody asks for again
// do not stay in memory past their lifetime.
func (c *Cache[K, V]) Sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(c.o.Now())
}

// Purge drops every finished entry, expired or not.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropFinishedLocked(func(*entry[V]) bool { return true })
}

func (c *Cache[K, V]) sweepLocked(now time.Time) {
	c.lastSweep = now
	c.dropFinishedLocked(func(e *entry[V]) bool { return !c.fresh(e, now) })
}

func (c *Cache[K, V]) dropFinishedLocked(drop func(*entry[V]) bool) {
	for k, e := range c.entries {
		select {
		case <-e.done:
			if drop(e) {
				c.dropLocked(k, e)
			}
		default:
		}
	}
}

func (c *Cache[K, V]) dropLocked(key K, e *entry[V]) {
	if c.entries[key] == e {
		delete(c.entries, key)
	}
	if c.o.Evict != nil {
		c.o.Evict(e.v)
	}
	var zero V
	e.v = zero
}

func (c *Cache[K, V]) fresh(e *entry[V], now time.Time) bool {
	return e.expires.IsZero() || now.Before(e.expires)
}

// result hands out e's outcome; c.mu must be held.
func (c *Cache[K, V]) result(e *entry[V]) (V, error) {
	if e.err != nil {
		var zero V
		return zero, e.err
	}
	if c.o.Clone != nil {
		return c.o.Clone(e.v), nil
	}
	return e.v, nil
}
