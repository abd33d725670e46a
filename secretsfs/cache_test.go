package secretsfs

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The subtests run in a synctest bubble: its clock moves only when every
// goroutine in it is blocked, so a time.Sleep is the TTL passing and
// synctest.Wait is "every reader is now waiting".
func TestCache(t *testing.T) {
	ctx := context.Background()
	t.Run("concurrent readers share one fetch", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newCache(time.Minute, time.Now)
			var fetches atomic.Int32
			release := make(chan struct{})
			fetch := func(context.Context) ([]byte, error) {
				fetches.Add(1)
				<-release
				return []byte("v"), nil
			}
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					v, err := c.Get(ctx, "k", fetch)
					if err == nil && string(v) != "v" {
						err = errors.New("wrong value")
					}
					errs <- err
				})
			}
			synctest.Wait() // one reader fetches, the others wait for it
			close(release)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if n := fetches.Load(); n != 1 {
				t.Fatalf("%d fetches, want 1", n)
			}
		})
	})

	t.Run("expiry refetches, callers get copies", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newCache(time.Minute, time.Now)
			n := 0
			fetch := func(context.Context) ([]byte, error) {
				n++
				return []byte{byte(n)}, nil
			}
			v1, _ := c.Get(ctx, "k", fetch)
			v1[0] = 99 // a caller's copy
			v2, _ := c.Get(ctx, "k", fetch)
			if v2[0] != 1 || n != 1 {
				t.Fatalf("cached value %v after %d fetches", v2, n)
			}
			time.Sleep(time.Minute)
			v3, _ := c.Get(ctx, "k", fetch)
			if v3[0] != 2 || n != 2 {
				t.Fatalf("after TTL: %v after %d fetches", v3, n)
			}
		})
	})

	t.Run("failures are remembered briefly", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newCache(time.Minute, time.Now)
			n := 0
			boom := errors.New("boom")
			fetch := func(context.Context) ([]byte, error) {
				n++
				return nil, boom
			}
			for range 3 {
				if _, err := c.Get(ctx, "k", fetch); !errors.Is(err, boom) {
					t.Fatalf("err = %v", err)
				}
			}
			if n != 1 {
				t.Fatalf("%d fetches within the failure TTL", n)
			}
			time.Sleep(failTTL(time.Minute))
			_, _ = c.Get(ctx, "k", fetch)
			if n != 2 {
				t.Fatalf("failure not retried after its TTL (%d fetches)", n)
			}
		})
	})

	t.Run("sweep and purge zero plaintext", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newCache(time.Minute, time.Now)
			secret := []byte("plaintext-to-zero")
			if _, err := c.Get(ctx, "a", func(context.Context) ([]byte, error) { return secret, nil }); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Minute)
			c.Sweep()
			if !bytes.Equal(secret, make([]byte, len(secret))) || c.Len() != 0 {
				t.Fatalf("expired entry not zeroed and dropped: %q, %d entries", secret, c.Len())
			}
			other := []byte("another")
			if _, err := c.Get(ctx, "b", func(context.Context) ([]byte, error) { return other, nil }); err != nil {
				t.Fatal(err)
			}
			c.Purge()
			if !bytes.Equal(other, make([]byte, len(other))) || c.Len() != 0 {
				t.Fatal("purge did not zero")
			}
		})
	})

	t.Run("waiter gives up with its context", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newCache(time.Minute, time.Now)
			release := make(chan struct{})
			defer close(release)
			go func() {
				_, _ = c.Get(ctx, "k", func(context.Context) ([]byte, error) { <-release; return nil, nil })
			}()
			synctest.Wait() // the first reader is fetching
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := c.Get(cctx, "k", nil); !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v", err)
			}
		})
	})
}
