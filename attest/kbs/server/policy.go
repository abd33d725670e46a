package server

import (
	"context"
	"fmt"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// DefaultPolicy releases resources only to affirming evidence: every
// submodule of the token must have EAR status "affirming" (Trustee's
// sample_policies/affirming.rego), and the sample TEE is denied as in
// Trustee's default resource policy. The status is appraised from what the
// verifier established (see appraise): a vTPM quote from an untrusted AK,
// a TDX quote whose TCB level is unknown or not current, or a debug guest
// is not affirming.
const DefaultPolicy = `package policy

default allow := false

allow if {
	data.plugin == "resource"
	count(input.submods) > 0
	not any_not_affirming
	not input.submods.cpu0["ear.veraison.annotated-evidence"].sample
}

any_not_affirming if {
	some submod in input.submods
	not submod["ear.status"] == "affirming"
}
`

// AllowAllPolicy has the semantics of Trustee's allow_all.rego: the
// resource plugin is allowed for every attested TEE, sample included.
const AllowAllPolicy = `package policy

default allow := false

allow if data.plugin == "resource"
`

const policyQuery = "data.policy.allow"

// policyEngine evaluates the resource policy with Trustee's shapes: input
// is the verified token claims, data is {"plugin","resource-path","query"}.
type policyEngine struct {
	mu       sync.RWMutex
	text     string
	compiler *ast.Compiler
}

func newPolicyEngine(text string) (*policyEngine, error) {
	p := &policyEngine{}
	if err := p.set(text); err != nil {
		return nil, err
	}
	return p, nil
}

// compilePolicy accepts Rego v1 and, failing that, v0 (Trustee's regorus
// accepts both); the module must be package policy.
func compilePolicy(text string) (*ast.Compiler, error) {
	mod, err := ast.ParseModuleWithOpts("policy.rego", text, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		var err0 error
		mod, err0 = ast.ParseModuleWithOpts("policy.rego", text, ast.ParserOptions{RegoVersion: ast.RegoV0})
		if err0 != nil {
			return nil, fmt.Errorf("parse resource policy: %w", err)
		}
	}
	if got := mod.Package.Path.String(); got != "data.policy" {
		return nil, fmt.Errorf("resource policy is package %s, want policy", got)
	}
	c := ast.NewCompiler()
	if c.Compile(map[string]*ast.Module{"policy.rego": mod}); c.Failed() {
		return nil, fmt.Errorf("compile resource policy: %w", c.Errors)
	}
	return c, nil
}

func (p *policyEngine) set(text string) error {
	c, err := compilePolicy(text)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.text, p.compiler = text, c
	p.mu.Unlock()
	return nil
}

func (p *policyEngine) get() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.text
}

// allow evaluates data.policy.allow; undefined or non-boolean is false.
func (p *policyEngine) allow(ctx context.Context, input any, data map[string]any) (bool, error) {
	p.mu.RLock()
	c := p.compiler
	p.mu.RUnlock()
	rs, err := rego.New(
		rego.Query(policyQuery),
		rego.Compiler(c),
		rego.Store(inmem.NewFromObject(data)),
		rego.Input(input),
	).Eval(ctx)
	if err != nil {
		return false, fmt.Errorf("evaluate resource policy: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return false, nil
	}
	b, ok := rs[0].Expressions[0].Value.(bool)
	return ok && b, nil
}
