package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	return &http.Cookie{Name: "kbs-session-id", Value: s.id, Expires: s.expires} //nolint:gosec // trustee's cookie: KBS clients are not browsers, and a plain-HTTP KBS must keep its session
}

var (
	errSessionNotFound = errors.New("session not found")
	errSessionExpired  = errors.New("session expired.") //nolint:staticcheck // upstream's message, which clients match
	errTooManySessions = errors.New("too many open sessions; retry once some have expired")
)

// maxSweepInterval bounds how long an expired session can outlive its
// expiry before the sweeper deletes it.
const maxSweepInterval = time.Minute

// sweepInterval is how often expired sessions are deleted: the session
// timeout, at most maxSweepInterval.
func sweepInterval(timeout time.Duration) time.Duration { return min(timeout, maxSweepInterval) }

// sessionStore holds the RCAR sessions. Anyone may open one (/auth is
// unauthenticated), so their number is capped and expired ones are deleted
// by a sweeper on a timer as well as when looked up.
type sessionStore struct {
	mu      sync.Mutex
	m       map[string]*session
	timeout time.Duration
	max     int
	now     func() time.Time

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

func newSessionStore(timeout time.Duration, max int, now func() time.Time) *sessionStore {
	return &sessionStore{m: map[string]*session{}, timeout: timeout, max: max, now: now}
}

// sweepOn deletes expired sessions on every tick until close.
func (st *sessionStore) sweepOn(tick <-chan time.Time) {
	st.stop, st.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(st.done)
		for {
			select {
			case <-st.stop:
				return
			case <-tick:
				st.mu.Lock()
				st.sweepLocked()
				st.mu.Unlock()
			}
		}
	}()
}

// close stops the sweeper and waits for it.
func (st *sessionStore) close() {
	if st.stop == nil {
		return
	}
	st.stopOnce.Do(func() { close(st.stop) })
	<-st.done
}

func (st *sessionStore) sweepLocked() {
	now := st.now()
	for id, s := range st.m {
		if s.expires.Before(now) {
			delete(st.m, id)
		}
	}
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
	if len(st.m) >= st.max {
		st.sweepLocked()
		if len(st.m) >= st.max {
			return nil, fmt.Errorf("%w (%d)", errTooManySessions, st.max)
		}
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
