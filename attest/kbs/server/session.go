package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"sync"
	"time"
)

// session is one RCAR handshake: Authed after /auth, Attested once a token
// was issued. Its expiry is fixed at /auth, as in Trustee.
type session struct {
	id      string
	tee     string
	nonce   string
	expires time.Time
	token   string // non-empty once attested
}

func (s *session) cookie() *http.Cookie {
	return &http.Cookie{Name: "kbs-session-id", Value: s.id, Expires: s.expires}
}

var (
	errSessionNotFound = errors.New("session not found")
	errSessionExpired  = errors.New("session expired.")
)

const sweepInterval = time.Minute

type sessionStore struct {
	mu        sync.Mutex
	m         map[string]*session
	timeout   time.Duration
	now       func() time.Time
	lastSweep time.Time
}

func newSessionStore(timeout time.Duration, now func() time.Time) *sessionStore {
	return &sessionStore{m: map[string]*session{}, timeout: timeout, now: now, lastSweep: now()}
}

func (st *sessionStore) create(tee, nonce string) (*session, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	now := st.now()
	s := &session{id: hex.EncodeToString(b[:]), tee: tee, nonce: nonce, expires: now.Add(st.timeout)}
	st.mu.Lock()
	defer st.mu.Unlock()
	if now.Sub(st.lastSweep) > sweepInterval {
		for id, old := range st.m {
			if old.expires.Before(now) {
				delete(st.m, id)
			}
		}
		st.lastSweep = now
	}
	st.m[s.id] = s
	return s, nil
}

// get returns a copy of the live session id; an expired one is deleted.
func (st *sessionStore) get(id string) (session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.m[id]
	if !ok {
		return session{}, errSessionNotFound
	}
	if s.expires.Before(st.now()) {
		delete(st.m, id)
		return session{}, errSessionExpired
	}
	return *s, nil
}

// attest records the token of session id unless another request did first;
// it returns the token the session ends up with.
func (st *sessionStore) attest(id, token string) (string, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.m[id]
	if !ok {
		return "", errSessionNotFound
	}
	if s.token == "" {
		s.token = token
	}
	return s.token, nil
}

func (st *sessionStore) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.m)
}
