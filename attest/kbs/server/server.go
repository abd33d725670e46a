// Package server is cocoon's development Key Broker Service: it speaks
// Trustee's KBS protocol (RCAR 0.4.0, resource and admin API) on the wire,
// verifies evidence with cocoon's attest.Verifier implementations, issues
// ES256 EAR tokens, applies a Rego resource policy with Trustee's input and
// data shapes, and serves resources from a Trustee local-fs layout as JWE.
//
// It is for demos and tests, not production: sessions and the token key
// live in memory. It must never log or return resource bytes, token keys,
// tokens or admin credentials, and must never serve a resource without a
// verified token that the resource policy allows.
package server

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Defaults as Trustee's.
const (
	DefaultSessionTimeout = 5 * time.Minute
	DefaultTokenLifetime  = 5 * time.Minute
	nonceSize             = 32
	maxAuthBody           = 64 << 10
	maxPolicyBody         = 1 << 20
	policyID              = "resource-policy"
)

// MaxAttestBody bounds an /attest body: Trustee's default HTTP payload
// limit (http_server.payload_request_size = 2 MiB). Evidence is a few KiB
// (a TDX quote with its PCK chain about 5 KiB, an SNP report with its
// certificate table about 10 KiB, a vTPM quote of 24 PCRs about 3 KiB);
// what can grow is an event log (CCEL, AAEL) and the init-data TOML, both
// well under this in practice. The body is read only after the session
// cookie names a live session, so a caller without one costs no more than
// its headers.
const MaxAttestBody = 2 << 20

// DefaultMaxSessions caps the RCAR sessions held at once. /auth needs no
// credentials, so without a cap anyone could grow the session map until
// the KBS runs out of memory; a session costs well under 1 KiB before
// attestation and a few KiB with its token.
const DefaultMaxSessions = 10000

// Options configures a Server.
type Options struct {
	// Repository is the resource directory, DIR/<repo>/<type>/<tag> or
	// Trustee local_fs's flat DIR/<repo>\x2F<type>\x2F<tag>
	// (created if missing).
	Repository string
	// Policy is the resource policy Rego text; empty means DefaultPolicy.
	Policy string
	// Verifiers, one per TEE name.
	Verifiers []attest.Verifier
	// AdminPublicKey verifies admin bearer tokens (EdDSA). When nil, admin
	// endpoints are denied unless InsecureAdmin is set. (Trustee defaults
	// to InsecureAllowAll; cocoon-kbs chooses the safe side.)
	AdminPublicKey ed25519.PublicKey
	InsecureAdmin  bool
	// TokenKey signs tokens (ES256); nil generates one at start.
	TokenKey *ecdsa.PrivateKey
	// SessionTimeout and TokenLifetime default to 5 minutes.
	SessionTimeout time.Duration
	TokenLifetime  time.Duration
	// MaxSessions caps the open RCAR sessions (default
	// DefaultMaxSessions); /auth is refused while it is reached. Expired
	// sessions are deleted on a timer (every SessionTimeout, at most every
	// minute) and when the cap is reached.
	MaxSessions int
	// Now is the clock; nil means time.Now. Tests move it.
	Now func() time.Time
}

// Server is the development KBS. It implements http.Handler.
type Server struct {
	verifiers     map[string]attest.Verifier
	repo          *repository
	policy        *policyEngine
	signer        *tokenSigner
	sessions      *sessionStore
	sweepTicker   *time.Ticker
	adminKey      ed25519.PublicKey
	insecureAdmin bool
	tokenLifetime time.Duration
	now           func() time.Time
}

