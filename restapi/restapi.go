// Package restapi is the guest REST shim that workloads inside the TEE call
// on 127.0.0.1:8006: /info, /aa/* (evidence, token, runtime measurement) and
// /cdh/resource/*. It reproduces upstream api-server-rest's routing, status
// codes and bodies byte for byte, and answers only loopback peers.
//
// It must never log resource bytes, tokens or keys, and never serve a peer
// that is not on a loopback address.
package restapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest/agent"
)

// Features selects the routes served, as Kata's agent.guest_components_rest_api.
type Features string

const (
	FeatureResource    Features = "resource" // the default
	FeatureAttestation Features = "attestation"
	FeatureAll         Features = "all"
)

// ParseFeatures accepts upstream's values only.
func ParseFeatures(s string) (Features, error) {
	switch f := Features(s); f {
	case FeatureResource, FeatureAttestation, FeatureAll:
		return f, nil
	}
	return "", fmt.Errorf("invalid guest components rest api feature given. Valid values are `all`, `attestation`, `resource`")
}

func (f Features) attestation() bool { return f == FeatureAttestation || f == FeatureAll }
func (f Features) resource() bool    { return f == FeatureResource || f == FeatureAll }

// AttestationAgent is what /aa and /info need (attest/agent.Agent).
type AttestationAgent interface {
	TEE() string
	AdditionalTEEs() []string
	Evidence(ctx context.Context, runtimeData []byte) ([]byte, error)
	// AdditionalEvidence returns {"<tee>": evidence, ...} or nil when there
	// is no additional attester.
	AdditionalEvidence(ctx context.Context, runtimeData []byte) ([]byte, error)
	// Token returns the token response body for token_type ("kbs" or
	// "coco_as"); unknown or unconfigured types are errors.
	Token(ctx context.Context, tokenType string) ([]byte, error)
	ExtendRuntimeMeasurement(ctx context.Context, domain, operation, content string, register *uint64) (agent.MeasurementResult, error)
}

var _ AttestationAgent = (*agent.Agent)(nil)

// ResourceGetter fetches kbs:/// resources (the CDH side).
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Options configure the handler.
type Options struct {
	Version  string // reported by /info
	Features Features
	Agent    AttestationAgent // nil: /info has no tee and /aa answers 500
	CDH      ResourceGetter
	// MaxBodyBytes bounds request bodies (default 64 KiB).
	MaxBodyBytes int64
}

// Handler serves the REST API.
type Handler struct{ o Options }

// New returns the handler.
func New(o Options) *Handler {
	if o.Features == "" {
		o.Features = FeatureResource
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 64 << 10
	}
	return &Handler{o: o}
}

const (
	bodyBadRequest = "BAD REQUEST"
	bodyNotFound   = "URL NOT FOUND"
)

func reply(w http.ResponseWriter, status int, contentType string, body []byte) {
	if contentType != "" {
		w.Header().Set("Content-Type", contentType)
	}
	w.WriteHeader(status)
	// An error here means the client has gone: nothing to tell it. The
	// bodies are upstream's, for the guest's own processes, not a browser.
	_, _ = w.Write(body) //nolint:gosec // G705: see above
}

func text(w http.ResponseWriter, status int, s string) { reply(w, status, "", []byte(s)) }

// maxURI bounds the request target; upstream has no such limit but a guest
// API has no use for long ones.
const maxURI = 16 << 10

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !loopbackPeer(r.RemoteAddr) {
		text(w, http.StatusForbidden, "Forbidden")
		return
	}
	if len(r.RequestURI) > maxURI {
		text(w, http.StatusRequestURITooLong, bodyBadRequest)
		return
	}
	// Route on the path as sent, as upstream (hyper's uri().path() is not
	// percent-decoded): "/cdh%2Fresource/..." is not "/cdh/resource/...".
	path := r.URL.EscapedPath()
	if path == "/info" {
		h.info(w, r)
		return
	}
	root, rest := splitRoot(path)
	switch root {
	case "/aa":
		if !h.o.Features.attestation() {
			text(w, http.StatusNotFound, "Attestation Feature Not Enabled")
			return
		}
		h.aa(w, r, rest)
	case "/cdh":
		if !h.o.Features.resource() {
			text(w, http.StatusNotFound, "Resource Feature Not Enabled")
			return
		}
		h.cdh(w, r, rest)
	default:
		text(w, http.StatusNotFound, bodyNotFound)
	}
}

