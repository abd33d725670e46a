//go:build !amd64 || purego

package userspace

// acceleratedXTS: no assembly on this platform.
func acceleratedXTS([]byte) map[string]sectorXTS { return map[string]sectorXTS{} }