// New validates opts and builds the server.
func New(opts Options) (*Server, error) {
	if opts.Repository == "" {
		return nil, errors.New("kbs server: no repository directory")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = DefaultSessionTimeout
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	if opts.Policy == "" {
		opts.Policy = DefaultPolicy
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	s := &Server{
		verifiers:     map[string]attest.Verifier{},
		adminKey:      opts.AdminPublicKey,
		insecureAdmin: opts.InsecureAdmin,
		tokenLifetime: opts.TokenLifetime,
		now:           opts.Now,
		sessions:      newSessionStore(opts.SessionTimeout, opts.MaxSessions, opts.Now),
	}
	for _, v := range opts.Verifiers {
		if _, dup := s.verifiers[v.TEE()]; dup {
			return nil, fmt.Errorf("kbs server: two verifiers for tee %s", v.TEE())
		}
		s.verifiers[v.TEE()] = v
	}
	var err error
	if s.policy, err = newPolicyEngine(opts.Policy); err != nil {
		return nil, fmt.Errorf("kbs server: %w", err)
	}
	if s.signer, err = newTokenSigner(opts.TokenKey); err != nil {
		return nil, fmt.Errorf("kbs server: %w", err)
	}
	if s.repo, err = openRepository(opts.Repository); err != nil {
		return nil, fmt.Errorf("kbs server: %w", err)
	}
	s.sweepTicker = time.NewTicker(sweepInterval(opts.SessionTimeout))
	s.sessions.sweepOn(s.sweepTicker.C)
	return s, nil
}

// Close stops the session sweeper and releases the repository handle.
func (s *Server) Close() error {
	s.sweepTicker.Stop()
	s.sessions.close()
	return s.repo.close()
}

// TokenPublicKey returns the key that verifies this server's tokens.
func (s *Server) TokenPublicKey() *ecdsa.PublicKey { return &s.signer.key.PublicKey }

// statusWriter records the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ServeHTTP routes /kbs/v0/... and logs one line per request (method,
// path, status, duration, and the error cause on failure; never bodies,
// cookies or headers).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" && r.Method == http.MethodGet {
		// Outside the protocol prefix, as Trustee's: for readiness probes.
		w.WriteHeader(http.StatusOK)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	err := s.route(sw, r)
	var ke *kbsError
	if err != nil {
		ke = writeError(sw, err)
	}
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	entry := log.G(r.Context()).WithFields(log.Fields{
		"method":   r.Method,
		"path":     r.URL.Path,
		"status":   sw.status,
		"duration": time.Since(start).Round(time.Microsecond),
		"remote":   r.RemoteAddr,
	})
	if ke != nil {
		entry.WithField("error", ke.variant).WithError(ke).Info("kbs request failed")
		return
	}
	entry.Info("kbs request")
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), kbs.PathPrefix+"/")
	if !ok || rest == "" {
		return newError(VariantInvalidRequestPath, nil, "Request path %s is invalid", r.URL.Path)
	}
	raw := strings.Split(rest, "/")
	parts := make([]string, len(raw))
	for i, p := range raw {
		u, err := url.PathUnescape(p)
		if err != nil || strings.ContainsAny(u, "/\x00") {
			return newError(VariantInvalidRequestPath, nil, "Request path %s is invalid", r.URL.Path)
		}
		parts[i] = u
	}
	plugin, sub := parts[0], parts[1:]
	switch {
	case plugin == "auth" && r.Method == http.MethodPost && len(sub) == 0:
		return s.auth(w, r)
	case plugin == "attest" && r.Method == http.MethodPost && len(sub) == 0:
		return s.attest(w, r)
	case plugin == "resource-policy" && len(sub) == 0 && (r.Method == http.MethodPost || r.Method == http.MethodGet):
		if err := s.checkAdmin(r); err != nil {
			return err
		}
		if r.Method == http.MethodGet {
			return s.getPolicy(w)
		}
		return s.setPolicy(w, r)
	case plugin == "resource":
		p, err := resourcePath(r.URL.Path, sub)
		if err != nil {
			return err
		}
		switch r.Method {
		case http.MethodGet:
			return s.getResource(w, r, plugin, p)
		case http.MethodPost, http.MethodDelete:
			if err := s.checkAdmin(r); err != nil {
				return err
			}
			return s.adminResource(w, r, p)
		}
		return newError(VariantInvalidRequestPath, nil, "Request path %s is invalid for method %s", r.URL.Path, r.Method)
	default:
		return newError(VariantPluginNotFound, nil, "Plugin %s not found", plugin)
	}
}

func resourcePath(full string, sub []string) ([3]string, error) {
	if len(sub) != 3 {
		return [3]string{}, newError(VariantInvalidRequestPath, nil, "Request path %s is invalid: want resource/<repo>/<type>/<tag>", full)
	}
	for _, seg := range sub {
		if !kbs.ValidSegment(seg) {
			return [3]string{}, newError(VariantInvalidRequestPath, nil, "Request path %s is invalid: bad segment %q", full, seg)
		}
	}
	return [3]string{sub[0], sub[1], sub[2]}, nil
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return b, nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return newError(VariantSerde, err, "Serialize/Deserialize failed")
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
	return nil
}

func authError(err error) error {
	return newError(VariantAttestation, err, "Attestation error: RCAR handshake Auth failed")
}

