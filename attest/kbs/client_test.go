package kbs

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cocoon-cc/cocoon/attest/sample"
)

// fakeKBS answers the RCAR handshake in memory, so that the tests run in a
// synctest bubble: /attest can be held until the test releases it, and
// every request is counted.
type fakeKBS struct {
	hold     chan struct{} // nil: answer at once; else /attest waits for it
	fail5xx  int           // this many /auth requests answer 503 first
	lifetime time.Duration // token validity from issue
	reject   bool          // /attest answers 401 (a verdict)

	mu        sync.Mutex
	auths     int
	attests   []context.Context // the context of each /attest request
	resources int
	issued    []string
}

func (k *fakeKBS) RoundTrip(r *http.Request) (*http.Response, error) {
	reply := func(status int, body string) (*http.Response, error) {
		return &http.Response{StatusCode: status, Body: io.NopCloser(strings.NewReader(body)), Header: http.Header{}, Request: r}, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch path.Base(r.URL.Path) {
	case "auth":
		if k.auths++; k.auths <= k.fail5xx {
			return reply(http.StatusServiceUnavailable, "")
		}
		return reply(http.StatusOK, `{"nonce":"bm9uY2U","extra-params":""}`)
	case "attest":
		k.attests = append(k.attests, r.Context())
		if k.reject {
			return reply(http.StatusUnauthorized, `{"type":"https://github.com/confidential-containers/kbs/errors/AttestationFailed","detail":"no"}`)
		}
		if k.hold != nil {
			k.mu.Unlock()
			select {
			case <-k.hold:
			case <-r.Context().Done():
				k.mu.Lock()
				return nil, r.Context().Err()
			}
			k.mu.Lock()
		}
		claims := fmt.Sprintf(`{"exp":%d,"n":%d}`, time.Now().Add(k.lifetime).Unix(), len(k.issued))
		tok := "e30." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".c2ln"
		k.issued = append(k.issued, tok)
		return reply(http.StatusOK, `{"token":"`+tok+`"}`)
	}
	k.resources++
	return reply(http.StatusUnauthorized, "")
}

func (k *fakeKBS) counts() (auths, attests int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.auths, len(k.attests)
}

func newFakeClient(t *testing.T, k *fakeKBS) *Client {
	t.Helper()
	if k.lifetime == 0 {
		k.lifetime = time.Hour
	}
	c, err := NewClient(Config{URL: "http://kbs.test", Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	c.http.Transport = k
	return c
}

type tokenResult struct {
	tok string
	err error
}

func tokenAsync(c *Client, ctx context.Context) <-chan tokenResult {
	ch := make(chan tokenResult, 1)
	go func() {
		tok, err := c.Token(ctx)
		ch <- tokenResult{tok, err}
	}()
	return ch
}

// TestTokenSingleFlight: callers that find no valid token share one
// handshake and all get its token.
func TestTokenSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := &fakeKBS{hold: make(chan struct{})}
		c := newFakeClient(t, k)
		var results []<-chan tokenResult
		for range 8 {
			results = append(results, tokenAsync(c, t.Context()))
		}
		synctest.Wait() // every caller waits; the handshake is held at /attest
		if auths, attests := k.counts(); auths != 1 || attests != 1 {
			t.Fatalf("8 concurrent callers ran %d auth and %d attest requests, want one handshake", auths, attests)
		}
		close(k.hold)
		for _, ch := range results {
			r := <-ch
			if r.err != nil || r.tok != k.issued[0] {
				t.Fatalf("Token = %q, %v; want the one handshake's token", r.tok, r.err)
			}
		}
		if n := c.Handshakes(); n != 1 {
			t.Fatalf("Handshakes = %d, want 1", n)
		}
	})
}

// TestTokenCallerCancel: a caller whose context ends returns at once with
// its context's error while the handshake goes on for the others; when
// the last waiter leaves, the handshake is cancelled and the next caller
// starts a new one.
func TestTokenCallerCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := &fakeKBS{hold: make(chan struct{})}
		c := newFakeClient(t, k)
		ctxA, cancelA := context.WithCancel(t.Context())
		a := tokenAsync(c, ctxA)
		b := tokenAsync(c, t.Context())
		synctest.Wait()
		cancelA()
		// Receiving before the handshake is released: a caller still
		// waiting for it would deadlock the bubble.
		if r := <-a; !errors.Is(r.err, context.Canceled) || r.tok != "" {
			t.Fatalf("cancelled caller: Token = %q, %v; want context.Canceled", r.tok, r.err)
		}
		synctest.Wait()
		if err := k.attests[0].Err(); err != nil {
			t.Fatalf("one caller's cancellation cancelled the shared handshake: %v", err)
		}
		close(k.hold)
		if r := <-b; r.err != nil || r.tok != k.issued[0] {
			t.Fatalf("remaining caller: Token = %q, %v; want the handshake's token", r.tok, r.err)
		}

		// Nobody waits any more: the handshake stops.
		k2 := &fakeKBS{hold: make(chan struct{})}
		c2 := newFakeClient(t, k2)
		ctxC, cancelC := context.WithCancel(t.Context())
		cc := tokenAsync(c2, ctxC)
		synctest.Wait()
		cancelC()
		if r := <-cc; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("only caller cancelled: Token = %q, %v; want context.Canceled", r.tok, r.err)
		}
		synctest.Wait()
		if err := k2.attests[0].Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("handshake nobody waits for: context error %v, want canceled", err)
		}
		close(k2.hold)
		if r := <-tokenAsync(c2, t.Context()); r.err != nil || len(k2.issued) != 1 || r.tok != k2.issued[0] {
			t.Fatalf("next caller: Token = %q, %v; want a new handshake's token", r.tok, r.err)
		}
		if _, attests := k2.counts(); attests != 2 {
			t.Fatalf("%d attest requests, want the cancelled one and a new one", attests)
		}
	})
}

