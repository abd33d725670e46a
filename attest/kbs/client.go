package kbs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/internal/retry"
)

// Client retry policy, as guest-components: a resource fetch that gets 401
// re-attests and retries at once, 3 attempts in all; an RCAR handshake that
// fails for a transient reason (transport error, 5xx) is retried 5 times,
// 1 s apart. A handshake the KBS rejects with 401 is not retried: the
// verdict would not change.
const (
	resourceAttempts    = 3
	handshakeAttempts   = 5
	handshakeRetryDelay = time.Second
	defaultHTTPTimeout  = 60 * time.Second
	maxResponseSize     = 64 << 20
)

var (
	handshakeRetry = retry.Policy{Attempts: handshakeAttempts, Base: handshakeRetryDelay, Max: handshakeRetryDelay, Retryable: transient}
	resourceRetry  = retry.Policy{Attempts: resourceAttempts, Retryable: resourceUnauthorized}
)

// Config configures a Client.
type Config struct {
	URL             string // base URL, e.g. http://127.0.0.1:8080 (the client appends /kbs/v0)
	CertPEM         []byte // extra trusted root (aa.toml token_configs.kbs.cert)
	TEEKeyAlgorithm string // "ECDH-ES+A256KW-P256" (default), "ECDH-ES+A256KW-P521", "RSA-OAEP-256"
	Attester        attest.Attester
	InitDataTOML    []byte        // sent as init-data {"format":"toml","body":...} when non-nil
	HTTPTimeout     time.Duration // default 60s
	// Now is the clock used to decide whether the cached token expired;
	// nil means time.Now. Tests move it forward.
	Now func() time.Time
}

// ResourceGetter is the seam the rest of cocoon uses to fetch KBS
// resources by URI.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// StatusError reports a KBS answer other than 200 to one protocol step.
type StatusError struct {
	Step   string // "auth", "attest" or "get resource"
	Status int
	Info   *ErrorInformation // nil when the body was not a KBS error
}

func (e *StatusError) Error() string {
	if e.Info != nil {
		return fmt.Sprintf("%s: KBS answered %d %s: %s", e.Step, e.Status, e.Info.Variant(), e.Info.Detail)
	}
	return fmt.Sprintf("%s: KBS answered %d %s", e.Step, e.Status, http.StatusText(e.Status))
}

// Unwrap maps 404 to errdefs.ErrNotFound.
func (e *StatusError) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return errdefs.ErrNotFound
	}
	return nil
}

// Client attests to one KBS and fetches resources from it. It is safe for
// concurrent use: callers that need a token while none is valid share one
// handshake (see Token).
type Client struct {
	base     string // URL + PathPrefix
	attester attest.Attester
	initData *InitData
	http     *http.Client
	now      func() time.Time
	key      *TEEKey

	mu         sync.Mutex
	token      string
	times      TokenTimes
	flight     *handshakeFlight // the handshake in progress, if any
	handshakes int              // completed handshakes, for tests and metrics
}

// handshakeFlight is one handshake (with its retries) shared by the
// callers waiting for it. It runs under its own context, cancelled when
// the last waiter gives up.
type handshakeFlight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int   // guarded by Client.mu
	failed  error // the last failed attempt, guarded by Client.mu
	token   string
	err     error // token and err are set before done is closed
}

var _ ResourceGetter = (*Client)(nil)