func attestError(err error) error {
	return newError(VariantAttestation, err, "Attestation error: RCAR handshake Attest failed")
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, maxAuthBody)
	if err != nil {
		return authError(err)
	}
	req, err := kbs.ParseRequest(body)
	if err != nil {
		return authError(err)
	}
	if req.Version != kbs.ProtocolVersion {
		return authError(fmt.Errorf("KBS Client Protocol Version Mismatch: expect =%s while the request is %s", kbs.ProtocolVersion, req.Version))
	}
	if _, ok := s.verifiers[req.TEE]; !ok {
		return authError(fmt.Errorf("no verifier for tee %q", req.TEE))
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return authError(err)
	}
	sess, err := s.sessions.create(req.TEE, base64.StdEncoding.EncodeToString(nonce[:]))
	if err != nil {
		return authError(err)
	}
	http.SetCookie(w, sess.cookie())
	return writeJSON(w, kbs.Challenge{Nonce: sess.nonce, ExtraParams: json.RawMessage(`""`)})
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	// The session is checked before the body is read: a caller without a
	// live session is answered from its headers alone.
	c, err := r.Cookie(kbs.SessionCookie)
	if err != nil {
		return attestError(errors.New("cookie not found"))
	}
	sess, err := s.sessions.get(c.Value)
	if err != nil {
		return attestError(err)
	}
	body, err := readBody(w, r, MaxAttestBody)
	if err != nil {
		return attestError(err)
	}
	att, err := kbs.ParseAttestation(body)
	if err != nil {
		return attestError(err)
	}
	if sess.token != "" {
		http.SetCookie(w, sess.cookie())
		return writeJSON(w, kbs.AttestationResponse{Token: sess.token})
	}
	if att.RuntimeData.Nonce != sess.nonce {
		return attestError(errors.New("the nonce in the handshake session is different from the client side in KBS protocol's Attestation message"))
	}
	if att.TEEEvidence.AdditionalEvidence != "" {
		return attestError(errors.New("additional device evidence is not supported by cocoon-kbs"))
	}
	v := s.verifiers[sess.tee]
	pub := att.RuntimeData.TEEPubKey
	expected, err := kbs.ReportData(kbs.SHA384, pub, sess.nonce, att.TEEEvidence.AdditionalEvidence)
	if err != nil {
		return attestError(err)
	}
	claims, err := v.Verify(ctx, att.TEEEvidence.PrimaryEvidence, expected)
	if err != nil {
		return attestError(fmt.Errorf("verify %s evidence: %w", sess.tee, err))
	}
	if _, ok := claims["report_data"]; !ok {
		return attestError(fmt.Errorf("%s verifier returned no report_data claim", sess.tee))
	}
	var initDataClaims any
	binding := initDataAbsent
	if att.InitData != nil {
		if att.InitData.Format != "toml" {
			return attestError(fmt.Errorf("Unsupported initdata format: %s", att.InitData.Format)) //nolint:staticcheck // upstream's message, which clients match
		}
		digest, idc, err := parseInitData(att.InitData.Body)
		if err != nil {
			return attestError(err)
		}
		if _, ok := claims["init_data"]; !ok && sess.tee == attest.TEESample {
			// As Trustee's sample verifier: sample evidence cannot bind
			// init-data, so the digest of the init-data sent is claimed as
			// given (base64), to let policies over init_data_claims be
			// tried without hardware. Nothing vouches for it, so it is
			// appraised as unbound.
			claims["init_data"] = base64.StdEncoding.EncodeToString(digest)
			initDataClaims, binding = idc, initDataUnbound
		} else if reported, ok := claims["init_data"]; ok {
			if err := checkInitData(sess.tee, reported, digest); err != nil {
				return attestError(err)
			}
			initDataClaims, binding = idc, initDataMatched
		} else {
			binding = initDataUnbound
			log.G(ctx).WithField("tee", sess.tee).Warn("kbs: evidence binds no init-data; init-data claims left out of the token, configuration appraised as unavailable")
		}
	}
	runtimeClaims := map[string]any{
		"tee-pubkey":          pub,
		"nonce":               sess.nonce,
		"additional-evidence": att.TEEEvidence.AdditionalEvidence,
	}
	now := s.now()
	token, err := s.signer.sign(earClaims(sess.tee, claims, runtimeClaims, initDataClaims, binding, now, now.Add(s.tokenLifetime)))
	if err != nil {
		return attestError(err)
	}
	if token, err = s.sessions.attest(sess.id, token); err != nil {
		return attestError(err)
	}
	http.SetCookie(w, sess.cookie())
	return writeJSON(w, kbs.AttestationResponse{Token: token})
}

