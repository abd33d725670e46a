package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
)

// countingBody is a request body of size bytes that counts what was read.
type countingBody struct {
	size, read int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.read >= b.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.size-b.read))
	for i := range p[:n] {
		p[i] = 'a'
	}
	b.read += int64(n)
	return n, nil
}

func postAuth(t *testing.T, srv http.Handler) (*http.Cookie, int) {
	t.Helper()
	req, _ := json.Marshal(kbs.Request{Version: kbs.ProtocolVersion, TEE: attest.TEESample, ExtraParams: json.RawMessage(`{}`)})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, kbs.PathPrefix+"/auth", bytes.NewReader(req)))
	for _, c := range rec.Result().Cookies() {
		if c.Name == kbs.SessionCookie {
			return c, rec.Code
		}
	}
	return nil, rec.Code
}

func postAttest(srv http.Handler, cookie *http.Cookie, body *countingBody) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, kbs.PathPrefix+"/attest", body)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	return rec
}

// A caller without a live session is answered before its body is read,
// however large; one with a session gets at most MaxAttestBody read.
func TestAttestBodyBounded(t *testing.T) {
	e := newEnv(t, server.Options{})
	const huge = 32 << 20
	for name, cookie := range map[string]*http.Cookie{
		"no cookie":     nil,
		"bogus cookie":  {Name: kbs.SessionCookie, Value: "0123456789abcdef0123456789abcdef"},
		"garbage value": {Name: kbs.SessionCookie, Value: strings.Repeat("x", 100)},
	} {
		t.Run(name, func(t *testing.T) {
			body := &countingBody{size: huge}
			rec := postAttest(e.srv, cookie, body)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", rec.Code)
			}
			if body.read != 0 {
				t.Fatalf("read %d body bytes before refusing an unknown session", body.read)
			}
		})
	}
	t.Run("live session, oversized body", func(t *testing.T) {
		cookie, code := postAuth(t, e.srv)
		if cookie == nil {
			t.Fatalf("auth: status %d, no cookie", code)
		}
		body := &countingBody{size: 4 * server.MaxAttestBody}
		rec := postAttest(e.srv, cookie, body)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", rec.Code)
		}
		if body.read > server.MaxAttestBody+64<<10 {
			t.Fatalf("read %d body bytes, want at most about %d", body.read, server.MaxAttestBody)
		}
		if !strings.Contains(rec.Body.String(), "too large") {
			t.Fatalf("error %s does not say the body is too large", rec.Body)
		}
	})
}

// /auth is refused once MaxSessions sessions are open, and accepted again
// when some have expired.
func TestSessionCap(t *testing.T) {
	e := newEnv(t, server.Options{MaxSessions: 2, SessionTimeout: time.Minute})
	for i := range 2 {
		if c, code := postAuth(t, e.srv); c == nil {
			t.Fatalf("auth %d: status %d", i, code)
		}
	}
	c, code := postAuth(t, e.srv)
	if c != nil || code != http.StatusUnauthorized {
		t.Fatalf("auth beyond the cap: cookie %v, status %d; want 401", c, code)
	}
	if n := e.srv.Sessions(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	e.clock.Advance(2 * time.Minute)
	if c, code := postAuth(t, e.srv); c == nil {
		t.Fatalf("auth after expiry: status %d", code)
	}
	if n := e.srv.Sessions(); n != 1 {
		t.Fatalf("%d sessions after expiry, want 1", n)
	}
}
