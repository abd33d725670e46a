// Package agentpolicy evaluates the Kata agent policy (COCO_SPEC 9): a Rego
// v0 module in `package agent_policy` whose rules, one per agent request
// message name (CreateContainerRequest, ExecProcessRequest, ...), decide
// whether a request from the untrusted host is allowed. The policy comes
// from init-data (`policy.rego`), from a file, or from SetPolicyRequest.
//
// Semantics follow the Kata agent (regorus engine):
//   - data starts as {"pstate":{}}; the query is data.agent_policy.<EntryPoint>
//     with input = the request's protobuf JSON (proto field names);
//   - the result must be one value: a boolean, or an object
//     {"allowed": bool, "ops": [RFC 6902 JSON-patch ops]} whose ops are
//     applied to data when allowed (this is how genpolicy keeps pstate);
//   - an undefined rule with no default is an internal error
//     ("<ep>: internal error policy check: unexpected eval_query result len 0");
//   - a denial is reported with the collected print() output
//     ("<ep> is blocked by policy: ...");
//   - if data.agent_policy.AllowRequestsFailingPolicy is true (evaluated
//     with input {}), denials and undefined results are allowed (logged);
//   - SetPolicy first asks the current policy's SetPolicyRequest with
//     input {"policy": text}, then replaces the policy and resets data;
//   - limits: 64 KiB per line, 16 MiB per file, 200 000 lines.
//
// Callers handle the one request-specific exception themselves: a denied
// ReadStreamRequest does not fail the call, its output is blanked.
//
// This package must never log request inputs (they carry environment
// variables and secrets) nor fetch policies; it only evaluates what it is
// given.
package agentpolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/print"
	"github.com/open-policy-agent/opa/v1/util"
)

// Limits enforced by the Kata agent on policy text.
const (
	MaxLineBytes = 64 << 10
	MaxFileBytes = 16 << 20
	MaxLines     = 200_000
)

// Well-known entry points.
const (
	SetPolicyRequest           = "SetPolicyRequest"
	AllowRequestsFailingPolicy = "AllowRequestsFailingPolicy"
	// DefaultPolicyPath is the agent's policy when nothing else is given.
	DefaultPolicyPath = "/etc/kata-opa/default-policy.rego"
	// PolicyFileEnv overrides the start-up policy path.
	PolicyFileEnv = "KATA_AGENT_POLICY_FILE"
)

// DeniedError is returned by SetPolicy (and may be built by callers from a
// Decision) when the policy denies a request.
type DeniedError struct {
	EntryPoint string
	Prints     []string
}

func (e *DeniedError) Error() string {
	return e.EntryPoint + " is blocked by policy: " + strings.Join(e.Prints, " ")
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Allowed bool
	// Prints is the print() output collected during evaluation.
	Prints []string
	// Overridden is true when the policy denied or left the request
	// undefined but AllowRequestsFailingPolicy allowed it anyway.
	Overridden bool
}

// Policy is a compiled agent policy with its data document. It is safe for
// concurrent use; evaluations are serialised because they may update data.
type Policy struct {
	mu       sync.Mutex
	compiler *ast.Compiler
	data     map[string]any
	prepared map[string]rego.PreparedEvalQuery
}

// New compiles policy text. Syntax and compile errors name the line.
func New(text string) (*Policy, error) {
	c, err := compile(text)
	if err != nil {
		return nil, err
	}
	return &Policy{compiler: c, data: initialData(), prepared: map[string]rego.PreparedEvalQuery{}}, nil
}

// Load reads and compiles a policy file.
func Load(path string) (*Policy, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("agentpolicy: %w", err)
	}
	if st.Size() > MaxFileBytes {
		return nil, fmt.Errorf("agentpolicy: %s is %d bytes, more than %d", path, st.Size(), MaxFileBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agentpolicy: %w", err)
	}
	p, err := New(string(b))
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return p, nil
}

func initialData() map[string]any { return map[string]any{"pstate": map[string]any{}} }

func checkLimits(text string) error {
	if len(text) > MaxFileBytes {
		return fmt.Errorf("agentpolicy: policy is %d bytes, more than %d", len(text), MaxFileBytes)
	}
	lines := strings.Split(text, "\n")
	if len(lines) > MaxLines {
		return fmt.Errorf("agentpolicy: policy has %d lines, more than %d", len(lines), MaxLines)
	}
	for i, l := range lines {
		if len(l) > MaxLineBytes {
			return fmt.Errorf("agentpolicy: policy line %d is %d bytes, more than %d", i+1, len(l), MaxLineBytes)
		}
	}
	return nil
}

func compile(text string) (*ast.Compiler, error) {
	if err := checkLimits(text); err != nil {
		return nil, err
	}
	opts := ast.ParserOptions{RegoVersion: ast.RegoV0}
	mod, err := ast.ParseModuleWithOpts("policy.rego", text, opts)
	if err != nil {
		return nil, fmt.Errorf("agentpolicy: parse policy: %w", err)
	}
	if mod == nil {
		return nil, errors.New("agentpolicy: policy is empty")
	}
	if pkg := mod.Package.Path.String(); pkg != "data.agent_policy" {
		return nil, fmt.Errorf("agentpolicy: policy.rego:%d: package is %s, want agent_policy", mod.Package.Location.Row, strings.TrimPrefix(pkg, "data."))
	}
	c := ast.NewCompiler().WithEnablePrintStatements(true).WithDefaultRegoVersion(ast.RegoV0)
	if c.Compile(map[string]*ast.Module{"policy.rego": mod}); c.Failed() {
		return nil, fmt.Errorf("agentpolicy: compile policy: %w", c.Errors)
	}
	return c, nil
}

type printCollector struct{ out []string }