// attestationToken finds the request's token: the session cookie's first,
// then Authorization: Bearer, as Trustee.
func (s *Server) attestationToken(r *http.Request) (string, error) {
	if c, err := r.Cookie(kbs.SessionCookie); err == nil {
		if sess, err := s.sessions.get(c.Value); err == nil && sess.token != "" {
			return sess.token, nil
		}
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok != "" {
		return tok, nil
	}
	return "", newError(VariantTokenNotFound, nil, "Attestation Token not found")
}

func (s *Server) getResource(w http.ResponseWriter, r *http.Request, plugin string, p [3]string) error {
	tok, err := s.attestationToken(r)
	if err != nil {
		return err
	}
	claims, err := s.signer.verify(tok, s.now())
	if err != nil {
		return newError(VariantTokenVerifier, err, "Token Verifier error")
	}
	query := map[string]string{}
	for k, v := range r.URL.Query() {
		query[k] = v[len(v)-1]
	}
	data := map[string]any{"plugin": plugin, "resource-path": []any{p[0], p[1], p[2]}, "query": query}
	allowed, err := s.policy.allow(r.Context(), claims, data)
	if err != nil {
		return newError(VariantPolicyEngine, err, "Policy engine error")
	}
	if !allowed {
		return newError(VariantPolicyDeny, nil, "Access denied by policy")
	}
	content, err := s.repo.read(p)
	if err != nil {
		return newError(VariantPluginInternal, err, "Plugin internal error")
	}
	pub, err := teePubKeyFromClaims(claims)
	if err != nil {
		return newError(VariantTokenVerifier, err, "Token Verifier error")
	}
	jwe, err := kbs.EncryptResponse(pub, content)
	clear(content)
	if err != nil {
		return newError(VariantJWE, err, "JWE failed")
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(jwe) //nolint:gosec // a JWE in JSON, served as application/json: no HTML context
	return nil
}

func (s *Server) adminResource(w http.ResponseWriter, r *http.Request, p [3]string) error {
	if r.Method == http.MethodDelete {
		if err := s.repo.delete(p); err != nil {
			return newError(VariantPluginInternal, err, "Plugin internal error")
		}
		log.G(r.Context()).WithField("resource", strings.Join(p[:], "/")).Info("kbs: resource deleted")
		return nil
	}
	body, err := readBody(w, r, maxResourceSize)
	if err != nil {
		return newError(VariantPluginInternal, err, "Plugin internal error")
	}
	err = s.repo.write(p, body)
	clear(body)
	if err != nil {
		return newError(VariantPluginInternal, err, "Plugin internal error")
	}
	log.G(r.Context()).WithField("resource", strings.Join(p[:], "/")).Info("kbs: resource written")
	return nil
}

func (s *Server) setPolicy(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, maxPolicyBody)
	if err != nil {
		return newError(VariantParsePolicy, err, "Failed to parse policy")
	}
	var req struct {
		Policy *string `json:"policy"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return newError(VariantParsePolicy, errors.New("Illegal SetPolicy Request Json"), "Failed to parse policy") //nolint:staticcheck // upstream's message, which clients match
	}
	if req.Policy == nil {
		return newError(VariantParsePolicy, errors.New("No `policy` field inside SetPolicy Request Json"), "Failed to parse policy") //nolint:staticcheck // upstream's message, which clients match
	}
	text, err := base64.RawURLEncoding.DecodeString(*req.Policy)
	if err != nil {
		return newError(VariantParsePolicy, fmt.Errorf("Failed to decode policy: %w", err), "Failed to parse policy") //nolint:staticcheck // upstream's message, which clients match
	}
	if err := s.policy.set(string(text)); err != nil {
		return newError(VariantPolicyEngine, err, "Policy engine error")
	}
	log.G(r.Context()).Info("kbs: resource policy replaced")
	return nil
}

// getPolicy lists the policy ids, as Trustee does: ["resource-policy"].
func (s *Server) getPolicy(w http.ResponseWriter) error {
	return writeJSON(w, []string{policyID})
}

// Policy returns the resource policy text in force.
func (s *Server) Policy() string { return s.policy.get() }

// Sessions returns the number of live sessions.
func (s *Server) Sessions() int { return s.sessions.len() }

var _ http.Handler = (*Server)(nil)
