// Package retry is the one retry loop of the network clients (the registry
// client and the KBS client): a bounded number of attempts, exponential
// backoff capped at a maximum delay, jitter so that many clients do not
// retry in step, and a predicate that says which errors are worth another
// attempt. It never retries past its context and never sleeps after the last
// attempt.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Jitter says how a wait is spread around the exponential backoff.
type Jitter int

const (
	// NoJitter waits exactly Base, 2*Base, 4*Base, ... capped at Max
	// (Base == Max gives a constant delay).
	NoJitter Jitter = iota
	// FullJitter waits a uniform random time in [0, d] where d is the
	// NoJitter delay.
	FullJitter
	// DecorrelatedJitter waits a uniform random time in [Base, 3*previous
	// wait], capped at Max.
	DecorrelatedJitter
)

// Policy is how an operation is retried. The zero value makes one attempt.
type Policy struct {
	// Attempts is how many times the operation runs in all, the first
	// included (values below 1 mean 1).
	Attempts int
	// Base is the delay before the second attempt (before jitter); each
	// further retry doubles it.
	Base time.Duration
	// Max caps every delay; 0 means no cap.
	Max time.Duration
	// Jitter spreads the delays.
	Jitter Jitter
	// Retryable reports whether a failed attempt may succeed if repeated;
	// nil retries every error.
	Retryable func(error) bool
	// Rand returns a uniform random number in [0, n) for n > 0; nil uses
	// math/rand/v2 (tests set it to get known delays).
	Rand func(n int64) int64
}

// Do runs op until it returns nil, returns an error that p.Retryable
// rejects, has run p.Attempts times, or ctx is done. It returns op's last
// error, or ctx.Err() if ctx ends while it waits for the next attempt. op
// receives the attempt number, starting at 1.
func (p Policy) Do(ctx context.Context, op func(attempt int) error) error {
	b := p.Backoff()
	for attempt := 1; ; attempt++ {
		err := op(attempt)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || (p.Retryable != nil && !p.Retryable(err)) {
			return err
		}
		d, ok := b.Next()
		if !ok {
			return err
		}
		if err := Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Backoff returns the delays of one run of retries, for loops that cannot be
// written as a single function call (a stream that resumes across reads).
func (p Policy) Backoff() *Backoff {
	return &Backoff{p: p}
}

// Backoff hands out the waits between the attempts of one operation.
type Backoff struct {
	p       Policy
	retries int           // retries handed out so far
	prev    time.Duration // the last wait, for DecorrelatedJitter
}

// Next returns how long to wait before the next attempt, and false when no
// attempt is left.
func (b *Backoff) Next() (time.Duration, bool) {
	if b.retries+1 >= b.p.Attempts {
		return 0, false
	}
	b.retries++
	var d time.Duration
	switch b.p.Jitter {
	case DecorrelatedJitter:
		prev := max(b.prev, b.p.Base)
		hi := b.capped(3 * prev)
		if hi < prev { // overflow
			hi = b.capped(maxDuration)
		}
		d = b.p.Base
		if hi > d {
			d += b.rand(int64(hi - d + 1))
		}
		d = b.capped(d)
	case FullJitter:
		d = b.rand(int64(b.exponential()) + 1)
	default:
		d = b.exponential()
	}
	b.prev = d
	return d, true
}

// Retries returns how many waits Next has handed out.
func (b *Backoff) Retries() int { return b.retries }

const maxDuration = time.Duration(1<<63 - 1)

// exponential is Base << (retries-1), capped at Max.
func (b *Backoff) exponential() time.Duration {
	d := b.p.Base
	for i := 1; i < b.retries; i++ {
		if d > maxDuration/2 {
			return b.capped(maxDuration)
		}
		d *= 2
		if b.p.Max > 0 && d >= b.p.Max {
			break
		}
	}
	return b.capped(d)
}

func (b *Backoff) capped(d time.Duration) time.Duration {
	if b.p.Max > 0 && d > b.p.Max {
		return b.p.Max
	}
	return max(d, 0)
}

func (b *Backoff) rand(n int64) time.Duration {
	if n <= 0 {
		return 0
	}
	if b.p.Rand != nil {
		return time.Duration(b.p.Rand(n))
	}
	return time.Duration(rand.Int64N(n)) //nolint:gosec // jitter spreads retries; it guards nothing
}

// Sleep waits for d or until ctx is done, whichever comes first, and returns
// ctx.Err() in the second case.
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
