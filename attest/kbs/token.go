package kbs

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// TokenTimes are the validity claims of an attestation token, read without
// verifying its signature: the client only uses them to decide when to
// re-attest, exactly as guest-components does. A zero time means absent.
type TokenTimes struct {
	Expiry    time.Time
	NotBefore time.Time
}

// ValidAt reports whether now lies within the token's validity.
func (t TokenTimes) ValidAt(now time.Time) bool {
	if !t.Expiry.IsZero() && t.Expiry.Before(now) {
		return false
	}
	if !t.NotBefore.IsZero() && t.NotBefore.After(now) {
		return false
	}
	return true
}

const maxTokenSize = 1 << 20

// ParseTokenTimes reads exp and nbf from the payload of a compact JWT.
func ParseTokenTimes(token string) (TokenTimes, error) {
	if len(token) > maxTokenSize {
		return TokenTimes{}, fmt.Errorf("parse token: %d bytes exceeds %d", len(token), maxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return TokenTimes{}, errors.New("parse token: not a compact JWS (want 3 dot-separated parts)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return TokenTimes{}, fmt.Errorf("parse token payload: %w", err)
	}
	var claims struct {
		Exp *float64 `json:"exp"`
		Nbf *float64 `json:"nbf"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return TokenTimes{}, fmt.Errorf("parse token claims: %w", err)
	}
	var t TokenTimes
	if t.Expiry, err = numericDate(claims.Exp); err != nil {
		return TokenTimes{}, fmt.Errorf("parse token exp: %w", err)
	}
	if t.NotBefore, err = numericDate(claims.Nbf); err != nil {
		return TokenTimes{}, fmt.Errorf("parse token nbf: %w", err)
	}
	return t, nil
}

func numericDate(n *float64) (time.Time, error) {
	if n == nil {
		return time.Time{}, nil
	}
	if f := *n; math.IsNaN(f) || f < 0 || f > 1<<40 {
		return time.Time{}, fmt.Errorf("bad NumericDate %v", f)
	}
	return time.Unix(int64(*n), 0), nil
}
