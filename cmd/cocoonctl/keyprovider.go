package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
)

func init() {
	register(command{
		name:    "keyprovider",
		summary: "ocicrypt key provider (cmd protocol on stdin/stdout) for the attestation-agent provider: wrap with a KEK, unwrap through the KBS",
		run: func(ctx context.Context, args []string) error {
			return runKeyProvider(ctx, args, os.Stdin, os.Stdout)
		},
	})
}

// maxKeyProviderInput bounds what is read from stdin.
const maxKeyProviderInput = 1 << 20

// flexBytes is a protocol byte field. Go ocicrypt sends base64 strings;
// the Rust servers send JSON arrays of integers (COCO_SPEC 6.4); both are
// accepted.
type flexBytes []byte

func (f *flexBytes) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*f = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("bytes field: %w", err)
		}
		*f = d
		return nil
	case len(b) > 0 && b[0] == '[':
		var ints []int
		if err := json.Unmarshal(b, &ints); err != nil {
			return fmt.Errorf("bytes field: %w", err)
		}
		out := make([]byte, len(ints))
		for i, v := range ints {
			if v < 0 || v > 255 {
				return fmt.Errorf("bytes field: element %d is %d, not a byte", i, v)
			}
			out[i] = byte(v)
		}
		*f = out
		return nil
	}
	return errors.New("bytes field: want a base64 string or an array of integers")
}

// intArray marshals bytes as a JSON array of integers (ocicrypt-rs form).
type intArray []byte

func (a intArray) MarshalJSON() ([]byte, error) {
	if a == nil {
		return []byte("null"), nil
	}
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d", v)
	}
	b.WriteByte(']')
	return []byte(b.String()), nil
}

// keyProviderParams is the "Parameters" map of ocicrypt's EncryptConfig and
// DecryptConfig: provider name -> list of byte strings.
type keyProviderParams struct {
	Parameters map[string][]flexBytes `json:"Parameters"`
}

// keyProviderInput is ocicrypt's KeyProviderKeyWrapProtocolInput.
type keyProviderInput struct {
	Op            string `json:"op"`
	KeyWrapParams struct {
		EC       *keyProviderParams `json:"ec"`
		OptsData flexBytes          `json:"optsdata"`
	} `json:"keywrapparams"`
	KeyUnwrapParams struct {
		DC         *keyProviderParams `json:"dc"`
		Annotation flexBytes          `json:"annotation"`
	} `json:"keyunwrapparams"`
}

// parseKeyProviderInput decodes and checks one request.
func parseKeyProviderInput(b []byte) (*keyProviderInput, error) {
	var in keyProviderInput
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("parse key provider request: %w", err)
	}
	switch in.Op {
	case "keywrap":
		if len(in.KeyWrapParams.OptsData) == 0 {
			return nil, errors.New("keywrap request without optsdata")
		}
	case "keyunwrap":
		if len(in.KeyUnwrapParams.Annotation) == 0 {
			return nil, errors.New("keyunwrap request without annotation")
		}
	default:
		return nil, fmt.Errorf("unknown key provider op %q (want keywrap or keyunwrap)", in.Op)
	}
	return &in, nil
}

// wrapParams are coco_keyprovider's "k=v::k=v" parameters.
type wrapParams struct {
	keyID, keyPath, algorithm string
}

func parseWrapParams(s string) (wrapParams, error) {
	var p wrapParams
	for _, kv := range strings.Split(s, "::") {
		if kv == "" || kv == "Enabled" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, fmt.Errorf("key provider parameter %q is not key=value", kv)
		}
		switch k {
		case "keyid":
			p.keyID = v
		case "keypath":
			p.keyPath = v
		case "algorithm":
			p.algorithm = v
		case "sample":
			return p, errors.New("sample=true (coco_keyprovider's built-in test key) is not supported: pass keypath and keyid")
		default:
			return p, fmt.Errorf("unknown key provider parameter %q", k)
		}
	}
	if p.algorithm != "" && p.algorithm != decrypt.WrapTypeA256GCM {
		return p, fmt.Errorf("algorithm %q is not supported (A256GCM only)", p.algorithm)
	}
	return p, nil
}

type keyProviderConfig struct {
	provider  string
	kbsURL    string
	kbsCert   string
	tee       string
	keyFile   string
	kid       string
	arrayOut  bool
	kbsClient func() (decrypt.ResourceGetter, error)
}

