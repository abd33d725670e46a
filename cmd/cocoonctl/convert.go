package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cocoon-cc/cocoon/image/convert"
	"github.com/cocoon-cc/cocoon/image/encrypt"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

func init() {
	register(command{
		name:    "convert",
		summary: "rewrite an image's layers as eStargz for lazy pull (TOC digest annotated), optionally encrypting them",
		run:     func(ctx context.Context, args []string) error { return runConvert(ctx, args, os.Stdout, os.Stderr) },
	})
}

func runConvert(ctx context.Context, args []string, out, warn io.Writer) error {
	fs := newFlags("convert")
	estargz := fs.Bool("estargz", false, "write eStargz layers (required: the only format so far)")
	enc := fs.Bool("encrypt", false, "encrypt the eStargz layers as cocoonctl encrypt does (needs --kid and --key-file)")
	kid := fs.String("kid", "", "with --encrypt: resource `URI` of the KEK in the KBS, e.g. kbs:///default/image-kek/1")
	keyFile := fs.String("key-file", "", "with --encrypt: `file` holding the 32-byte KEK registered in the KBS at --kid")
	prioFile := fs.String("prioritized-files", "", "`file` listing the paths the container reads first, one a line (they come first in each layer, before .prefetch.landmark)")
	var prio flagutil.StringList
	fs.Var(&prio, "prioritize", "a `path` the container reads first (repeatable; after those of --prioritized-files)")
	var o convert.Options
	fs.IntVar(&o.ChunkSize, "chunk-size", 0, "largest uncompressed chunk in `bytes`, each verified by its own TOC digest (default: estargz's 4 MiB)")
	fs.IntVar(&o.CompressionLevel, "compression-level", 0, "gzip `level` 1 (fastest) to 9 (default 9)")
	fs.BoolVar(&o.Force, "force", false, "rebuild layers that are already eStargz instead of keeping them")
	fs.StringVar(&o.TmpDir, "tmpdir", "", "`dir` for the converted layers before upload (default: the system temp dir)")
	insecure := fs.Bool("insecure", false, "allow plain HTTP (and self-signed TLS) registries")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: cocoonctl convert --estargz [--encrypt --kid KID --key-file FILE] [--prioritized-files FILE | --prioritize PATH ...] [--insecure] SRC_REF DST_REF\n\nREF is a registry reference or oci:DIR[:TAG] (an OCI image layout).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 || !*estargz {
		return fmt.Errorf("want --estargz, SRC_REF and DST_REF: %w", errUsage)
	}
	var err error
	if o.Prioritized, err = prioritized(*prioFile, prio); err != nil {
		return err
	}
	var eo *encrypt.Options
	if *enc {
		if eo, err = encryptOptions(*kid, *keyFile, o.TmpDir); err != nil {
			return err
		}
		defer clear(eo.KEK)
	} else if *kid != "" || *keyFile != "" {
		return fmt.Errorf("--kid and --key-file need --encrypt: %w", errUsage)
	}
	res, err := convert.Ref(ctx, fs.Arg(0), fs.Arg(1), *insecure, o, eo)
	if err != nil {
		return err
	}
	for _, p := range res.NotFound {
		fmt.Fprintf(warn, "cocoonctl convert: warning: prioritized file %s is in no converted layer\n", p)
	}
	_, err = fmt.Fprintf(out, "%s@%s\n", fs.Arg(1), res.Digest)
	return err
}

// prioritized reads the paths of a --prioritized-files file (one a line;
// blank lines and lines starting with # are skipped), then appends extra.
func prioritized(file string, extra []string) ([]string, error) {
	var paths []string
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read prioritized files: %w", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
				paths = append(paths, l)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read prioritized files %s: %w", file, err)
		}
	}
	return append(paths, extra...), nil
}
