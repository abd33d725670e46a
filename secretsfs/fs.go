// Package secretsfs serves sealed secrets and KBS resources as files, over
// FUSE, inside the TEE:
//
//	DIR/<name>/...            mirrors a source directory (for example a
//	                          Kubernetes secret volume as delivered into the
//	                          TEE); a file whose content is a sealed secret
//	                          reads as its unsealed value, other files pass
//	                          through; source changes show without a remount
//	DIR/kbs/<repo>/<type>/<tag>
//	                          a KBS resource, fetched on open
//
// Listing and stat never contact the KBS: a sealed file or a resource
// whose value is not in the cache is listed with the bound of its size
// (64 MiB) and no blocks; an open resolves it and invalidates the
// attributes, so that a stat or fstat then reports the exact size. Reads
// end at the value's end whatever size was listed.
//
// The filesystem is read-only; files are mode 0400 and directories 0500,
// owned by the configured uid and gid, and the kernel enforces that
// (default_permissions). Plaintext lives only in process memory: in a cache
// that expires after the TTL (the next access fetches again) and in the
// buffers of open files, and every file is opened with direct I/O so the
// kernel page cache never holds it. A failed unseal or fetch makes the
// open of that file fail with EIO, or EACCES when the KBS
// resource policy denied it, and the reason is logged; failures are
// remembered for a second so a retrying reader does not re-run a KBS
// handshake per request.
//
// The package must never log, write to disk or put into an error a
// plaintext, a sealed secret's resolved value or key material. Sealed
// secrets and resources are never served unverified: an unseal that fails
// verification yields an error, never the raw bytes.
//
// ProvisionCredentials implements cdh.toml [[credentials]]: resources
// fetched once at start and written, mode 0400, only to tmpfs or ramfs.
package secretsfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/internal/fuseutil"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// DefaultTTL is how long a resolved plaintext is served from memory before
// the next access fetches it again.
const DefaultTTL = 5 * time.Minute

// KBSDir is the name of the directory that serves KBS resources.
const KBSDir = "kbs"

// Kernel caching of names and attributes. Short, so that source changes
// and TTL refreshes show within a second; file data is never cached by the
// kernel (direct I/O), so reads always see the current value.
const (
	entryTimeout = time.Second
	attrTimeout  = time.Second
)

// Options configures Mount.
type Options struct {
	// Dir is the mount point (must exist).
	Dir string
	// Sources maps a directory name under Dir to the source directory it
	// mirrors. Names are single path elements; "kbs" is reserved when
	// Resources is set.
	Sources map[string]string
	// Unsealer resolves sealed files. Nil makes every sealed file EIO.
	Unsealer *sealed.Unsealer
	// Resources serves Dir/kbs/<repo>/<type>/<tag>; nil omits Dir/kbs.
	Resources kbs.ResourceGetter
	// UID and GID own every file and directory.
	UID, GID uint32
	// TTL bounds how long a plaintext is served from memory; zero means
	// DefaultTTL.
	TTL time.Duration
	// Now is the clock for the TTL; nil means time.Now. Tests move it.
	Now func() time.Time
}

// ParseSources turns NAME=SRCDIR values (cocoond's repeatable
// --secrets-source flag and its config list) into Options.Sources. A name
// given twice is an error.
func ParseSources(specs []string) (map[string]string, error) {
	out := make(map[string]string, len(specs))
	for _, spec := range specs {
		name, dir, ok := strings.Cut(spec, "=")
		if !ok || name == "" || dir == "" {
			return nil, fmt.Errorf("secrets source %q: want NAME=SRCDIR", spec)
		}
		if err := validName(name); err != nil {
			return nil, fmt.Errorf("secrets source %q: %w", spec, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("secrets source %q: name %s given twice", spec, name)
		}
		out[name] = dir
	}
	return out, nil
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("name %q is not a single path element", name)
	}
	return nil
}

// FS is a mounted secrets filesystem.
type FS struct {
	dir       string
	base      context.Context // carries the logger; never cancelled
	unsealer  *sealed.Unsealer
	resources kbs.ResourceGetter
	uid, gid  uint32
	mtime     time.Time
	cache     *cache
	sources   map[string]*source
	names     []string // root entries, sorted
	server    *fuse.Server
	stopSweep chan struct{}
	swept     chan struct{}

	unmountOnce sync.Once
	unmountErr  error
}

// source is one mirrored directory; os.Root keeps every access inside it,
// symlinks included (Kubernetes' ..data links are relative, inside).
type source struct {
	name string
	root *os.Root
}

