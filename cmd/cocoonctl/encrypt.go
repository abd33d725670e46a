package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/encrypt"
)

func init() {
	register(command{
		name:    "encrypt",
		summary: "encrypt every layer of an image for the attestation-agent key provider (KEK at --kid in the KBS)",
		run:     func(ctx context.Context, args []string) error { return runEncrypt(ctx, args, os.Stdout) },
	})
}

func runEncrypt(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("encrypt")
	insecure := fs.Bool("insecure", false, "allow plain HTTP (and self-signed TLS) registries")
	kid := fs.String("kid", "", "resource `URI` of the KEK in the KBS, e.g. kbs:///default/image-kek/1 (required)")
	keyFile := fs.String("key-file", "", "`file` holding the 32-byte KEK, as registered in the KBS at --kid (required)")
	tmpDir := fs.String("tmpdir", "", "`dir` for the encrypted layers before upload (default: the system temp dir)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: cocoonctl encrypt [--insecure] --kid KID --key-file FILE SRC_REF DST_REF\n\nREF is a registry reference or oci:DIR[:TAG] (an OCI image layout).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("want SRC_REF and DST_REF: %w", errUsage)
	}
	o, err := encryptOptions(*kid, *keyFile, *tmpDir)
	if err != nil {
		return err
	}
	defer clear(o.KEK)
	d, err := encryptRef(ctx, fs.Arg(0), fs.Arg(1), *insecure, *o)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s@%s\n", fs.Arg(1), d)
	return err
}

// encryptRef reads src, encrypts it and writes it to dst, returning the
// manifest digest written.
func encryptRef(ctx context.Context, src, dst string, insecure bool, o encrypt.Options) (string, error) {
	img, err := encrypt.OpenRef(ctx, src, insecure)
	if err != nil {
		return "", err
	}
	enc, err := encrypt.Image(ctx, img, o)
	if err != nil {
		return "", err
	}
	defer enc.Close()
	out, err := enc.Image()
	if err != nil {
		return "", err
	}
	d, err := encrypt.WriteRef(ctx, dst, out, insecure)
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// encryptOptions checks --kid and reads the KEK from --key-file (both
// required) for `cocoonctl encrypt` and `cocoonctl convert --encrypt`.
func encryptOptions(kid, keyFile, tmpDir string) (*encrypt.Options, error) {
	if kid == "" || keyFile == "" {
		return nil, fmt.Errorf("--kid and --key-file are required: %w", errUsage)
	}
	if _, err := kbs.ParseResourceURI(kid); err != nil || !strings.HasPrefix(kid, "kbs://") {
		return nil, fmt.Errorf("--kid %q is not a kbs:///repo/type/tag URI the guest can fetch: %w", kid, errUsage)
	}
	kek, err := readKEK(keyFile)
	if err != nil {
		return nil, err
	}
	return &encrypt.Options{KEK: kek, KID: kid, TmpDir: tmpDir}, nil
}

// readKEK reads a key file holding exactly the 32 raw KEK bytes (what
// coco_keyprovider's keypath holds and what the KBS serves).
func readKEK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read KEK: %w", err)
	}
	if len(b) != decrypt.KEKSize {
		clear(b)
		return nil, fmt.Errorf("KEK file %s holds %d bytes, want exactly %d raw bytes", path, len(b), decrypt.KEKSize)
	}
	return b, nil
}
