package luks2

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// unlockAsync runs UnlockContext in a goroutine; the result arrives on the
// returned channel. A watchdog far beyond any prompt return turns a hang
// into a test failure (it is not a speed assertion).
func unlockAsync(ctx context.Context, im *Image, pass string) <-chan error {
	done := make(chan error, 1)
	go func() {
		key, _, err := im.UnlockContext(ctx, []byte(pass))
		Zero(key)
		done <- err
	}()
	return done
}

func waitUnlock(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Minute):
		t.Fatal("UnlockContext did not return after its context was cancelled")
		return nil
	}
}

// costlyImage is a valid header whose single keyslot takes PBKDF2 at
// cryptsetup's maximum iteration count: an hour or more per attempt.
func costlyImage(t *testing.T) *Image {
	t.Helper()
	key := randomKey(t, 64)
	im, _ := newImage(t, key, "p")
	im.Header.Metadata.Keyslots["0"].KDF.Iterations = MaxIterations
	b, err := im.Encode()
	if err != nil {
		t.Fatal(err)
	}
	im, err = ReadImage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func TestUnlockCancelledContext(t *testing.T) {
	im := costlyImage(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := waitUnlock(t, unlockAsync(ctx, im, "p"))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

// TestUnlockCancelsPBKDF2InFlight cancels while PBKDF2 runs its 2^32-1
// iterations; PBKDF2 checks the context between chunks of iterations.
func TestUnlockCancelsPBKDF2InFlight(t *testing.T) {
	im := costlyImage(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := unlockAsync(ctx, im, "p")
	time.Sleep(50 * time.Millisecond) // let the derivation start (either way the result is the same)
	cancel()
	if err := waitUnlock(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

// TestUnlockCancelsArgon2InFlight holds an argon2 derivation in flight
// (argon2 cannot be interrupted) and checks UnlockContext returns on
// cancellation without waiting for it.
func TestUnlockCancelsArgon2InFlight(t *testing.T) {
	key := randomKey(t, 64)
	im, _ := newImage(t, key, "p")
	if _, err := im.AddKeyslot(key, []byte("a"), KDFParams{Type: "argon2id", Time: 1, MemoryKiB: 64, CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	delete(im.Header.Metadata.Keyslots, "0") // only the argon2 keyslot
	started, release := make(chan struct{}), make(chan struct{})
	real := argon2Derive
	t.Cleanup(func() { argon2Derive = real })
	argon2Derive = func(id bool, pw, salt []byte, tc, mem uint32, th uint8, n uint32) []byte {
		close(started)
		<-release
		return real(id, pw, salt, tc, mem, th, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := unlockAsync(ctx, im, "a")
	<-started
	cancel()
	if err := waitUnlock(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	close(release) // the abandoned derivation finishes and is discarded
}