// NewClient validates cfg and creates the client's ephemeral TEE key.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Attester == nil {
		return nil, errors.New("kbs client: no attester")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("kbs client: parse URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("kbs client: URL %q is not http(s)://host[:port]", cfg.URL)
	}
	key, err := GenerateTEEKey(cfg.TEEKeyAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("kbs client: %w", err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(cfg.CertPEM) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(cfg.CertPEM) {
			return nil, errors.New("kbs client: kbs_cert holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, fmt.Errorf("kbs client: cookie jar: %w", err)
	}
	timeout := cfg.HTTPTimeout
	if timeout <= 0 {
		timeout = defaultHTTPTimeout
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsCfg
	c := &Client{
		base:     strings.TrimRight(cfg.URL, "/") + PathPrefix,
		attester: cfg.Attester,
		http:     &http.Client{Jar: jar, Timeout: timeout, Transport: transport},
		now:      cfg.Now,
		key:      key,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if cfg.InitDataTOML != nil {
		c.initData = &InitData{Format: "toml", Body: string(cfg.InitDataTOML)}
	}
	return c, nil
}

// Token returns a valid attestation token: the cached one while it is
// valid (no network), else the result of an RCAR handshake. Concurrent
// callers share one handshake. A caller whose ctx ends stops waiting at
// once and gets ctx's error; the handshake goes on for the others and is
// cancelled only when no caller waits for it any more.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	if c.token != "" && c.times.ValidAt(c.now()) {
		tok := c.token
		c.mu.Unlock()
		return tok, nil
	}
	f := c.flight
	if f == nil {
		// Detached from this caller's cancellation (the flight's own
		// cancel stops it), keeping its values (logger).
		hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &handshakeFlight{done: make(chan struct{}), cancel: cancel}
		c.flight = f
		go c.fly(hctx, f)
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		c.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			f.cancel()
			if c.flight == f {
				c.flight = nil // the next caller starts afresh
			}
		}
		failed := f.failed
		c.mu.Unlock()
		if failed != nil { // waiting for a retry: say why
			return "", fmt.Errorf("RCAR handshake: %w (then %w)", failed, ctx.Err())
		}
		return "", fmt.Errorf("RCAR handshake with %s: %w", c.base, ctx.Err())
	}
}

// TokenAndKey returns a valid token and the PEM of the TEE private key the
// KBS encrypts to (the {"token","tee_keypair"} of AA's GetToken). The
// caller owns both secrets.
func (c *Client) TokenAndKey(ctx context.Context) (string, []byte, error) {
	tok, err := c.Token(ctx)
	if err != nil {
		return "", nil, err
	}
	pemKey, err := c.key.PrivatePEM()
	if err != nil {
		return "", nil, err
	}
	return tok, pemKey, nil
}

// Handshakes returns how many RCAR handshakes completed.
func (c *Client) Handshakes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handshakes
}

// fly runs the flight's handshake, caches the token it got and wakes the
// waiters.
func (c *Client) fly(ctx context.Context, f *handshakeFlight) {
	defer f.cancel()
	tok, times, err := c.attestWithRetries(ctx, f)
	c.mu.Lock()
	if err == nil {
		c.token, c.times = tok, times
		c.handshakes++
	}
	if c.flight == f {
		c.flight = nil
	}
	f.token, f.err = tok, err
	c.mu.Unlock()
	close(f.done)
}

func (c *Client) attestWithRetries(ctx context.Context, f *handshakeFlight) (tok string, times TokenTimes, err error) {
	err = handshakeRetry.Do(ctx, func(attempt int) error {
		var herr error
		if tok, times, herr = c.handshake(ctx); herr == nil {
			return nil
		}
		c.mu.Lock()
		f.failed = herr
		c.mu.Unlock()
		if attempt < handshakeAttempts && transient(herr) && ctx.Err() == nil {
			log.G(ctx).WithError(herr).WithField("attempt", attempt).Warn("kbs: RCAR handshake failed, retrying")
		}
		return herr
	})
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("RCAR handshake with %s: %w", c.base, err)
	}
	return tok, times, nil
}

// transient reports whether a failed handshake may succeed if repeated:
// transport errors and 5xx answers, but neither a KBS verdict (4xx) nor a
// server certificate we do not trust.
func transient(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status >= 500
	}
	var cv *tls.CertificateVerificationError
	return !errors.As(err, &cv)
}

// invalidate drops the cached token if it is still tok.
func (c *Client) invalidate(tok string) {
	c.mu.Lock()
	if c.token == tok {
		c.token = ""
	}
	c.mu.Unlock()
}