func (p *printCollector) Print(_ print.Context, s string) error {
	p.out = append(p.out, s)
	return nil
}

func (p *Policy) query(ctx context.Context, ep string) (rego.PreparedEvalQuery, error) {
	if q, ok := p.prepared[ep]; ok {
		return q, nil
	}
	if !ast.IsVarCompatibleString(ep) {
		return rego.PreparedEvalQuery{}, fmt.Errorf("agentpolicy: invalid entry point %q", ep)
	}
	q, err := rego.New(
		rego.Query("data.agent_policy."+ep),
		rego.Compiler(p.compiler),
		rego.Store(inmem.NewFromObject(p.data)),
		rego.EnablePrintStatements(true),
		rego.SetRegoVersion(ast.RegoV0),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return rego.PreparedEvalQuery{}, fmt.Errorf("agentpolicy: prepare %s: %w", ep, err)
	}
	p.prepared[ep] = q
	return q, nil
}

// eval returns the single result value (nil, 0 when undefined).
func (p *Policy) eval(ctx context.Context, ep string, input any, prints *printCollector) (any, int, error) {
	q, err := p.query(ctx, ep)
	if err != nil {
		return nil, 0, err
	}
	rs, err := q.Eval(ctx, rego.EvalInput(input), rego.EvalPrintHook(prints))
	if err != nil {
		return nil, 0, fmt.Errorf("agentpolicy: %s: evaluate: %w", ep, err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return nil, len(rs), nil
	}
	return rs[0].Expressions[0].Value, 1, nil
}

// Evaluate decides request ep (the protobuf message name, e.g.
// "CreateContainerRequest") for input, the request's JSON.
func (p *Policy) Evaluate(ctx context.Context, ep string, input json.RawMessage) (Decision, error) {
	var in any
	if len(bytes.TrimSpace(input)) == 0 {
		in = map[string]any{}
	} else if err := util.UnmarshalJSON(input, &in); err != nil {
		return Decision{}, fmt.Errorf("agentpolicy: %s: input: %w", ep, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.evaluate(ctx, ep, in)
}

func (p *Policy) evaluate(ctx context.Context, ep string, in any) (Decision, error) {
	var prints printCollector
	v, n, err := p.eval(ctx, ep, in, &prints)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Prints: prints.out}
	var verr error
	switch r := v.(type) {
	case nil:
		verr = fmt.Errorf("%s: internal error policy check: unexpected eval_query result len %d", ep, n)
	case bool:
		d.Allowed = r
	case map[string]any:
		allowed, ok := r["allowed"].(bool)
		if !ok {
			verr = fmt.Errorf("%s: internal error policy check: result object has no boolean \"allowed\"", ep)
			break
		}
		d.Allowed = allowed
		if allowed && r["ops"] != nil {
			ops, ok := r["ops"].([]any)
			if !ok {
				return Decision{}, fmt.Errorf("agentpolicy: %s: \"ops\" is not an array", ep)
			}
			if err := p.applyOps(ops); err != nil {
				return Decision{}, fmt.Errorf("agentpolicy: %s: %w", ep, err)
			}
		}
	default:
		verr = fmt.Errorf("%s: internal error policy check: result is %T, want a boolean or {allowed, ops}", ep, v)
	}
	if verr == nil && d.Allowed {
		return d, nil
	}
	if ep != AllowRequestsFailingPolicy && p.allowFailing(ctx) {
		log.G(ctx).WithField("request", ep).Warn("agentpolicy: request failed the policy but AllowRequestsFailingPolicy is true")
		d.Allowed, d.Overridden = true, true
		return d, nil
	}
	if verr != nil {
		return Decision{}, verr
	}
	return d, nil
}

func (p *Policy) allowFailing(ctx context.Context) bool {
	v, _, err := p.eval(ctx, AllowRequestsFailingPolicy, map[string]any{}, &printCollector{})
	b, ok := v.(bool)
	return err == nil && ok && b
}

// Allow reports whether the policy allows request ep with input. A denial
// is (false, nil); an undefined result or evaluation failure is an error.
func (p *Policy) Allow(ctx context.Context, ep string, input json.RawMessage) (bool, error) {
	d, err := p.Evaluate(ctx, ep, input)
	return d.Allowed, err
}

// SetPolicy handles SetPolicyRequest: the current policy decides on
// {"policy": text}; if allowed, text replaces it and data is reset.
func (p *Policy) SetPolicy(ctx context.Context, text string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.evaluate(ctx, SetPolicyRequest, map[string]any{"policy": text})
	if err != nil {
		return err
	}
	if !d.Allowed {
		return &DeniedError{EntryPoint: SetPolicyRequest, Prints: d.Prints}
	}
	c, err := compile(text)
	if err != nil {
		return err
	}
	p.compiler, p.data, p.prepared = c, initialData(), map[string]rego.PreparedEvalQuery{}
	return nil
}

// Data returns a copy of the policy's data document (pstate and anything
// ops added).
func (p *Policy) Data() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p.data)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

func (p *Policy) applyOps(ops []any) error {
	// Work on a copy so a failing op leaves data unchanged.
	b, err := json.Marshal(p.data)
	if err != nil {
		return err
	}
	var doc any
	if err := util.UnmarshalJSON(b, &doc); err != nil {
		return err
	}
	for i, o := range ops {
		op, ok := o.(map[string]any)
		if !ok {
			return fmt.Errorf("ops[%d] is not an object", i)
		}
		if doc, err = applyPatchOp(doc, op); err != nil {
			return fmt.Errorf("ops[%d]: %w", i, err)
		}
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return errors.New("ops replaced data with a non-object")
	}
	p.data = m
	p.prepared = map[string]rego.PreparedEvalQuery{} // bound to the old store
	return nil
}
