package secretsfs

import (
	"time"

	"github.com/cocoon-cc/cocoon/internal/ttlcache"
)

// cache holds resolved plaintexts in memory for a TTL, shares one fetch
// among concurrent readers of the same key, and remembers failures briefly
// so that a directory listing or a retrying reader does not re-run a KBS
// handshake per request. Callers get copies; cached plaintexts are zeroed
// when dropped.
type cache = ttlcache.Cache[string, []byte]

// fetchTimeout bounds one fetch; the fetch runs detached from the FUSE
// request that started it so that other waiters still get it.
const fetchTimeout = 2 * time.Minute

// failTTL is how long a failed fetch is remembered: a second, or the TTL
// when that is shorter.
func failTTL(ttl time.Duration) time.Duration { return min(time.Second, ttl) }

func newCache(ttl time.Duration, now func() time.Time) *cache {
	fail := failTTL(ttl)
	return ttlcache.New[string](ttlcache.Options[[]byte]{
		Lifetime: func(_ []byte, err error) time.Duration {
			if err != nil {
				return fail
			}
			return ttl
		},
		SweepEvery:   ttl, // besides the periodic sweep, at most once per TTL on a fetch
		FetchTimeout: fetchTimeout,
		Clone: func(b []byte) []byte {
			out := make([]byte, len(b))
			copy(out, b)
			return out
		},
		Evict: func(b []byte) { clear(b) },
		Now:   now,
	})
}

// cachedSize is the length of key's plaintext when it is cached and fresh;
// ok is false otherwise. It never fetches.
func cachedSize(c *cache, key string) (n int64, ok bool) {
	r, ok := c.Peek(key)
	if !ok || r.Err != nil {
		return 0, false
	}
	return int64(len(r.Value)), true
}