// handshake runs one RCAR handshake (auth, attest) and returns the token.
func (c *Client) handshake(ctx context.Context) (string, TokenTimes, error) {
	tee := c.attester.TEE()
	algs, err := json.Marshal(map[string][]HashAlgorithm{SupportedHashAlgorithmsKey: SupportedHashAlgorithms})
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("auth: encode extra-params: %w", err)
	}
	body, err := c.post(ctx, "auth", "/auth", Request{Version: ProtocolVersion, TEE: tee, ExtraParams: algs})
	if err != nil {
		return "", TokenTimes{}, err
	}
	ch, err := ParseChallenge(body)
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("auth: %w", err)
	}
	alg, err := ch.SelectedHashAlgorithm()
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("auth: %w", err)
	}
	pub := c.key.PublicJWK()
	const additionalEvidence = "" // cocoon attests no additional devices
	rd, err := ReportData(alg, pub, ch.Nonce, additionalEvidence)
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("attest: compute report data: %w", err)
	}
	ev, err := c.attester.Evidence(ctx, rd)
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("attest: %s evidence: %w", tee, err)
	}
	att := Attestation{
		InitData:    c.initData,
		RuntimeData: RuntimeData{Nonce: ch.Nonce, TEEPubKey: pub},
		TEEEvidence: CompositeEvidence{PrimaryEvidence: ev, AdditionalEvidence: additionalEvidence},
	}
	body, err = c.post(ctx, "attest", "/attest", att)
	if err != nil {
		return "", TokenTimes{}, err
	}
	var ar AttestationResponse
	if err := json.Unmarshal(body, &ar); err != nil || ar.Token == "" {
		return "", TokenTimes{}, fmt.Errorf("attest: decode response: no token (%v)", err)
	}
	times, err := ParseTokenTimes(ar.Token)
	if err != nil {
		return "", TokenTimes{}, fmt.Errorf("attest: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"tee": tee, "kbs": c.base, "hash": alg, "expires": times.Expiry}).Debug("kbs: RCAR handshake complete")
	return ar.Token, times, nil
}

func (c *Client) post(ctx context.Context, step, path string, msg any) ([]byte, error) {
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("%s: encode request: %w", step, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", step, err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(step, req)
}

func (c *Client) do(step string, req *http.Request) ([]byte, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", step, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read response: %w", step, err)
	}
	if len(body) > maxResponseSize {
		return nil, fmt.Errorf("%s: response exceeds %d bytes", step, maxResponseSize)
	}
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{Step: step, Status: resp.StatusCode}
		if info, err := ParseErrorInformation(body); err == nil {
			se.Info = info
		}
		return nil, se
	}
	return body, nil
}

// GetResource fetches and decrypts a resource. uri is kbs:///repo/type/tag,
// kbs://host/repo/type/tag (host ignored, as CDH) or repo/type/tag. The
// request carries both the session cookie (as guest-components' KBS client)
// and the token as a Bearer header (as CDH's passport mode); on 401 the
// client re-attests and retries, 3 attempts in all.
func (c *Client) GetResource(ctx context.Context, uri string) ([]byte, error) {
	ru, err := ParseResourceURI(uri)
	if err != nil {
		return nil, err
	}
	target := c.base + "/" + ru.RequestPath()
	var body []byte
	err = resourceRetry.Do(ctx, func(attempt int) error {
		tok, err := c.Token(ctx)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if body, err = c.do("get resource", req); resourceUnauthorized(err) {
			log.G(ctx).WithField("resource", ru.String()).WithField("attempt", attempt).WithError(err).Warn("kbs: resource request unauthorized, re-attesting")
			c.invalidate(tok)
		}
		return err
	})
	if resourceUnauthorized(err) {
		return nil, fmt.Errorf("get resource %s: unauthorized after %d attempts: %w", ru, resourceAttempts, err)
	}
	if err != nil {
		return nil, fmt.Errorf("get resource %s: %w", ru, err)
	}
	pt, err := c.key.DecryptResponse(body)
	if err != nil {
		return nil, fmt.Errorf("get resource %s: %w", ru, err)
	}
	return pt, nil
}

// resourceUnauthorized reports a 401 answer to a resource request (not to
// the handshake): the token expired or was revoked, so re-attest.
func resourceUnauthorized(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Step == "get resource" && se.Status == http.StatusUnauthorized
}
