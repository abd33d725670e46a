package securemount

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Bounds on mkfsOpts.
const (
	maxMkfsOptsLen  = 4096
	maxMkfsOptsArgs = 64
)

// mke2fs's options (misc/mke2fs.c, getopt string
// "b:cd:e:g:i:jl:m:no:qr:s:t:vC:DE:FG:I:J:KL:M:N:O:R:ST:U:Vz:"): those
// that take a value and those that do not.
const (
	mkfsWithValue = "bdegilmorstCEGIJLMNORTUz"
	mkfsFlags     = "cjnqvDFKSV"
)

// mkfsRefused names the options that make mkfs.ext4 read or write files
// or devices of the guest other than the volume: -d copies a directory
// into the new file system, -l reads a bad-block list, -z writes an undo
// file, -J device= puts the journal on another device. mkfsOpts comes
// with the request, which the host can shape; the volume is the only
// thing mkfs may touch.
var mkfsRefused = map[byte]string{
	'd': "copies a guest directory into the file system",
	'l': "reads a guest file",
	'z': "writes an undo file into the guest",
}

// mkfsArgs splits mkfsOpts on ASCII whitespace as upstream does and
// checks each option against mke2fs's option table. Positional arguments
// (a device, a block count) are refused: the device is the volume's.
func mkfsArgs(opts string) ([]string, error) {
	if len(opts) > maxMkfsOptsLen {
		return nil, fmt.Errorf("mkfsOpts is %d bytes, more than %d", len(opts), maxMkfsOptsLen)
	}
	args := strings.FieldsFunc(opts, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' })
	if len(args) > maxMkfsOptsArgs {
		return nil, fmt.Errorf("mkfsOpts has %d words, more than %d", len(args), maxMkfsOptsArgs)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' || a[1] == '-' {
			return nil, fmt.Errorf("mkfsOpts: `%s` is not an mkfs.ext4 option (only options are accepted)", clip(a))
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			if strings.IndexByte(mkfsFlags, c) >= 0 {
				continue
			}
			if strings.IndexByte(mkfsWithValue, c) < 0 {
				return nil, fmt.Errorf("mkfsOpts: unknown mkfs.ext4 option -%c", c)
			}
			if why, ok := mkfsRefused[c]; ok {
				return nil, fmt.Errorf("mkfsOpts: option -%c is refused (it %s)", c, why)
			}
			value := a[j+1:]
			if value == "" {
				if i+1 == len(args) {
					return nil, fmt.Errorf("mkfsOpts: option -%c needs a value", c)
				}
				i++
				value = args[i]
			}
			if c == 'J' && strings.Contains(value, "device=") {
				return nil, errors.New("mkfsOpts: -J device= is refused (it puts the journal on another guest device)")
			}
			break
		}
	}
	return args, nil
}

// runMkfs creates the file system as upstream's FsFormatter does:
// mkfs.ext4 DEVICE -F OPTS...
func runMkfs(ctx context.Context, dev string, args []string) error {
	// #nosec G204 -- fixed program; args passed mkfsArgs' option table.
	cmd := exec.CommandContext(ctx, "mkfs.ext4", append([]string{dev, "-F"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		const keep = 2048
		if len(out) > keep {
			out = out[len(out)-keep:]
		}
		return fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