func runKeyProvider(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := newFlags("keyprovider")
	var c keyProviderConfig
	fs.StringVar(&c.provider, "provider", "attestation-agent", "provider `name` in the ocicrypt configuration (key of the encryption parameters)")
	fs.StringVar(&c.kbsURL, "kbs-url", "", "KBS base `URL`: KEKs for keyunwrap (and for keywrap without a key file) are fetched there after attestation")
	fs.StringVar(&c.kbsCert, "kbs-cert", "", "extra trusted root `PEM` for an HTTPS KBS")
	fs.StringVar(&c.tee, "tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
	fs.StringVar(&c.keyFile, "key-file", "", "`file` holding the 32-byte KEK, used when the request names no keypath (and for keyunwrap of --kid without a KBS)")
	fs.StringVar(&c.kid, "kid", "", "KEK resource `URI` used when the request names no keyid")
	encoding := fs.String("byte-encoding", "base64", "reply byte encoding: base64 (Go ocicrypt) or array (ocicrypt-rs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	switch *encoding {
	case "base64":
	case "array":
		c.arrayOut = true
	default:
		return fmt.Errorf("--byte-encoding %q: want base64 or array: %w", *encoding, errUsage)
	}
	c.kbsClient = func() (decrypt.ResourceGetter, error) {
		if c.kbsURL == "" {
			return nil, errors.New("no --kbs-url to fetch the KEK from")
		}
		cfg := kbs.Config{URL: c.kbsURL, HTTPTimeout: 60 * time.Second}
		if c.kbsCert != "" {
			b, err := os.ReadFile(c.kbsCert)
			if err != nil {
				return nil, fmt.Errorf("read --kbs-cert: %w", err)
			}
			cfg.CertPEM = b
		}
		a, err := newAttester(c.tee)
		if err != nil {
			return nil, err
		}
		cfg.Attester = a
		return kbs.NewClient(cfg)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxKeyProviderInput+1))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if len(b) > maxKeyProviderInput {
		return fmt.Errorf("request is larger than %d bytes", maxKeyProviderInput)
	}
	in, err := parseKeyProviderInput(b)
	if err != nil {
		return err
	}
	reply, err := c.handle(ctx, in)
	if err != nil {
		return err
	}
	_, err = stdout.Write(reply)
	return err
}

// handle answers one request with the reply JSON.
func (c *keyProviderConfig) handle(ctx context.Context, in *keyProviderInput) ([]byte, error) {
	switch in.Op {
	case "keywrap":
		annotation, err := c.wrap(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("keywrap: %w", err)
		}
		if c.arrayOut {
			return json.Marshal(map[string]map[string]intArray{"keywrapresults": {"annotation": annotation}})
		}
		return json.Marshal(map[string]map[string][]byte{"keywrapresults": {"annotation": annotation}})
	default: // keyunwrap, checked by parseKeyProviderInput
		opts, err := c.unwrap(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("keyunwrap: %w", err)
		}
		defer clear(opts)
		if c.arrayOut {
			return json.Marshal(map[string]map[string]intArray{"keyunwrapresults": {"optsdata": opts}})
		}
		return json.Marshal(map[string]map[string][]byte{"keyunwrapresults": {"optsdata": opts}})
	}
}

func (c *keyProviderConfig) wrap(ctx context.Context, in *keyProviderInput) ([]byte, error) {
	var p wrapParams
	if ec := in.KeyWrapParams.EC; ec != nil {
		if vals := ec.Parameters[c.provider]; len(vals) > 0 {
			var err error
			if p, err = parseWrapParams(string(vals[0])); err != nil {
				return nil, err
			}
		}
	}
	kid := p.keyID
	if kid == "" {
		kid = c.kid
	}
	if kid == "" {
		return nil, errors.New("no keyid parameter and no --kid: the guest needs a kbs:///repo/type/tag to fetch the KEK from")
	}
	if !strings.HasPrefix(kid, "kbs") || !strings.Contains(kid, "://") {
		return nil, fmt.Errorf("keyid %q is not a kbs:///repo/type/tag URI the guest can fetch", kid)
	}
	var kek []byte
	var err error
	switch keyPath := p.keyPath; {
	case keyPath != "":
		kek, err = readKEK(keyPath)
	case c.keyFile != "":
		kek, err = readKEK(c.keyFile)
	default:
		var r decrypt.ResourceGetter
		if r, err = c.kbsClient(); err == nil {
			if kek, err = r.GetResource(ctx, kid); err != nil {
				err = fmt.Errorf("get KEK %s: %w", kid, err)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	packet, err := decrypt.WrapKey(kek, kid, in.KeyWrapParams.OptsData)
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("kid", kid).Debug("layer key wrapped")
	return packet, nil
}

func (c *keyProviderConfig) unwrap(ctx context.Context, in *keyProviderInput) ([]byte, error) {
	p, err := decrypt.ParseAnnotationPacket(in.KeyUnwrapParams.Annotation)
	if err != nil {
		return nil, err
	}
	if c.keyFile != "" && (c.kid == "" || c.kid == p.Kid) {
		kek, err := readKEK(c.keyFile)
		if err != nil {
			return nil, err
		}
		defer clear(kek)
		return p.UnwrapWithKEK(kek)
	}
	r, err := c.kbsClient()
	if err != nil {
		return nil, fmt.Errorf("KEK %s: %w", p.Kid, err)
	}
	return p.Unwrap(ctx, r)
}
