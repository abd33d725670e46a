package ttlcache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

var errBoom = errors.New("boom")

// counter returns a fetch that returns its call number, and the count.
func counter() (func(context.Context) (int, error), *atomic.Int32) {
	var n atomic.Int32
	return func(context.Context) (int, error) { return int(n.Add(1)), nil }, &n
}

func TestConcurrentCallersShareOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string, int](Options[int]{})
		var fetches atomic.Int32
		release := make(chan struct{})
		fetch := func(context.Context) (int, error) {
			fetches.Add(1)
			<-release
			return 7, nil
		}
		var wg sync.WaitGroup
		got := make([]int, 8)
		for i := range got {
			wg.Go(func() {
				v, err := c.Get(t.Context(), "k", fetch)
				if err != nil {
					t.Error(err)
				}
				got[i] = v
			})
		}
		synctest.Wait() // every caller is blocked: one in fetch, the rest waiting
		close(release)
		wg.Wait()
		for i, v := range got {
			if v != 7 {
				t.Errorf("caller %d got %d", i, v)
			}
		}
		if n := fetches.Load(); n != 1 {
			t.Fatalf("%d fetches, want 1", n)
		}
	})
}

func TestLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string, int](Options[int]{Lifetime: func(int, error) time.Duration { return time.Minute }})
		fetch, n := counter()
		for range 3 {
			if v, _ := c.Get(t.Context(), "k", fetch); v != 1 {
				t.Fatalf("got %d, want the cached 1", v)
			}
		}
		time.Sleep(time.Minute - time.Nanosecond)
		if v, _ := c.Get(t.Context(), "k", fetch); v != 1 {
			t.Fatalf("just before expiry: got %d, want 1", v)
		}
		time.Sleep(time.Nanosecond)
		if v, _ := c.Get(t.Context(), "k", fetch); v != 2 || n.Load() != 2 {
			t.Fatalf("at expiry: got %d after %d fetches, want 2 and 2", v, n.Load())
		}
		if v, _ := c.Get(t.Context(), "other", fetch); v != 3 {
			t.Fatalf("other key: got %d, want 3", v)
		}
	})
}

func TestLifetimePerResult(t *testing.T) {
	errFinal := errors.New("final")
	c := New[string, int](Options[int]{Lifetime: func(_ int, err error) time.Duration {
		switch {
		case err == nil, errors.Is(err, errFinal):
			return Forever
		default:
			return 0 // a retry may cure it
		}
	}})
	ctx := context.Background()
	runs := 0
	fail := func(err error) func(context.Context) (int, error) {
		return func(context.Context) (int, error) { runs++; return 0, err }
	}
	for range 2 {
		if _, err := c.Get(ctx, "transient", fail(errBoom)); !errors.Is(err, errBoom) {
			t.Fatalf("err = %v", err)
		}
	}
	if runs != 2 {
		t.Fatalf("a transient error was cached: %d fetches for 2 Gets", runs)
	}
	if _, ok := c.Peek("transient"); ok || c.Len() != 0 {
		t.Fatalf("a transient error is held (Peek ok=%v, Len=%d)", ok, c.Len())
	}
	runs = 0
	for range 2 {
		if _, err := c.Get(ctx, "final", fail(errFinal)); !errors.Is(err, errFinal) {
			t.Fatalf("err = %v", err)
		}
	}
	if r, ok := c.Peek("final"); runs != 1 || !ok || !errors.Is(r.Err, errFinal) {
		t.Fatalf("final error: %d fetches, Peek = %v %v", runs, r, ok)
	}
}

func TestErrorIsNeverServedAsValue(t *testing.T) {
	c := New[string, int](Options[int]{})
	v, err := c.Get(context.Background(), "k", func(context.Context) (int, error) { return 42, errBoom })
	if v != 0 || !errors.Is(err, errBoom) {
		t.Fatalf("Get = %d, %v; want 0, %v", v, err, errBoom)
	}
	v, err = c.Get(context.Background(), "k", nil)
	if v != 0 || !errors.Is(err, errBoom) {
		t.Fatalf("cached Get = %d, %v; want 0, %v", v, err, errBoom)
	}
}

func TestWaiterGivesUpWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string, int](Options[int]{})
		release := make(chan struct{})
		first := make(chan int)
		go func() {
			v, _ := c.Get(t.Context(), "k", func(context.Context) (int, error) { <-release; return 5, nil })
			first <- v
		}()
		synctest.Wait()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := c.Get(ctx, "k", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		close(release)
		if v := <-first; v != 5 {
			t.Fatalf("the fetch's own caller got %d", v)
		}
		if r, ok := c.Peek("k"); !ok || r.Value != 5 {
			t.Fatalf("Peek after the fetch = %v %v", r, ok)
		}
	})
}

func TestFetchTimeoutDetachesFromCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string, int](Options[int]{FetchTimeout: time.Minute})
		ctx, cancel := context.WithCancel(t.Context())
		var fetchErr error
		_, err := c.Get(ctx, "k", func(fctx context.Context) (int, error) {
			cancel() // the caller gives up: the fetch goes on
			if fctx.Err() != nil {
				return 0, fctx.Err()
			}
			<-fctx.Done() // until its own timeout
			fetchErr = fctx.Err()
			return 0, fetchErr
		})
		if !errors.Is(fetchErr, context.DeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("fetch ended with %v, Get with %v; want the fetch timeout", fetchErr, err)
		}
		c2 := New[string, int](Options[int]{})
		ctx, cancel = context.WithCancel(t.Context())
		_, err = c2.Get(ctx, "k", func(fctx context.Context) (int, error) {
			cancel()
			return 0, fctx.Err()
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("without FetchTimeout the fetch has the caller's context: %v", err)
		}
	})
}

func TestCloneAndEvict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var evicted [][]byte
		c := New[string, []byte](Options[[]byte]{
			Lifetime: func([]byte, error) time.Duration { return time.Minute },
			Clone:    func(b []byte) []byte { return append([]byte{}, b...) },
			Evict: func(b []byte) {
				evicted = append(evicted, b)
				clear(b)
			},
		})
		secret := []byte("secret")
		v, _ := c.Get(t.Context(), "a", func(context.Context) ([]byte, error) { return secret, nil })
		v[0] = 'X' // the caller's copy
		if v2, _ := c.Get(t.Context(), "a", nil); string(v2) != "secret" {
			t.Fatalf("cached value changed through a caller's copy: %q", v2)
		}
		time.Sleep(time.Minute)
		c.Sweep()
		if string(secret) != "\x00\x00\x00\x00\x00\x00" || len(evicted) != 1 || c.Len() != 0 {
			t.Fatalf("expired value not evicted: %q, %d evictions, %d left", secret, len(evicted), c.Len())
		}
		other := []byte("other")
		if _, err := c.Get(t.Context(), "b", func(context.Context) ([]byte, error) { return other, nil }); err != nil {
			t.Fatal(err)
		}
		c.Purge()
		if string(other) != "\x00\x00\x00\x00\x00" || c.Len() != 0 {
			t.Fatalf("purge did not evict: %q, %d left", other, c.Len())
		}
	})
}

func TestSweepEvery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[string, int](Options[int]{
			Lifetime:   func(int, error) time.Duration { return time.Second },
			SweepEvery: time.Minute,
		})
		fetch, _ := counter()
		if _, err := c.Get(t.Context(), "a", fetch); err != nil { // sweeps (first time), then holds a
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if _, err := c.Get(t.Context(), "b", fetch); err != nil { // within a minute of the last sweep: a stays
			t.Fatal(err)
		}
		if c.Len() != 2 {
			t.Fatalf("Len = %d, want 2 (no sweep yet)", c.Len())
		}
		time.Sleep(time.Minute)
		if _, err := c.Get(t.Context(), "c", fetch); err != nil { // sweeps a and b
			t.Fatal(err)
		}
		if c.Len() != 1 {
			t.Fatalf("Len = %d, want 1 after the sweep", c.Len())
		}
	})
}

func TestMaxEntriesDropsFinished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New[int, int](Options[int]{MaxEntries: 3})
		fetch, _ := counter()
		if _, err := c.Get(t.Context(), 1, fetch); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(t.Context(), 2, fetch); err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		go func() {
			if _, err := c.Get(t.Context(), 3, func(context.Context) (int, error) { <-release; return 0, nil }); err != nil {
				t.Error(err)
			}
		}()
		synctest.Wait()
		if _, err := c.Get(t.Context(), 4, fetch); err != nil { // full: 1 and 2 go, 3 (in flight) stays
			t.Fatal(err)
		}
		if c.Len() != 2 {
			t.Fatalf("Len = %d, want 2", c.Len())
		}
		if _, ok := c.Peek(1); ok {
			t.Fatal("a finished entry survived the bound")
		}
		close(release)
		synctest.Wait()
		if _, ok := c.Peek(3); !ok {
			t.Fatal("the fetch in flight was dropped")
		}
	})
}
