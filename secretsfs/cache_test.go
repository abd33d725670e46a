package secretsfs

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct{ off atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *fakeClock) advance(d time.Duration) { c.off.Add(int64(d)) }

func TestCache(t *testing.T) {
	ctx := context.Background()
	t.Run("concurrent readers share one fetch", func(t *testing.T) {
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
				v, err := c.get(ctx, "k", fetch)
				if err == nil && string(v) != "v" {
					err = errors.New("wrong value")
				}
				errs <- err
			})
		}
		time.Sleep(50 * time.Millisecond)
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

	t.Run("expiry refetches, callers get copies", func(t *testing.T) {
		clk := &fakeClock{}
		c := newCache(time.Minute, clk.now)
		n := 0
		fetch := func(context.Context) ([]byte, error) {
			n++
			return []byte{byte(n)}, nil
		}
		v1, _ := c.get(ctx, "k", fetch)
		v1[0] = 99 // a caller's copy
		v2, _ := c.get(ctx, "k", fetch)
		if v2[0] != 1 || n != 1 {
			t.Fatalf("cached value %v after %d fetches", v2, n)
		}
		clk.advance(time.Minute)
		v3, _ := c.get(ctx, "k", fetch)
		if v3[0] != 2 || n != 2 {
			t.Fatalf("after TTL: %v after %d fetches", v3, n)
		}
	})

	t.Run("failures are remembered briefly", func(t *testing.T) {
		clk := &fakeClock{}
		c := newCache(time.Minute, clk.now)
		n := 0
		boom := errors.New("boom")
		fetch := func(context.Context) ([]byte, error) {
			n++
			return nil, boom
		}
		for range 3 {
			if _, err := c.get(ctx, "k", fetch); !errors.Is(err, boom) {
				t.Fatalf("err = %v", err)
			}
		}
		if n != 1 {
			t.Fatalf("%d fetches within the failure TTL", n)
		}
		clk.advance(c.failTTL)
		_, _ = c.get(ctx, "k", fetch)
		if n != 2 {
			t.Fatalf("failure not retried after its TTL (%d fetches)", n)
		}
	})

	t.Run("sweep and purge zero plaintext", func(t *testing.T) {
		clk := &fakeClock{}
		c := newCache(time.Minute, clk.now)
		secret := []byte("plaintext-to-zero")
		if _, err := c.get(ctx, "a", func(context.Context) ([]byte, error) { return secret, nil }); err != nil {
			t.Fatal(err)
		}
		clk.advance(2 * time.Minute)
		c.sweep()
		if !bytes.Equal(secret, make([]byte, len(secret))) || len(c.entries) != 0 {
			t.Fatalf("expired entry not zeroed and dropped: %q, %d entries", secret, len(c.entries))
		}
		other := []byte("another")
		if _, err := c.get(ctx, "b", func(context.Context) ([]byte, error) { return other, nil }); err != nil {
			t.Fatal(err)
		}
		c.purge()
		if !bytes.Equal(other, make([]byte, len(other))) || len(c.entries) != 0 {
			t.Fatal("purge did not zero")
		}
	})

	t.Run("waiter gives up with its context", func(t *testing.T) {
		c := newCache(time.Minute, time.Now)
		release := make(chan struct{})
		defer close(release)
		go func() {
			_, _ = c.get(ctx, "k", func(context.Context) ([]byte, error) { <-release; return nil, nil })
		}()
		time.Sleep(20 * time.Millisecond)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := c.get(cctx, "k", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
}
