package server

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// AdminRole is the role an admin token must carry (Trustee's docker-compose
// setup mints role "admin" and grants it every /kbs/v0 endpoint).
const AdminRole = "admin"

// ParseAdminPublicKey reads an Ed25519 public key in PEM (SubjectPublicKeyInfo).
func ParseAdminPublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("admin public key: no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("admin public key: %w", err)
	}
	pk, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("admin public key is %T, want Ed25519", k)
	}
	return pk, nil
}

// checkAdmin authorises an admin request: an EdDSA JWT bearer token signed
// by the configured key, within its validity window (exp required), with
// role "admin". Without a key admin access is denied unless InsecureAdmin.
func (s *Server) checkAdmin(r *http.Request) error {
	endpoint := strings.TrimPrefix(r.URL.Path, kbs.PathPrefix+"/")
	deny := func(format string, args ...any) error {
		return newError(VariantAdminAuthAccess, fmt.Errorf(format, args...), "admin access denied for endpoint %s", endpoint)
	}
	if s.adminKey == nil {
		if s.insecureAdmin {
			return nil
		}
		return deny("admin API disabled: no admin public key configured")
	}
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || tok == "" {
		return deny("no Bearer token")
	}
	if err := verifyAdminToken(tok, s.adminKey, s.now()); err != nil {
		return deny("%w", err)
	}
	return nil
}

func verifyAdminToken(tok string, key ed25519.PublicKey, now time.Time) error {
	if len(tok) > 64<<10 {
		return errors.New("admin token too large")
	}
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return fmt.Errorf("parse admin token: %w", err)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return fmt.Errorf("admin token signature: %w", err)
	}
	var claims struct {
		Role string `json:"role"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return fmt.Errorf("admin token claims: %w", err)
	}
	times, err := kbs.ParseTokenTimes(tok)
	if err != nil {
		return err
	}
	if times.Expiry.IsZero() {
		return errors.New("admin token has no exp")
	}
	if !times.ValidAt(now) {
		return errors.New("admin token expired or not yet valid")
	}
	if claims.Role != AdminRole {
		return fmt.Errorf("admin token role %q, want %q", claims.Role, AdminRole)
	}
	return nil
}
