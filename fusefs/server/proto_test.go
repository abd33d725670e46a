package server

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestSecretFrame: credentials and keys travel only in the secret frame,
// never in the JSON, and come back intact.
func TestSecretFrame(t *testing.T) {
	secret := []byte(`{"auths":{"r.example":{"auth":"c2VjcmV0OnBhc3M="}}}`)
	cfg := &Config{AuthFile: secret, CacheDir: "/run/cache"}
	var buf bytes.Buffer
	if err := writeRequest(&buf, &request{Op: opConfigure, Config: cfg, secret: cfg.AuthFile}); err != nil {
		t.Fatal(err)
	}
	wire := buf.Bytes()
	jsonLen := binary.BigEndian.Uint32(wire)
	if bytes.Contains(wire[4:4+jsonLen], []byte("c2VjcmV0OnBhc3M")) || bytes.Contains(wire[4:4+jsonLen], []byte("auths")) {
		t.Fatalf("the JSON frame holds the credentials: %s", wire[4:4+jsonLen])
	}
	var got request
	if err := readRequest(bytes.NewReader(wire), &got); err != nil {
		t.Fatal(err)
	}
	if got.Op != opConfigure || got.Config.CacheDir != "/run/cache" || !bytes.Equal(got.secret, secret) || got.Config.AuthFile != nil {
		t.Fatalf("round trip: %+v %+v", got, got.Config)
	}
	// A truncated secret frame is an error, not a short secret.
	if err := readRequest(bytes.NewReader(wire[:len(wire)-1]), &request{}); err == nil {
		t.Fatal("truncated secret accepted")
	}
}
