package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/cocoon-cc/cocoon/attest/initdata"
)

func init() {
	register(command{
		name:    "initdata digest",
		summary: "print the init-data digest (or, with --tee, the TEE register value) as hex",
		run:     func(ctx context.Context, args []string) error { return runInitdataDigest(ctx, args, os.Stdout) },
	})
	register(command{
		name:    "initdata encode",
		summary: "print the cc_init_data pod annotation value for an init-data TOML file",
		run:     func(ctx context.Context, args []string) error { return runInitdataEncode(ctx, args, os.Stdout) },
	})
	register(command{
		name:    "initdata decode",
		summary: "print the init-data TOML carried by a cc_init_data annotation value",
		run:     func(ctx context.Context, args []string) error { return runInitdataDecode(ctx, args, os.Stdout) },
	})
}

// runInitdataDigest: initdata digest [--tee tdx|snp|tpm] (FILE | --annotation VALUE | --device PATH)
func runInitdataDigest(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("initdata digest")
	tee := fs.String("tee", "", "print the value bound into this TEE's register instead: tdx (MR_CONFIG_ID), snp (HOST_DATA) or tpm (PCR8 after one extend from zero)")
	annotation := fs.String("annotation", "", "read the document from this cc_init_data annotation `value` (base64 of gzip)")
	device := fs.String("device", "", "read the document from a Kata init-data block device or image `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sources := fs.NArg()
	if *annotation != "" {
		sources++
	}
	if *device != "" {
		sources++
	}
	if sources != 1 || fs.NArg() > 1 {
		return fmt.Errorf("give exactly one of FILE, --annotation or --device: %w", errUsage)
	}
	var raw []byte
	var err error
	switch {
	case *annotation != "":
		raw, err = initdata.DecodeAnnotation(*annotation)
	case *device != "":
		raw, err = initdata.ReadDevice(*device)
	default:
		raw, err = os.ReadFile(fs.Arg(0))
	}
	if err != nil {
		return err
	}
	doc, err := initdata.Parse(raw)
	if err != nil {
		return err
	}
	value := doc.Digest()
	if *tee != "" {
		if value, err = initdata.ExpectedRegister(*tee, value); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintln(out, hex.EncodeToString(value))
	return err
}

func runInitdataEncode(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("initdata encode")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want one init-data TOML FILE: %w", errUsage)
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	value, err := initdata.EncodeAnnotation(raw)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, value)
	return err
}

// runInitdataDecode prints the exact document bytes (the digest covers
// them), without validating them, so that a broken annotation can be read.
func runInitdataDecode(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("initdata decode")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want one annotation VALUE: %w", errUsage)
	}
	raw, err := initdata.DecodeAnnotation(fs.Arg(0))
	if err != nil {
		return err
	}
	_, err = out.Write(raw)
	return err
}
