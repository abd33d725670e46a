package harness

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the harness uses. *testing.T and
// *testing.B satisfy it; commands use a Script.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
	Name() string
}

// Script is a TB for commands (demo, bench): Logf prints to stderr with a
// timestamp and Close runs the registered cleanups, last registered first.
type Script struct {
	name     string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	quiet    bool
}

// NewScript returns a Script named name. When quiet is true, Logf output is
// discarded unless the script has failed (the log files are still kept and
// printed on failure).
func NewScript(name string, quiet bool) *Script {
	return &Script{name: name, quiet: quiet}
}

// Helper does nothing; it exists to satisfy TB.
func (s *Script) Helper() {}

// Name returns the script's name.
func (s *Script) Name() string { return s.name }

// Logf prints a timestamped line to stderr.
func (s *Script) Logf(format string, args ...any) {
	s.mu.Lock()
	quiet := s.quiet && !s.failed
	s.mu.Unlock()
	if quiet {
		return
	}
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// Cleanup registers f to run on Close.
func (s *Script) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// Fail marks the script as failed: Close then prints daemon logs.
func (s *Script) Fail() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = true
}

// Failed reports whether Fail was called.
func (s *Script) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Close runs the cleanups in reverse order of registration. It is safe to
// call more than once.
func (s *Script) Close() {
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.mu.Unlock()
			return
		}
		f := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		f()
	}
}

// RunScript runs a command's body as the Script name, with a context that
// ends on SIGINT or SIGTERM. On error it marks the script failed (its
// daemons' logs are printed), runs the cleanups, prints "name failed: err"
// and exits with status 1; otherwise it runs the cleanups and returns.
func RunScript(name string, quiet bool, run func(ctx context.Context, s *Script) error) {
	s := NewScript(name, quiet)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, s)
	stop()
	if err != nil {
		s.Fail()
		fmt.Fprintf(os.Stderr, "%s failed: %v\n", name, err)
	}
	s.Close()
	if err != nil {
		os.Exit(1)
	}
}
