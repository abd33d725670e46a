package signature

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name      string
		policy    string
		wantErr   string // substring; "" means valid
		wantWarns []string
	}{
		{name: "accept all", policy: `{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}`},
		{name: "empty lists", policy: `{"default":[],"transports":{"docker":{}}}`},
		{name: "missing default", policy: `{"transports":{}}`, wantErr: `Invalid image policy file: missing "default"`},
		{name: "missing transports", policy: `{"default":[]}`, wantErr: `Invalid image policy file: missing "transports"`},
		{name: "not json", policy: `{"default":`, wantErr: "Invalid image policy file"},
		{name: "trailing", policy: `{"default":[],"transports":{}} {}`, wantErr: "trailing data"},
		{name: "unknown top key", policy: `{"default":[],"transports":{},"x":1}`, wantWarns: []string{`unknown field "x" is ignored`}},
		{name: "unknown type", policy: `{"default":[{"type":"signedBaseLayer"}],"transports":{}}`, wantErr: `unsupported requirement type "signedBaseLayer"`},
		{name: "no type", policy: `{"default":[{}],"transports":{}}`, wantErr: `missing or invalid "type"`},
		{name: "reject extra field", policy: `{"default":[{"type":"reject","keyPath":"/k"}],"transports":{}}`, wantWarns: []string{`default requirement 0: unknown field "keyPath" is ignored`}},
		{name: "signedBy ok", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}],"transports":{}}`},
		{name: "signedBy keyPaths", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/a","/b"]}],"transports":{}}`},
		{name: "signedBy no keyType", policy: `{"default":[{"type":"signedBy","keyPath":"/k"}],"transports":{}}`, wantErr: `"keyType" must be "GPGKeys"`},
		{name: "signedBy two keys", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","keyData":"eA=="}],"transports":{}}`, wantErr: "exactly one of"},
		{name: "signedBy no key", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys"}],"transports":{}}`, wantErr: "exactly one of"},
		{name: "signedBy keyData not b64", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"%%%"}],"transports":{}}`, wantErr: "not base64"},
		{name: "signedBy bad identity", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"nope"}}],"transports":{}}`, wantErr: `unknown signedIdentity type "nope"`},
		{name: "exactRepository with tag", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"exactRepository","dockerRepository":"quay.io/a:b"}}],"transports":{}}`, wantErr: "without tag"},
		{name: "remapIdentity", policy: `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"remapIdentity","prefix":"a.io","signedPrefix":"b.io"}}],"transports":{}}`},
		{name: "sigstore ok", policy: `{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///default/k/c","signedIdentity":{"type":"matchRepository"}}],"transports":{}}`},
		// keyPaths is not an image-rs sigstoreSigned field: ignored, so the
		// requirement still needs keyPath or keyData.
		{name: "sigstore keyPaths unsupported", policy: `{"default":[{"type":"sigstoreSigned","keyPaths":["/k"]}],"transports":{}}`, wantErr: "exactly one of keyPath, keyData"},
		{
			name:      "sigstore matchExact denies",
			policy:    `{"default":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"matchExact"}}],"transports":{}}`,
			wantWarns: []string{`default requirement 0 always denies: sigstoreSigned signedIdentity "matchExact" is not supported`},
		},
		{
			name:      "scopes",
			policy:    `{"default":[],"transports":{"dir":{"":[]},"docker":{"docker://quay.io/x":[],"busybox":[],"quay.io/x:tag":[],"quay.io/x":[],"*.example.com":[],"quay.io":[],"127.0.0.1:5000":[]}}}`,
			wantWarns: []string{`transport "dir" is ignored`, `"busybox" is neither a registry host`, `"docker://quay.io/x" has a scheme`, `"quay.io/x:tag" names a tag`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parsePolicy([]byte(tt.policy))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrInvalidPolicy) {
					t.Fatalf("error %v does not wrap ErrInvalidPolicy", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePolicy: %v", err)
			}
			if len(p.Warnings) != len(tt.wantWarns) {
				t.Fatalf("warnings = %q, want %d matching %q", p.Warnings, len(tt.wantWarns), tt.wantWarns)
			}
			for i, w := range tt.wantWarns {
				if !strings.Contains(p.Warnings[i], w) {
					t.Errorf("warning %d = %q, want it to contain %q", i, p.Warnings[i], w)
				}
			}
		})
	}
}

// The upstream examples shipped with image-rs parse (the "dir" transport is
// ignored with a warning).
func TestParseUpstreamExamples(t *testing.T) {
	for _, f := range []string{"policy-examples.json", "security_policy.json"} {
		t.Run(f, func(t *testing.T) {
			p, err := parsePolicy(readVector(t, f))
			if err != nil {
				t.Fatalf("parsePolicy(%s): %v", f, err)
			}
			if len(p.Docker) == 0 {
				t.Fatalf("%s: no docker scopes parsed", f)
			}
		})
	}
}

func TestScopeWarning(t *testing.T) {
	tests := []struct {
		scope string
		warn  bool
	}{
		{"", false},
		{"quay.io", false},
		{"localhost", false},
		{"127.0.0.1:5000", false},
		{"127.0.0.1:5000/coco/img", false},
		{"docker.io/library/busybox", false},
		{"*.example.com", false},
		{"*.", true},
		{"*.example.com/x", true},
		{"quay.*.com", true},
		{"busybox", true},
		{"library/busybox", true},
		{"docker://quay.io/x", true},
		{"quay.io/x:tag", true},
		{"quay.io/x@sha256:0000000000000000000000000000000000000000000000000000000000000000", true},
		{"Quay.io/UPPER", true},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			if got := scopeWarning(tt.scope); (got != "") != tt.warn {
				t.Fatalf("scopeWarning(%q) = %q, want warning %v", tt.scope, got, tt.warn)
			}
		})
	}
}

func TestRejectedError(t *testing.T) {
	tests := []struct {
		err  *RejectedError
		want string
	}{
		{&RejectedError{Rule: typeSigstore}, "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule"},
		{&RejectedError{Rule: typeSignedBy, Reason: "detail not shown"}, "Image policy rejected: Denied by policy: rejected by `signedBy` rule"},
		{&RejectedError{Rule: typeReject, Image: "quay.io/a/b:c"}, "Image policy rejected: Denied by policy: Policy `reject` rejects image quay.io/a/b:c"},
	}
	for _, tt := range tests {
		t.Run(tt.err.Rule, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Fatalf("Error() = %q, want %q", got, tt.want)
			}
			if !errors.Is(tt.err, errdefs.ErrPermissionDenied) {
				t.Fatal("RejectedError is not errdefs.ErrPermissionDenied")
			}
		})
	}
}

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		`{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}`,
		`{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io/a":[{"type":"sigstoreSigned","keyData":"x","signedIdentity":{"type":"matchRepository"}}]}}}`,
		`{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/a"],"signedIdentity":{"type":"remapIdentity","prefix":"a","signedPrefix":"b"}}],"transports":{"docker":{"*.com":[]}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parsePolicy(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error %v does not wrap ErrInvalidPolicy", err)
			}
			return
		}
		if p.Default == nil || p.Docker == nil {
			t.Fatal("valid policy without default or docker map")
		}
		for _, reqs := range p.Docker {
			for _, r := range reqs {
				switch r.Type {
				case typeAccept, typeReject, typeSignedBy, typeSigstore:
				default:
					t.Fatalf("accepted unknown type %q", r.Type)
				}
			}
		}
	})
}
