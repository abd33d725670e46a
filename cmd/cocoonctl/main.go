// Command cocoonctl is cocoon's operator and debugging CLI: containerd
// configuration, node and guest checks (doctor), attestation debugging
// (evidence, token, resource), and the tools later capabilities add
// (secrets, encryption, init-data, volumes).
//
// Each subcommand lives in its own file and registers itself in init with
// register; multi-word subcommands ("kbs token") are matched on the longest
// prefix of the arguments.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
)

// command is one cocoonctl subcommand.
type command struct {
	name    string // words separated by single spaces, e.g. "kbs token"
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("cocoonctl: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// errUsage makes main print the usage of the command and exit 2.
var errUsage = errors.New("invalid arguments (see -h)")

func lookup(args []string) (command, []string, bool) {
	for n := len(args); n > 0; n-- {
		if c, ok := commands[strings.Join(args[:n], " ")]; ok {
			return c, args[n:], true
		}
	}
	return command{}, nil, false
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(os.Stderr, "usage: cocoonctl COMMAND [flags]\n\ncommands:")
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-28s %s\n", n, commands[n].summary)
	}
}

func main() {
	detached.RunEngineIfRequested() // volume open/create's engine process
	c, rest, ok := lookup(os.Args[1:])
	if !ok {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := c.run(ctx, rest)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "cocoonctl %s: %v\n", c.name, err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "cocoonctl %s: %v\n", c.name, err)
		os.Exit(1)
	}
}

// newFlags returns a flag set for a subcommand that reports errors instead
// of exiting, so run functions stay testable.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("cocoonctl "+name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}
