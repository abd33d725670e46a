package bundle

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxIDFileSize bounds how much of the image's /etc/passwd and /etc/group
// is read: both come from the image.
const maxIDFileSize = 1 << 20

// resolveUser turns the image config's User ("user", "uid", "user:group",
// "uid:gid", either side by name or number) into the process user, reading
// names from the image's /etc/passwd and /etc/group as the image-spec
// conversion asks (image-rs leaves every bundle as root: its TODO). Files are
// opened with openInRoot, so a symlink in the image cannot lead outside the
// rootfs. A user given by name gets the supplementary groups /etc/group
// lists it in. An empty User is root.
func resolveUser(rootfs, user string) (specs.User, error) {
	if user == "" {
		return specs.User{}, nil
	}
	userPart, groupPart, hasGroup := strings.Cut(user, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return specs.User{}, fmt.Errorf("image config User %q: empty user or group", user)
	}
	passwd, err := readIDFile(rootfs, "etc/passwd", 7)
	if err != nil {
		return specs.User{}, err
	}
	var u specs.User
	name := ""
	if uid, ok := parseID(userPart); ok {
		u.UID = uid
		for _, e := range passwd {
			if id, ok := parseID(e[2]); ok && id == uid {
				name = e[0]
				if gid, ok := parseID(e[3]); ok {
					u.GID = gid
				}
				break
			}
		}
	} else {
		found := false
		for _, e := range passwd {
			if e[0] != userPart {
				continue
			}
			uid, ok1 := parseID(e[2])
			gid, ok2 := parseID(e[3])
			if !ok1 || !ok2 {
				return specs.User{}, fmt.Errorf("image /etc/passwd: bad ids for user %q", userPart)
			}
			u.UID, u.GID, name, found = uid, gid, e[0], true
			break
		}
		if !found {
			return specs.User{}, fmt.Errorf("image config User %q: no user %q in the image's /etc/passwd", user, userPart)
		}
	}
	if hasGroup {
		if gid, ok := parseID(groupPart); ok {
			u.GID = gid
			return u, nil
		}
	}
	if !hasGroup && name == "" {
		return u, nil
	}
	groups, err := readIDFile(rootfs, "etc/group", 4)
	if err != nil {
		return specs.User{}, err
	}
	if hasGroup {
		for _, g := range groups {
			if g[0] == groupPart {
				gid, ok := parseID(g[2])
				if !ok {
					return specs.User{}, fmt.Errorf("image /etc/group: bad id for group %q", groupPart)
				}
				u.GID = gid
				return u, nil
			}
		}
		return specs.User{}, fmt.Errorf("image config User %q: no group %q in the image's /etc/group", user, groupPart)
	}
	for _, g := range groups {
		gid, ok := parseID(g[2])
		if !ok || gid == u.GID {
			continue
		}
		for _, m := range strings.Split(g[3], ",") {
			if m == name {
				u.AdditionalGids = append(u.AdditionalGids, gid)
				break
			}
		}
	}
	return u, nil
}

// parseID parses a numeric user or group ID.
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// readIDFile reads the colon-separated entries of a passwd or group file of
// the image (at most maxIDFileSize bytes); lines with fewer than fields
// fields and comments are skipped. A missing file has no entries.
func readIDFile(rootfs, path string, fields int) ([][]string, error) {
	f, err := openInRoot(rootfs, path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open the image's /%s: %w", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("the image's /%s is not a regular file", path)
	}
	sc := bufio.NewScanner(io.LimitReader(f, maxIDFileSize))
	sc.Buffer(make([]byte, 0, 4096), maxIDFileSize)
	var out [][]string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e := strings.Split(line, ":")
		if len(e) < fields {
			continue
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the image's /%s: %w", path, err)
	}
	return out, nil
}

// openInRoot opens path inside rootfs as the container will see it:
// symlinks, absolute ones included, resolve inside rootfs and never lead
// out of it (openat2 RESOLVE_IN_ROOT). O_NONBLOCK: a FIFO planted there
// must not hang the pull.
func openInRoot(rootfs, path string) (*os.File, error) {
	dir, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: rootfs, Err: err}
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &fs.PathError{Op: "openat2", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(rootfs, path)), nil
}