// splitRoot splits "/aa/evidence" into "/aa" and "/evidence".
func splitRoot(p string) (string, string) {
	if i := strings.IndexByte(p[min(1, len(p)):], '/'); i >= 0 {
		return p[:i+1], p[i+1:]
	}
	return p, ""
}

func loopbackPeer(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (h *Handler) info(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		text(w, http.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	info := struct {
		Version        string   `json:"version"`
		TEE            string   `json:"tee,omitempty"`
		AdditionalTEEs []string `json:"additional_tees,omitempty"`
		Feature        string   `json:"feature"`
	}{Version: h.o.Version, Feature: string(h.o.Features)}
	// Upstream asks the attestation agent only when the attestation
	// feature is on; under the default "resource" feature there is no tee.
	if h.o.Agent != nil && h.o.Features.attestation() {
		info.TEE = h.o.Agent.TEE()
		info.AdditionalTEEs = h.o.Agent.AdditionalTEEs()
	}
	b, _ := json.Marshal(info)
	reply(w, http.StatusOK, "application/json", b)
}

func (h *Handler) aa(w http.ResponseWriter, r *http.Request, rest string) {
	ctx := r.Context()
	if h.o.Agent == nil {
		text(w, http.StatusInternalServerError, "attestation agent is not configured")
		return
	}
	switch {
	case rest == "/token" && r.Method == http.MethodGet:
		tt, ok := query(r)["token_type"]
		if !ok {
			text(w, http.StatusBadRequest, bodyBadRequest)
			return
		}
		tok, err := h.o.Agent.Token(ctx, tt)
		if err != nil {
			h.fail(ctx, w, "get token", err)
			return
		}
		reply(w, http.StatusOK, "application/octet-stream", tok)
	case (rest == "/evidence" || rest == "/additional-evidence") && r.Method == http.MethodGet:
		rd, ok := runtimeData(r)
		if !ok {
			text(w, http.StatusBadRequest, bodyBadRequest)
			return
		}
		var ev []byte
		var err error
		if rest == "/evidence" {
			ev, err = h.o.Agent.Evidence(ctx, rd)
		} else {
			ev, err = h.o.Agent.AdditionalEvidence(ctx, rd)
		}
		if err != nil {
			h.fail(ctx, w, "get evidence", err)
			return
		}
		reply(w, http.StatusOK, "application/octet-stream", ev)
	case rest == "/aael" && r.Method == http.MethodPost:
		h.aael(w, r)
	default:
		text(w, http.StatusNotFound, bodyNotFound)
	}
}

// query parses the query string as upstream (Rust's form_urlencoded
// collected into a map), which never fails: pairs split on '&' only (a ';'
// is data), empty pairs are skipped, the name ends at the first '=', '+' is
// a space, a '%' not followed by two hex digits is taken literally, bytes
// that are not UTF-8 become U+FFFD, and the last of duplicate names wins.
func query(r *http.Request) map[string]string {
	q := map[string]string{}
	for _, pair := range strings.Split(r.URL.RawQuery, "&") {
		if pair == "" {
			continue
		}
		name, value, _ := strings.Cut(pair, "=")
		q[formDecode(name)] = formDecode(value)
	}
	return q
}

// formDecode undoes application/x-www-form-urlencoded escaping leniently.
func formDecode(s string) string {
	if !strings.ContainsAny(s, "+%") {
		return lossyUTF8(s)
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b = append(b, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			b = append(b, c)
		}
	}
	return lossyUTF8(string(b))
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// lossyUTF8 replaces each maximal invalid subsequence with U+FFFD, as
// Rust's String::from_utf8_lossy.
func lossyUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r != utf8.RuneError || n > 1 {
			b.WriteString(s[i : i+n])
			i += n
			continue
		}
		b.WriteRune(utf8.RuneError)
		i += invalidPrefix(s[i:])
	}
	return b.String()
}

// invalidPrefix is the length of the maximal prefix of s that starts a
// UTF-8 sequence but does not complete one (at least 1).
func invalidPrefix(s string) int {
	lo, hi, need := byte(0x80), byte(0xBF), 0
	switch c := s[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		lo, need = 0xA0, 2
	case c == 0xED:
		hi, need = 0x9F, 2
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		lo, need = 0x90, 3
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		hi, need = 0x8F, 3
	}
	n := 1
	for ; n <= need && n < len(s); n++ {
		if s[n] < lo || s[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}

func runtimeData(r *http.Request) ([]byte, bool) {
	q := query(r)
	v, ok := q["runtime_data"]
	if !ok {
		return nil, false
	}
	enc, ok := q["encoding"]
	if !ok {
		return []byte(v), true
	}
	if enc != "base64" {
		return nil, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(v, "="))
	if err != nil {
		return nil, false
	}
	return b, true
}

type aaelRequest struct {
	Domain    *string `json:"domain"`
	Operation *string `json:"operation"`
	Content   *string `json:"content"`
}

func (h *Handler) aael(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := io.ReadAll(io.LimitReader(r.Body, h.o.MaxBodyBytes+1))
	if err != nil {
		text(w, http.StatusBadRequest, bodyBadRequest)
		return
	}
	if int64(len(body)) > h.o.MaxBodyBytes {
		text(w, http.StatusRequestEntityTooLarge, bodyBadRequest)
		return
	}
	var req aaelRequest
	err = json.Unmarshal(body, &req)
	if err == nil && (req.Domain == nil || req.Operation == nil || req.Content == nil) {
		err = errors.New("missing field: domain, operation and content are required")
	}
	if err != nil {
		text(w, http.StatusInternalServerError, "Illegal AAEL eventry format: "+err.Error())
		return
	}
	res, err := h.o.Agent.ExtendRuntimeMeasurement(ctx, *req.Domain, *req.Operation, *req.Content, nil)
	if err != nil {
		h.fail(ctx, w, "extend runtime measurement", err)
		return
	}
	var out string
	switch res {
	case agent.MeasurementOK:
		out = `{"success":"true"}`
	case agent.MeasurementNotSupported:
		out = `{"success":"false","message": "The platform does not support runtime measurement"}`
	case agent.MeasurementNotEnabled:
		out = `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}`
	default:
		out = `{"success":"false","message": "Unknown runtime measurement result"}`
	}
	reply(w, http.StatusOK, "application/json", []byte(out))
}

func (h *Handler) cdh(w http.ResponseWriter, r *http.Request, rest string) {
	ctx := r.Context()
	sub, tail := splitRoot(rest)
	if sub != "/resource" || tail == "" {
		text(w, http.StatusNotFound, bodyNotFound)
		return
	}
	if h.o.CDH == nil {
		text(w, http.StatusInternalServerError, "confidential data hub is not configured")
		return
	}
	uri, err := resourceURI(tail)
	if err != nil {
		text(w, http.StatusBadRequest, bodyBadRequest+": "+err.Error())
		return
	}
	b, err := h.o.CDH.GetResource(ctx, uri)
	if err != nil {
		h.fail(ctx, w, "get resource", err)
		return
	}
	reply(w, http.StatusOK, "application/octet-stream", b)
}

// resourceURI maps the escaped path below /cdh/resource ("/repo/type/tag")
// to "kbs:///repo/type/tag". Percent-decoding must not change what the KBS
// request means, so a segment is refused when it decodes to a '?' or '#'
// (a query or fragment on the KBS request: a workload could add data.query
// to what the resource policy sees), to a '/' (extra segments), to '%' (a
// second decoding further on), or to "." or ".." (a traversal). Upstream
// passes the path through unchecked. How many segments there are is left
// to the CDH, which answers other than repo/type/tag with its error (500),
// as upstream.
func resourceURI(escaped string) (string, error) {
	segs := strings.Split(strings.TrimPrefix(escaped, "/"), "/")
	for i, s := range segs {
		d, err := url.PathUnescape(s)
		if err != nil {
			return "", fmt.Errorf("resource path segment %q: %w", s, err)
		}
		if d == "." || d == ".." {
			return "", fmt.Errorf("resource path segment %q is a traversal", s)
		}
		if j := strings.IndexAny(d, "?#/%"); j >= 0 {
			return "", fmt.Errorf("resource path segment %q decodes to %q, which holds %q: it would change the KBS request", s, d, d[j])
		}
		segs[i] = d
	}
	return "kbs:///" + strings.Join(segs, "/"), nil
}

// fail answers 500 with the error text, as upstream, and logs the cause.
func (h *Handler) fail(ctx context.Context, w http.ResponseWriter, what string, err error) {
	log.G(ctx).WithError(err).WithField("request", what).Warn("rest api request failed")
	text(w, http.StatusInternalServerError, err.Error())
}
