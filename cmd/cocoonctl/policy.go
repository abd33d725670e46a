package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cocoon-cc/cocoon/attest/agentpolicy"
)

func init() {
	register(command{
		name:    "policy eval",
		summary: "evaluate a Kata agent policy for one request; exit 0 allow, 1 deny (or error)",
		run:     func(ctx context.Context, args []string) error { return runPolicyEval(ctx, args, os.Stdout) },
	})
}

// errDenied makes `policy eval` exit 1 after printing "deny".
var errDenied = fmt.Errorf("denied by policy")

// runPolicyEval prints "allow" or "deny" (followed by the policy's print()
// output, one line each, indented). Exit status: 0 allow, 1 deny, 1 with a
// message on stderr for evaluation errors (main maps every error to 1),
// 2 for usage errors.
func runPolicyEval(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("policy eval")
	policyPath := fs.String("policy", "", "policy.rego `file` (Rego v0, package agent_policy) (required)")
	request := fs.String("request", "", "request message name, e.g. CreateContainerRequest (required)")
	inputPath := fs.String("input", "", "request JSON `file` as the agent serialises it, - for stdin (default {})")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *policyPath == "" || *request == "" {
		return fmt.Errorf("--policy and --request are required: %w", errUsage)
	}
	p, err := agentpolicy.Load(*policyPath)
	if err != nil {
		return err
	}
	input := []byte("{}")
	switch *inputPath {
	case "":
	case "-":
		if input, err = io.ReadAll(io.LimitReader(os.Stdin, agentpolicy.MaxFileBytes)); err != nil {
			return err
		}
	default:
		if input, err = os.ReadFile(*inputPath); err != nil {
			return err
		}
	}
	d, err := p.Evaluate(ctx, *request, input)
	if err != nil {
		return err
	}
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	if d.Overridden {
		verdict += " (AllowRequestsFailingPolicy)"
	}
	var b strings.Builder
	b.WriteString(verdict + "\n")
	for _, line := range d.Prints {
		b.WriteString("  " + line + "\n")
	}
	if _, err := io.WriteString(out, b.String()); err != nil {
		return err
	}
	if !d.Allowed {
		return fmt.Errorf("%s: %w", *request, errDenied)
	}
	return nil
}
