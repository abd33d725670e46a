package retry

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// delays collects every wait a Backoff hands out.
func delays(p Policy) []time.Duration {
	var out []time.Duration
	b := p.Backoff()
	for {
		d, ok := b.Next()
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

func equal(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackoffDelays(t *testing.T) {
	ms := time.Millisecond
	top := func(n int64) int64 { return n - 1 } // the largest value rand may give
	zero := func(int64) int64 { return 0 }
	for _, tc := range []struct {
		name string
		p    Policy
		want []time.Duration
	}{
		{"one attempt", Policy{Attempts: 1, Base: ms}, nil},
		{"zero attempts mean one", Policy{Base: ms}, nil},
		{"doubling capped", Policy{Attempts: 7, Base: 200 * ms, Max: 2 * time.Second},
			[]time.Duration{200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}},
		{"constant", Policy{Attempts: 5, Base: time.Second, Max: time.Second},
			[]time.Duration{time.Second, time.Second, time.Second, time.Second}},
		{"no cap", Policy{Attempts: 4, Base: ms}, []time.Duration{ms, 2 * ms, 4 * ms}},
		{"full jitter top", Policy{Attempts: 5, Base: 100 * ms, Max: 300 * ms, Jitter: FullJitter, Rand: top},
			[]time.Duration{100 * ms, 200 * ms, 300 * ms, 300 * ms}},
		{"full jitter bottom", Policy{Attempts: 3, Base: 100 * ms, Jitter: FullJitter, Rand: zero},
			[]time.Duration{0, 0}},
		{"decorrelated top", Policy{Attempts: 5, Base: 100 * ms, Max: time.Second, Jitter: DecorrelatedJitter, Rand: top},
			[]time.Duration{300 * ms, 900 * ms, time.Second, time.Second}},
		{"decorrelated bottom", Policy{Attempts: 4, Base: 100 * ms, Jitter: DecorrelatedJitter, Rand: zero},
			[]time.Duration{100 * ms, 100 * ms, 100 * ms}},
		{"huge base does not overflow", Policy{Attempts: 4, Base: maxDuration / 2, Max: time.Hour},
			[]time.Duration{time.Hour, time.Hour, time.Hour}},
		{"huge base no cap", Policy{Attempts: 4, Base: maxDuration / 2},
			[]time.Duration{maxDuration / 2, maxDuration - 1, maxDuration}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := delays(tc.p); !equal(got, tc.want) {
				t.Fatalf("delays = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestJitterStaysInBounds(t *testing.T) {
	base, top := 10*time.Millisecond, 80*time.Millisecond
	for range 200 {
		full := delays(Policy{Attempts: 8, Base: base, Max: top, Jitter: FullJitter})
		for i, d := range full {
			hi := min(base<<i, top)
			if d < 0 || d > hi {
				t.Fatalf("full jitter wait %d = %v, want in [0, %v]", i, d, hi)
			}
		}
		prev := base
		for i, d := range delays(Policy{Attempts: 8, Base: base, Max: top, Jitter: DecorrelatedJitter}) {
			if hi := min(3*prev, top); d < base || d > hi {
				t.Fatalf("decorrelated wait %d = %v, want in [%v, %v]", i, d, base, hi)
			}
			prev = d
		}
	}
}

func TestBackoffRetries(t *testing.T) {
	b := Policy{Attempts: 3, Base: time.Millisecond}.Backoff()
	for want := 1; want <= 2; want++ {
		if _, ok := b.Next(); !ok {
			t.Fatalf("Next %d: no retry left", want)
		}
		if b.Retries() != want {
			t.Fatalf("Retries = %d, want %d", b.Retries(), want)
		}
	}
	if _, ok := b.Next(); ok || b.Retries() != 2 {
		t.Fatalf("third Next: ok=%v retries=%d, want false 2", ok, b.Retries())
	}
}

var errTransient = errors.New("transient")

func TestDo(t *testing.T) {
	errFatal := errors.New("fatal")
	p := Policy{Attempts: 4, Base: time.Second, Max: 4 * time.Second,
		Retryable: func(err error) bool { return errors.Is(err, errTransient) }}
	for _, tc := range []struct {
		name     string
		results  []error // what each attempt returns; past the end, errTransient
		wantErr  error
		wantRuns int
		wantWait time.Duration
	}{
		{"first try", []error{nil}, nil, 1, 0},
		{"after two failures", []error{errTransient, errTransient, nil}, nil, 3, 3 * time.Second},
		{"fatal error stops", []error{errTransient, errFatal}, errFatal, 2, time.Second},
		{"attempts used up", nil, errTransient, 4, 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				runs := 0
				err := p.Do(t.Context(), func(attempt int) error {
					runs++
					if attempt != runs {
						t.Errorf("attempt = %d, want %d", attempt, runs)
					}
					if attempt <= len(tc.results) {
						return tc.results[attempt-1]
					}
					return errTransient
				})
				if err != tc.wantErr {
					t.Errorf("err = %v, want %v", err, tc.wantErr)
				}
				if runs != tc.wantRuns {
					t.Errorf("runs = %d, want %d", runs, tc.wantRuns)
				}
				// The bubble's clock moves only when every goroutine waits:
				// the elapsed time is exactly the sum of the waits.
				if got := time.Since(start); got != tc.wantWait {
					t.Errorf("waited %v, want %v", got, tc.wantWait)
				}
			})
		})
	}
}

func TestDoNilRetryableRetriesEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := 0
		err := Policy{Attempts: 3, Base: time.Millisecond}.Do(t.Context(), func(int) error {
			runs++
			return errors.New("any")
		})
		if err == nil || runs != 3 {
			t.Fatalf("err=%v runs=%d, want an error after 3 runs", err, runs)
		}
	})
}

func TestDoStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		runs := 0
		done := make(chan error)
		go func() {
			done <- Policy{Attempts: 10, Base: time.Minute}.Do(ctx, func(int) error {
				runs++
				return errTransient
			})
		}()
		synctest.Wait() // Do is asleep before its second attempt
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if runs != 1 {
			t.Fatalf("runs = %d, want 1", runs)
		}
	})
}

func TestDoReturnsOpErrorWhenContextEndedDuringAttempt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	runs := 0
	err := Policy{Attempts: 5, Base: time.Hour}.Do(ctx, func(int) error {
		runs++
		cancel()
		return errTransient
	})
	if err != errTransient || runs != 1 {
		t.Fatalf("err=%v runs=%d, want %v after 1 run", err, runs, errTransient)
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := Sleep(t.Context(), 3*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 3*time.Second {
			t.Fatalf("slept %v, want 3s", got)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sleep on a done context = %v, want context.Canceled", err)
		}
	})
}
