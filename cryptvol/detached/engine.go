package detached

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
	"github.com/cocoon-cc/cocoon/internal/detach"
)

// EngineCommand is the hidden first argument that makes a binary the
// engine process. Start decides the whole argv; nobody types it.
const EngineCommand = "__cocoon-volume-engine"

// RunEngineIfRequested turns this process into an engine process and exits
// when Start started it; otherwise it returns at once. Every binary that
// calls Start (or whose tests do, from TestMain) calls it first in main.
func RunEngineIfRequested() {
	if !detach.Requested(EngineCommand) {
		return
	}
	if err := serveEngine(); err != nil {
		fmt.Fprintln(os.Stderr, "volume engine:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveEngine is the engine process. It opens the volume, writes the state
// file, reports "ok" on fd 4, then serves until SIGTERM or SIGINT (close)
// or SIGUSR1 (destroy).
func serveEngine() error {
	reqPipe := os.NewFile(3, "request")
	statPipe := os.NewFile(4, "status")
	if reqPipe == nil || statPipe == nil {
		return errors.New("the engine process is started by detached.Start, not by hand")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt, syscall.SIGUSR1)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	ctx := context.Background()

	fail := func(err error) error {
		fmt.Fprintf(statPipe, "error: %v\n", err)
		statPipe.Close()
		return err
	}
	req, secret, err := readRequest(reqPipe)
	if err != nil {
		return fail(err)
	}
	_, statePath, logPath, err := StatePaths(req.StateDir, req.MountDir)
	if err != nil {
		return fail(err)
	}
	v, err := openCancellable(ctx, req, secret, sigs)
	if err != nil {
		return fail(err)
	}
	st := State{Info: v.Info(), PID: os.Getpid(), StartTime: processStartTime(os.Getpid()), Log: logPath}
	if err := writeState(statePath, &st); err != nil {
		return fail(errors.Join(err, v.Close(ctx)))
	}
	fmt.Fprint(statPipe, "ok\n")
	statPipe.Close()
	log.G(ctx).WithFields(log.Fields{"mount": req.MountDir, "engine": v.Engine()}).Info("engine process serving")
	serveUntilReleased(ctx, v, statePath, sigs)
	return nil
}

// readRequest reads the request line and the secret after it.
func readRequest(r *os.File) (Request, []byte, error) {
	defer r.Close()
	var req Request
	br := bufio.NewReader(r)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return req, nil, fmt.Errorf("reading request: %w", err)
	}
	if err := json.Unmarshal(line, &req); err != nil {
		return req, nil, fmt.Errorf("decoding request: %w", err)
	}
	secret, err := io.ReadAll(br)
	if err != nil {
		return req, nil, fmt.Errorf("reading passphrase: %w", err)
	}
	return req, secret, nil
}

// openCancellable opens or creates the volume. A signal while it is being
// opened (a key derivation can take long, far longer with a hostile
// header) cancels the open and is handed back on sigs, so that the serving
// loop sees it should the open finish anyway.
func openCancellable(ctx context.Context, req Request, secret []byte, sigs chan os.Signal) (*cryptvol.Volume, error) {
	defer luks2.Zero(secret)
	openCtx, cancelOpen := context.WithCancel(ctx)
	defer cancelOpen()
	opening := make(chan struct{})
	early := make(chan os.Signal, 1)
	go func() {
		select {
		case sig := <-sigs:
			early <- sig
			cancelOpen()
		case <-opening:
		}
	}()
	v, err := openVolume(openCtx, req, secret)
	close(opening)
	select {
	case sig := <-early: // the signal came while opening: hand it to the loop
		select {
		case sigs <- sig:
		default: // another one is already queued
		}
	default:
	}
	return v, err
}

func openVolume(ctx context.Context, req Request, secret []byte) (*cryptvol.Volume, error) {
	switch req.Op {
	case OpOpen:
		return cryptvol.Open(ctx, cryptvol.OpenOptions{
			Header: req.Header, Device: req.Device, Passphrase: secret, MountDir: req.MountDir,
			Mkfs: req.Mkfs, Engine: req.Engine, RuntimeDir: req.RuntimeDir,
		})
	case OpCreate:
		return cryptvol.CreateEphemeral(ctx, cryptvol.EphemeralOptions{
			Backing: req.Backing, Size: req.Size, MountDir: req.MountDir, Engine: req.Engine, RuntimeDir: req.RuntimeDir,
		})
	}
	return nil, fmt.Errorf("unknown operation %q", req.Op)
}

// serveUntilReleased closes (SIGTERM, SIGINT) or destroys (SIGUSR1) the
// volume when told; a volume still busy keeps being served.
func serveUntilReleased(ctx context.Context, v *cryptvol.Volume, statePath string, sigs chan os.Signal) {
	for sig := range sigs {
		var err error
		if sig == syscall.SIGUSR1 {
			err = v.Destroy(ctx)
		} else {
			err = v.Close(ctx)
		}
		if err != nil {
			// Still mounted (busy): keep serving so no data is lost.
			log.G(ctx).WithError(err).WithField("signal", sig.String()).Error("volume not released; still serving")
			continue
		}
		if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("removing state file")
		}
		log.G(ctx).WithField("signal", sig.String()).Info("volume released; engine process exiting")
		return
	}
}