// TestTokenCached: a valid cached token is returned without network; an
// expired one is replaced by a new handshake.
func TestTokenCached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := &fakeKBS{lifetime: time.Hour}
		c := newFakeClient(t, k)
		first, err := c.Token(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if tok, err := c.Token(t.Context()); err != nil || tok != first {
				t.Fatalf("cached Token = %q, %v; want %q", tok, err, first)
			}
		}
		if auths, attests := k.counts(); auths != 1 || attests != 1 {
			t.Fatalf("a cached token went to the network: %d auth, %d attest requests", auths, attests)
		}
		time.Sleep(2 * time.Hour) // the bubble's clock: the token expires
		second, err := c.Token(t.Context())
		if err != nil || second == first || second != k.issued[1] {
			t.Fatalf("after expiry Token = %q, %v; want a new token", second, err)
		}
		if n := c.Handshakes(); n != 2 {
			t.Fatalf("Handshakes = %d, want 2", n)
		}
	})
}

// TestTokenRetriesTransientFailures: a 5xx answer is retried after the
// retry delay, up to handshakeAttempts in all.
func TestTokenRetriesTransientFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := &fakeKBS{fail5xx: handshakeAttempts - 1}
		c := newFakeClient(t, k)
		start := time.Now()
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
		if auths, _ := k.counts(); auths != handshakeAttempts {
			t.Fatalf("%d auth requests, want %d", auths, handshakeAttempts)
		}
		if waited := time.Since(start); waited < time.Duration(handshakeAttempts-1)*handshakeRetryDelay {
			t.Fatalf("retries waited %v in all, want at least %v", waited, time.Duration(handshakeAttempts-1)*handshakeRetryDelay)
		}

		k = &fakeKBS{fail5xx: handshakeAttempts}
		c = newFakeClient(t, k)
		_, err := c.Token(t.Context())
		var se *StatusError
		if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable {
			t.Fatalf("Token = %v, want the last 503", err)
		}
		if auths, _ := k.counts(); auths != handshakeAttempts {
			t.Fatalf("%d auth requests, want %d", auths, handshakeAttempts)
		}
	})
}

// TestGetResourceReattestsOn401: a resource answered 401 re-attests and
// retries, resourceAttempts in all; a handshake the KBS rejects is not
// retried.
func TestGetResourceReattestsOn401(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := &fakeKBS{}
		c := newFakeClient(t, k)
		_, err := c.GetResource(t.Context(), "kbs:///r/t/x")
		var se *StatusError
		if !errors.As(err, &se) || se.Step != "get resource" || se.Status != http.StatusUnauthorized ||
			!strings.Contains(err.Error(), fmt.Sprintf("unauthorized after %d attempts", resourceAttempts)) {
			t.Fatalf("GetResource = %v, want unauthorized after %d attempts", err, resourceAttempts)
		}
		if _, attests := k.counts(); attests != resourceAttempts || k.resources != resourceAttempts || c.Handshakes() != resourceAttempts {
			t.Fatalf("%d handshakes (%d attest requests) for %d resource requests, want %d of each", c.Handshakes(), attests, k.resources, resourceAttempts)
		}

		k = &fakeKBS{reject: true}
		c = newFakeClient(t, k)
		_, err = c.GetResource(t.Context(), "kbs:///r/t/x")
		if !errors.As(err, &se) || se.Step != "attest" || se.Status != http.StatusUnauthorized {
			t.Fatalf("GetResource with a rejected handshake = %v, want the attest step's 401", err)
		}
		if auths, attests := k.counts(); auths != 1 || attests != 1 || k.resources != 0 {
			t.Fatalf("a rejected handshake was retried: %d auth, %d attest, %d resource requests", auths, attests, k.resources)
		}
	})
}
