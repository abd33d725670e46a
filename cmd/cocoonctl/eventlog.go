package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/cocoon-cc/cocoon/attest/eventlog"
)

func init() {
	register(command{
		name:    "eventlog parse",
		summary: "print the events of a CCEL, cc_eventlog or AAEL file as JSON",
		run:     func(ctx context.Context, args []string) error { return runEventlogParse(ctx, args, os.Stdout) },
	})
}

// runEventlogParse: eventlog parse [--base64] FILE. The output is a JSON
// array of events: index, type, type_name, digests (algorithm -> hex),
// event (base64), digest_matches_event and, for AAEL entries, aael
// {string: "domain operation content", domain, operation, content}.
func runEventlogParse(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("eventlog parse")
	b64 := fs.Bool("base64", false, "FILE holds base64 text, such as the cc_eventlog field of TDX evidence")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want one event log FILE: %w", errUsage)
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	if *b64 {
		if raw, err = base64.StdEncoding.DecodeString(string(bytes.TrimSpace(raw))); err != nil {
			return fmt.Errorf("%s: not standard base64: %w", fs.Arg(0), err)
		}
	}
	events, err := eventlog.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	if events == nil {
		events = []eventlog.Event{}
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(events)
}
