package agentpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const createContainerInput = `{"container_id":"c1","exec_id":"c1","string_user":null,"devices":[],
"storages":[{"driver":"image_guest_pull","driver_options":[],"source":"docker.io/library/busybox:latest","fstype":"overlay","options":[],"mount_point":"/run/kata-containers/c1/rootfs","fs_group":null,"shared":false}],
"OCI":{"Version":"1.1.0","Process":{"Terminal":false,"Args":["sh"],"Env":["PATH=/bin"],"Cwd":"/"},"Root":{"Path":"rootfs","Readonly":false},"Annotations":{"io.kubernetes.cri.sandbox-name":"pod1"}},
"sandbox_pidns":false,"shared_mounts":[],"stdin_port":0,"stdout_port":0,"stderr_port":0}`

const execInput = `{"container_id":"c1","exec_id":"e1","string_user":null,"process":{"Terminal":false,"Args":["cat","/etc/shadow"],"Env":[],"Cwd":"/"},"stdin_port":0,"stdout_port":0,"stderr_port":0}`

func load(t *testing.T, name string) *Policy {
	t.Helper()
	p, err := Load(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Upstream sample policies (kata-containers src/kata-opa).
func TestSamplePolicies(t *testing.T) {
	ctx := context.Background()
	undefined := "internal error policy check: unexpected eval_query result len 0"
	for _, tc := range []struct {
		file, ep, input string
		want            bool
		wantErr         string
	}{
		{"allow-all.rego", "CreateContainerRequest", createContainerInput, true, ""},
		{"allow-all.rego", "ExecProcessRequest", execInput, true, ""},
		{"allow-all.rego", "GetDiagnosticDataRequest", "{}", true, ""},
		{"allow-all.rego", "SetPolicyRequest", `{"policy":"package agent_policy"}`, true, ""},
		{"allow-all.rego", "ReadStreamRequest", `{"container_id":"c1","exec_id":"c1","len":1024}`, true, ""},
		{"allow-all.rego", "NoSuchRequest", "{}", false, undefined},
		{"allow-all-except-exec-process.rego", "ExecProcessRequest", execInput, false, ""},
		{"allow-all-except-exec-process.rego", "CreateContainerRequest", createContainerInput, true, ""},
		{"allow-all-except-exec-process.rego", "PullImageRequest", "{}", true, ""},
		{"allow-all-except-exec-process.rego", "GetDiagnosticDataRequest", "{}", false, undefined},
		{"allow-set-policy.rego", "SetPolicyRequest", `{"policy":""}`, true, ""},
		{"allow-set-policy.rego", "CreateContainerRequest", createContainerInput, false, undefined},
		{"allow-set-policy.rego", "ExecProcessRequest", execInput, false, undefined},
	} {
		t.Run(tc.file+"/"+tc.ep, func(t *testing.T) {
			got, err := load(t, tc.file).Allow(ctx, tc.ep, json.RawMessage(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), tc.ep+": ") {
					t.Fatalf("err = %v, want %q", err, tc.ep+": "+tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("allowed = %v, want %v", got, tc.want)
			}
		})
	}
}

const genpolicyLike = `package agent_policy

import future.keywords.in

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default SetPolicyRequest := false

CreateContainerRequest := {"ops": ops, "allowed": true} {
	name := input.OCI.Annotations["io.kubernetes.cri.sandbox-name"]
	not data.pstate.sandbox_name
	print("first container of", name)
	ops := [{"op": "add", "path": "/pstate/sandbox_name", "value": name}]
}

CreateContainerRequest := {"allowed": true} {
	input.OCI.Annotations["io.kubernetes.cri.sandbox-name"] == data.pstate.sandbox_name
}

ExecProcessRequest {
	input.process.Args[0] in ["ls", "date"]
}

ExecProcessRequest {
	print("exec denied:", concat(" ", input.process.Args))
	false
}
`

func TestStatefulPolicy(t *testing.T) {
	ctx := context.Background()
	p, err := New(genpolicyLike)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Evaluate(ctx, "CreateContainerRequest", json.RawMessage(createContainerInput))
	if err != nil || !d.Allowed {
		t.Fatalf("first create: %+v, %v", d, err)
	}
	if !reflect.DeepEqual(d.Prints, []string{"first container of pod1"}) {
		t.Errorf("prints = %q", d.Prints)
	}
	if got := p.Data()["pstate"]; !reflect.DeepEqual(got, map[string]any{"sandbox_name": "pod1"}) {
		t.Fatalf("pstate after ops = %v", got)
	}
	// Same sandbox again: allowed by the second rule, no ops.
	if ok, err := p.Allow(ctx, "CreateContainerRequest", json.RawMessage(createContainerInput)); err != nil || !ok {
		t.Fatalf("second create: %v, %v", ok, err)
	}
	// Another sandbox name: denied, pstate keeps the first.
	other := strings.Replace(createContainerInput, `"pod1"`, `"pod2"`, 1)
	if ok, err := p.Allow(ctx, "CreateContainerRequest", json.RawMessage(other)); err != nil || ok {
		t.Fatalf("other sandbox: %v, %v", ok, err)
	}

	for _, tc := range []struct {
		name  string
		args  string
		allow bool
	}{{"ls", `["ls","-l"]`, true}, {"date", `["date"]`, true}, {"cat", `["cat","/etc/shadow"]`, false}} {
		t.Run("exec "+tc.name, func(t *testing.T) {
			in := `{"container_id":"c1","exec_id":"e","process":{"Args":` + tc.args + `}}`
			d, err := p.Evaluate(ctx, "ExecProcessRequest", json.RawMessage(in))
			if err != nil || d.Allowed != tc.allow {
				t.Fatalf("%+v, %v", d, err)
			}
			if !tc.allow && (len(d.Prints) != 1 || !strings.HasPrefix(d.Prints[0], "exec denied: cat")) {
				t.Errorf("prints = %q", d.Prints)
			}
		})
	}
}

func TestAllowRequestsFailingPolicy(t *testing.T) {
	p, err := New("package agent_policy\ndefault ExecProcessRequest := false\ndefault AllowRequestsFailingPolicy := true\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range []string{"ExecProcessRequest", "UndefinedRequest"} {
		d, err := p.Evaluate(context.Background(), ep, json.RawMessage(`{}`))
		if err != nil || !d.Allowed || !d.Overridden {
			t.Errorf("%s: %+v, %v", ep, d, err)
		}
	}
}

func TestSetPolicy(t *testing.T) {
	ctx := context.Background()
	allowAll, err := os.ReadFile(filepath.Join("testdata", "allow-all.rego"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("allowed then replaced", func(t *testing.T) {
		p := load(t, "allow-set-policy.rego")
		if err := p.SetPolicy(ctx, string(allowAll)); err != nil {
			t.Fatal(err)
		}
		if ok, err := p.Allow(ctx, "CreateContainerRequest", json.RawMessage(createContainerInput)); err != nil || !ok {
			t.Fatalf("new policy not in force: %v %v", ok, err)
		}
	})
	t.Run("denied keeps the old policy", func(t *testing.T) {
		p, err := New(`package agent_policy
default SetPolicyRequest := false
SetPolicyRequest { contains(input.policy, "# approved") }
SetPolicyRequest { print("unapproved policy"); false }
default ExecProcessRequest := false
`)
		if err != nil {
			t.Fatal(err)
		}
		err = p.SetPolicy(ctx, string(allowAll))
		var denied *DeniedError
		if !errors.As(err, &denied) || err.Error() != "SetPolicyRequest is blocked by policy: unapproved policy" {
			t.Fatalf("err = %v", err)
		}
		if ok, _ := p.Allow(ctx, "ExecProcessRequest", json.RawMessage(execInput)); ok {
			t.Fatal("policy replaced despite the denial")
		}
		if err := p.SetPolicy(ctx, string(allowAll)+"\n# approved\n"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := p.Allow(ctx, "ExecProcessRequest", json.RawMessage(execInput)); !ok {
			t.Fatal("approved policy not in force")
		}
	})
	t.Run("invalid new policy", func(t *testing.T) {
		p := load(t, "allow-set-policy.rego")
		if err := p.SetPolicy(ctx, "package agent_policy\ndefault X := )\nY := 1\n"); err == nil || !strings.Contains(err.Error(), "policy.rego:2") {
			t.Fatalf("err = %v", err)
		}
		if ok, _ := p.Allow(ctx, "SetPolicyRequest", json.RawMessage(`{"policy":""}`)); !ok {
			t.Fatal("old policy lost after a failed SetPolicy")
		}
	})
}

func TestCompileErrors(t *testing.T) {
	long := "package agent_policy\n# " + strings.Repeat("x", MaxLineBytes) + "\n"
	for _, tc := range []struct {
		name, text, wantErr string
	}{
		{"syntax error names line", "package agent_policy\n\ndefault A := true\nB { x := }\nC := 1\n", "policy.rego:4"},
		{"unsafe var names line", "package agent_policy\n\nA { x == 1 }\n", "policy.rego:3"},
		{"wrong package", "package other\ndefault A := true\n", "package is other"},
		{"empty", "", "empty"},
		{"long line", long, "line 2"},
		{"too many lines", "package agent_policy\n" + strings.Repeat("\n", MaxLines), "lines"},
		{"rego v1 only syntax", "package agent_policy\nA if { true }\n", "policy.rego:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestEvaluateErrors(t *testing.T) {
	p, err := New("package agent_policy\nA := 3\nB := {\"ops\": []}\nC := {\"allowed\": true, \"ops\": [{\"op\": \"remove\", \"path\": \"/nope\"}]}\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ep, input, wantErr string }{
		{"A", "{}", "want a boolean"},
		{"B", "{}", `no boolean "allowed"`},
		{"C", "{}", "ops[0]"},
		{"A", "{not json", "input"},
		{"not-an-identifier", "{}", "invalid entry point"},
	} {
		t.Run(tc.ep, func(t *testing.T) {
			if _, err := p.Allow(context.Background(), tc.ep, json.RawMessage(tc.input)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if got := p.Data(); !reflect.DeepEqual(got, map[string]any{"pstate": map[string]any{}}) {
		t.Errorf("failed ops changed data: %v", got)
	}
}

func TestPatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		ops     string
		want    string
		wantErr bool
	}{
		{"add member", `{"a":{}}`, `[{"op":"add","path":"/a/b","value":1}]`, `{"a":{"b":1}}`, false},
		{"add array end", `{"a":[1]}`, `[{"op":"add","path":"/a/-","value":2}]`, `{"a":[1,2]}`, false},
		{"insert array", `{"a":[1,3]}`, `[{"op":"add","path":"/a/1","value":2}]`, `{"a":[1,2,3]}`, false},
		{"replace", `{"a":1}`, `[{"op":"replace","path":"/a","value":2}]`, `{"a":2}`, false},
		{"replace missing", `{}`, `[{"op":"replace","path":"/a","value":2}]`, ``, true},
		{"remove array", `{"a":[1,2,3]}`, `[{"op":"remove","path":"/a/0"}]`, `{"a":[2,3]}`, false},
		{"escaped pointer", `{}`, `[{"op":"add","path":"/a~1b~0c","value":true}]`, `{"a/b~c":true}`, false},
		{"move", `{"a":1}`, `[{"op":"move","from":"/a","path":"/b"}]`, `{"b":1}`, false},
		{"copy", `{"a":[1]}`, `[{"op":"copy","from":"/a","path":"/b"}]`, `{"a":[1],"b":[1]}`, false},
		{"test ok", `{"a":"x"}`, `[{"op":"test","path":"/a","value":"x"}]`, `{"a":"x"}`, false},
		{"test fails", `{"a":"x"}`, `[{"op":"test","path":"/a","value":"y"}]`, ``, true},
		{"bad index", `{"a":[1]}`, `[{"op":"add","path":"/a/01","value":2}]`, ``, true},
		{"out of range", `{"a":[1]}`, `[{"op":"remove","path":"/a/1"}]`, ``, true},
		{"unknown op", `{}`, `[{"op":"merge","path":"/a","value":2}]`, ``, true},
		{"no leading slash", `{}`, `[{"op":"add","path":"a","value":2}]`, ``, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var doc any
			var ops []map[string]any
			if err := json.Unmarshal([]byte(tc.doc), &doc); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tc.ops), &ops); err != nil {
				t.Fatal(err)
			}
			var err error
			for _, op := range ops {
				if doc, err = applyPatchOp(doc, op); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tc.wantErr {
				return
			}
			var want any
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(doc, want) {
				t.Fatalf("got %v, want %v", doc, want)
			}
		})
	}
}

func FuzzNew(f *testing.F) {
	for _, n := range []string{"allow-all.rego", "allow-set-policy.rego"} {
		b, err := os.ReadFile(filepath.Join("testdata", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b), `{}`)
	}
	f.Add(genpolicyLike, createContainerInput)
	f.Fuzz(func(t *testing.T, text, input string) {
		p, err := New(text)
		if err != nil {
			return
		}
		_, _ = p.Allow(context.Background(), "CreateContainerRequest", json.RawMessage(input))
	})
}
