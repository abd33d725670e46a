package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyEvalCommand(t *testing.T) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.rego")
	if err := os.WriteFile(policy, []byte(`package agent_policy
default CreateContainerRequest := true
default ExecProcessRequest := false
ExecProcessRequest { input.process.Args[0] == "ls" }
ExecProcessRequest { print("blocked", input.process.Args[0]); false }
`), 0o600); err != nil {
		t.Fatal(err)
	}
	input := func(args string) string {
		p := filepath.Join(t.TempDir(), "in.json")
		if err := os.WriteFile(p, []byte(`{"container_id":"c","process":{"Args":`+args+`}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sample := filepath.Join("testdata", "allow-all-except-exec-process.rego")
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr error
		errText string
	}{
		{"allow default", []string{"--policy", policy, "--request", "CreateContainerRequest"}, "allow\n", nil, ""},
		{"allow rule", []string{"--policy", policy, "--request", "ExecProcessRequest", "--input", input(`["ls"]`)}, "allow\n", nil, ""},
		{"deny with prints", []string{"--policy", policy, "--request", "ExecProcessRequest", "--input", input(`["cat"]`)}, "deny\n  blocked cat\n", errDenied, ""},
		{"upstream sample deny", []string{"--policy", sample, "--request", "ExecProcessRequest"}, "deny\n", errDenied, ""},
		{"undefined is an error", []string{"--policy", sample, "--request", "GetDiagnosticDataRequest"}, "", nil, "unexpected eval_query result len 0"},
		{"missing policy", []string{"--request", "X"}, "", errUsage, ""},
		{"missing request", []string{"--policy", policy}, "", errUsage, ""},
		{"bad policy file", []string{"--policy", filepath.Join(dir, "none.rego"), "--request", "X"}, "", nil, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runPolicyEval(context.Background(), tc.args, &out)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.errText != "":
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want %q", err, tc.errText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Fatalf("output %q, want %q", out.String(), tc.want)
			}
		})
	}
}

func TestEventlogParseCommand(t *testing.T) {
	bin := filepath.Join("testdata", "trustee-CCEL_AAEL_alibabacloud.bin")
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	b64 := filepath.Join(t.TempDir(), "cc_eventlog.txt")
	if err := os.WriteFile(b64, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	type event struct {
		Index    int               `json:"index"`
		TypeName string            `json:"type_name"`
		Digests  map[string]string `json:"digests"`
		AAEL     *struct {
			String    string `json:"string"`
			Domain    string `json:"domain"`
			Operation string `json:"operation"`
			Content   string `json:"content"`
		} `json:"aael"`
	}
	for _, args := range [][]string{{bin}, {"--base64", b64}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out bytes.Buffer
			if err := runEventlogParse(context.Background(), args, &out); err != nil {
				t.Fatal(err)
			}
			var events []event
			if err := json.Unmarshal(out.Bytes(), &events); err != nil {
				t.Fatal(err)
			}
			if len(events) != 87 {
				t.Fatalf("%d events, want 87", len(events))
			}
			first, last := events[0], events[86]
			if first.Index != 1 || first.TypeName != "EV_EFI_HANDOFF_TABLES2" || first.Digests["SHA-384"] != "951b045980c718ed0f6909c99e159831ea81abd818f8b761412ca2725b5803363e7990365390419dc58dfb789968a3b2" {
				t.Errorf("first event %+v", first)
			}
			if last.Index != 4 || last.TypeName != "EV_EVENT_TAG" || last.AAEL == nil || last.AAEL.Domain != "coco.com" || last.AAEL.Operation != "some-operation" ||
				!strings.HasPrefix(last.AAEL.String, "coco.com some-operation {") {
				t.Errorf("last event %+v", last)
			}
		})
	}
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, raw[:100], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runEventlogParse(context.Background(), []string{bad}, &bytes.Buffer{}); err == nil {
		t.Error("truncated log parsed")
	}
	if err := runEventlogParse(context.Background(), []string{"--base64", bin}, &bytes.Buffer{}); err == nil {
		t.Error("binary accepted as base64")
	}
	if err := runEventlogParse(context.Background(), nil, &bytes.Buffer{}); !errors.Is(err, errUsage) {
		t.Errorf("no file: %v", err)
	}
}