// Mount validates opts, mounts the filesystem on opts.Dir and serves it
// until Unmount. ctx supplies the logger; it is not kept for cancellation.
func Mount(ctx context.Context, opts Options) (*FS, error) {
	if opts.Dir == "" {
		return nil, errors.New("secretsfs: no mount directory")
	}
	if opts.TTL < 0 {
		return nil, fmt.Errorf("secretsfs: negative TTL %s", opts.TTL)
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	f := &FS{
		dir:       opts.Dir,
		base:      log.WithLogger(context.WithoutCancel(ctx), log.G(ctx).WithField("secretsfs", opts.Dir)),
		unsealer:  opts.Unsealer,
		resources: opts.Resources,
		uid:       opts.UID,
		gid:       opts.GID,
		mtime:     opts.Now(),
		cache:     newCache(opts.TTL, opts.Now),
		sources:   map[string]*source{},
	}
	if f.resources != nil {
		f.names = append(f.names, KBSDir)
	}
	closeSources := func() {
		for _, s := range f.sources {
			_ = s.root.Close()
		}
	}
	for name, dir := range opts.Sources {
		if err := validName(name); err != nil {
			closeSources()
			return nil, fmt.Errorf("secretsfs: source: %w", err)
		}
		if name == KBSDir && f.resources != nil {
			closeSources()
			return nil, fmt.Errorf("secretsfs: source name %q is reserved for KBS resources", name)
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			closeSources()
			return nil, fmt.Errorf("secretsfs: source %s: %w", name, err)
		}
		f.sources[name] = &source{name: name, root: root}
		f.names = append(f.names, name)
	}
	sort.Strings(f.names)

	et, at, nt := entryTimeout, attrTimeout, time.Duration(0)
	server, err := gofs.Mount(opts.Dir, &rootNode{fsys: f}, &gofs.Options{
		MountOptions: fuse.MountOptions{
			// Mount with mount(2) only: no fusermount helper, whose absence
			// would otherwise hide the real error (e.g. a missing mount point).
			DirectMountStrict: true,
			// Containers run as other users; the kernel then checks the
			// 0400/0500 modes against UID and GID.
			AllowOther:         true,
			Options:            []string{"ro", "default_permissions"},
			FsName:             "cocoon-secrets",
			Name:               "cocoon-secrets",
			DisableXAttrs:      true,
			DisableReadDirPlus: true, // a listing must not unseal every file
		},
		EntryTimeout:    &et,
		AttrTimeout:     &at,
		NegativeTimeout: &nt, // new source files show at once
		UID:             opts.UID,
		GID:             opts.GID,
	})
	if err != nil {
		closeSources()
		return nil, fmt.Errorf("secretsfs: mount %s: %w", opts.Dir, err)
	}
	f.server = server
	if f.unsealer != nil && f.unsealer.SkipVerification {
		log.G(f.base).Warn("secretsfs: sealed secret signatures are NOT verified (skip_sealed_secret_verification)")
	}
	f.stopSweep, f.swept = make(chan struct{}), make(chan struct{})
	go f.sweepLoop(max(opts.TTL/2, time.Second))
	log.G(f.base).WithFields(log.Fields{"sources": len(f.sources), "kbs": f.resources != nil, "ttl": opts.TTL}).Info("secretsfs: mounted")
	return f, nil
}

// Dir returns the mount point.
func (f *FS) Dir() string { return f.dir }

// Unmount unmounts the filesystem, waits for the server to stop and zeroes
// the cached plaintexts. If the mount is busy it is detached lazily (so it
// never outlives the call in the namespace) and the error is returned.
func (f *FS) Unmount() error {
	f.unmountOnce.Do(func() {
		err := fuseutil.Unmount(f.server, f.dir)
		close(f.stopSweep)
		<-f.swept
		f.cache.Purge()
		for _, s := range f.sources {
			_ = s.root.Close()
		}
		if err != nil {
			f.unmountErr = fmt.Errorf("secretsfs: unmount %s: %w", f.dir, err)
			return
		}
		log.G(f.base).Info("secretsfs: unmounted")
	})
	return f.unmountErr
}

// sweepLoop drops expired plaintexts from memory even when nobody reads
// them again.
func (f *FS) sweepLoop(every time.Duration) {
	defer close(f.swept)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-f.stopSweep:
			return
		case <-t.C:
			f.cache.Sweep()
		}
	}
}

// policyDenied reports whether a KBS answered PolicyDeny somewhere in err.
func policyDenied(err error) bool {
	var se *kbs.StatusError
	return errors.As(err, &se) && se.Info != nil && strings.HasSuffix(se.Info.Type, "PolicyDeny")
}

// fetchErrno maps an unseal or fetch failure: EACCES for a policy denial,
// ENOENT for a resource the KBS does not know (404), EIO otherwise.
func fetchErrno(err error) syscall.Errno {
	switch {
	case policyDenied(err):
		return syscall.EACCES
	case errors.Is(err, errdefs.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

// sourceErrno maps a failure reading a source directory. A name that
// os.Root refuses (a symlink leaving the source) does not exist here;
// only a real I/O error is EIO.
func sourceErrno(err error) syscall.Errno {
	if errors.Is(err, fs.ErrNotExist) {
		return syscall.ENOENT
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return syscall.ENOENT
	}
	if errno == syscall.ENOTDIR || errno == syscall.ELOOP {
		return syscall.ENOENT
	}
	return syscall.EIO
}

// opCtx is a FUSE request's context (cancelled on interrupt) carrying the
// filesystem's logger.
func (f *FS) opCtx(ctx context.Context) context.Context {
	return log.WithLogger(ctx, log.G(f.base))
}
