package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/image/signature"
)

func TestSplitRefDigest(t *testing.T) {
	const d = "sha256:4139fbf61bf28e74edf99475ec0856e2c4fbb18f48bfd49b0e74080b7f01f903"
	tests := []struct {
		in, ref string
		ok      bool
	}{
		{"127.0.0.1:5000/coco/img:v1@" + d, "127.0.0.1:5000/coco/img:v1", true},
		{"127.0.0.1:5000/coco/img@" + d, "127.0.0.1:5000/coco/img@" + d, true},
		{"quay.io/a/b", "", false},
		{"quay.io/a/b@sha256:12", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ref, got, err := splitRefDigest(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && (ref != tt.ref || got.String() != d) {
				t.Fatalf("= %q %q, want %q %q", ref, got, tt.ref, d)
			}
		})
	}
}

// Policies that need no registry: the CLI prints the verdict.
func TestImageVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	reject := write("reject.json", `{"default":[{"type":"reject"}],"transports":{}}`)
	accept := write("accept.json", `{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}`)
	bad := write("bad.json", `{"default":[]}`)
	const ref = "127.0.0.1:1/coco/img:v1@sha256:4139fbf61bf28e74edf99475ec0856e2c4fbb18f48bfd49b0e74080b7f01f903"
	tests := []struct {
		name    string
		args    []string
		out     string
		wantErr func(error) bool
	}{
		{"accept", []string{"--policy", accept, ref}, "allowed\n", nil},
		{"reject", []string{"--policy", reject, ref}, "Image policy rejected: Denied by policy: Policy `reject` rejects image 127.0.0.1:1/coco/img:v1\n",
			func(err error) bool { var r *signature.RejectedError; return errors.As(err, &r) }},
		{"invalid policy", []string{"--policy", bad, ref}, "", func(err error) bool { return errors.Is(err, signature.ErrInvalidPolicy) }},
		{"no policy flag", []string{ref}, "", func(err error) bool { return errors.Is(err, errUsage) }},
		{"no digest", []string{"--policy", accept, "127.0.0.1:1/coco/img:v1"}, "", func(err error) bool { return errors.Is(err, errUsage) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runImageVerify(context.Background(), tt.args, &out, &errOut)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr != nil && (err == nil || !tt.wantErr(err)) {
				t.Fatalf("err = %v, not the expected kind", err)
			}
			if out.String() != tt.out {
				t.Fatalf("stdout = %q, want %q", out.String(), tt.out)
			}
			if strings.Contains(errOut.String(), "auth") {
				t.Fatalf("stderr mentions credentials: %q", errOut.String())
			}
		})
	}
}
