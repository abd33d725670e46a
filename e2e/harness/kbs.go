package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// AllowAllPolicy is Trustee's allow_all.rego: every attested TEE, the sample
// one included, may read every resource.
const AllowAllPolicy = "package policy\nimport rego.v1\ndefault allow := false\nallow if {\n\tdata.plugin == \"resource\"\n}\n"

// KBS is a cocoon-kbs (development KBS) process on 127.0.0.1.
type KBS struct {
	URL        string // http://127.0.0.1:PORT
	Repository string // resources at Repository/<repo>/<type>/<tag>
	Proc       *Process
}

// KBSOptions configure StartKBS.
type KBSOptions struct {
	// Policy is the resource policy Rego; empty means Trustee's default,
	// which denies the sample TEE.
	Policy string
	// Resources maps "repo/type/tag" to content, written before start.
	Resources map[string][]byte
}

// StartKBS starts cocoon-kbs on a free loopback port and waits for /healthz.
func (e *Env) StartKBS(ctx context.Context, o KBSOptions) (*KBS, error) {
	bin, err := e.CocoonBinary("cocoon-kbs")
	if err != nil {
		return nil, err
	}
	dir := e.Path("kbs")
	k := &KBS{Repository: filepath.Join(dir, "repository")}
	for path, data := range o.Resources {
		if err := k.SetResource(path, data); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(k.Repository, 0o700); err != nil {
		return nil, err
	}
	args := []string{"--repository", k.Repository}
	if o.Policy != "" {
		pf := filepath.Join(dir, "policy.rego")
		if err := os.WriteFile(pf, []byte(o.Policy), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--resource-policy", pf)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := e.StartProcess("cocoon-kbs", bin, append([]string{"--listen", host}, args...), nil)
		if err != nil {
			return nil, err
		}
		if lastErr = p.WaitHTTP(ctx, "http://"+host+"/healthz"); lastErr == nil {
			k.URL, k.Proc = "http://"+host, p
			return k, nil
		}
		_ = p.Stop(5 * time.Second)
	}
	return nil, fmt.Errorf("cocoon-kbs did not start: %w", lastErr)
}

// SetResource writes a resource into the repository, as an operator
// provisions Trustee's local repository; a running KBS serves it at once.
func (k *KBS) SetResource(path string, data []byte) error {
	p := filepath.Join(k.Repository, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o600)
}
