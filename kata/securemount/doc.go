// Package securemount is the SecureMount of guest-components'
// confidential-data-hub for cocoon: it turns a kata-agent request
// (volume_type, options, flags, mount_point) into a LUKS2 volume mounted
// or linked at mount_point, backed by package cryptvol (the kernel's
// dm-crypt where it has device-mapper, cryptvol's userspace engine
// otherwise). Upstream's confidential emptyDir arrives this way.
//
// # Requests
//
// volume_type "block-device" is served; "alibaba-cloud-oss" (which
// upstream builds by default) is refused with ErrUnsupported; any other
// type fails as upstream's does ("Failed to recognize the storage type:
// Matching variant not found", ErrUnknownVolumeType). The options are
// upstream's (docs/use-cases/secure-mount-with-block-device.md):
//
//   - deviceId "MAJ:MIN" (resolved through /sys/dev/block/MAJ:MIN/uevent)
//     or devicePath (absolute; a block device or a regular file);
//     deviceId wins when both are set.
//   - sourceType "empty" (format: the device's data is lost) or
//     "encrypted" (open an existing LUKS2 volume, ours or cryptsetup's).
//   - encryptionType "luks2"; "zfs" is refused (ErrUnsupported).
//   - targetType "fileSystem": ext4 mounted at mount_point (created first
//     when empty, as upstream: mkfs.ext4 DEV -F mkfsOpts...; mounted with
//     MS_NOATIME). "device": mount_point becomes a symlink to the
//     decrypted block device, as upstream links /dev/mapper/NAME there.
//   - filesystemType "ext4" (the default and upstream's only value).
//   - mkfsOpts: extra mkfs.ext4 options, split on whitespace. Options that
//     make mkfs read or write other guest files or devices (-d, -l, -z,
//     -J device=) and positional arguments are refused, since the host
//     can shape the request.
//   - key: "sealed.…" (Options.Unsealer), "kbs:///…" or any kbs/kbs+plugin
//     resource URI (Options.Resources), "file://PATH" (a local file of
//     at most MaxKeySize bytes). The key is the LUKS2 passphrase, byte
//     for byte, as cryptsetup gets it from upstream. Absent: sourceType
//     empty makes an ephemeral volume (see below); encrypted is refused.
//   - mapperName: the mapping's name (see below); default a random UUID,
//     as upstream.
//   - dataIntegrity: "true" is refused (ErrIntegrityUnsupported): it means
//     dm-integrity (LUKS2 authenticated encryption with hmac-sha256),
//     which neither engine provides. "false" or absent is fine; any other
//     value is refused rather than read as false, as upstream would.
//
// flags are ignored, as upstream ignores them. The returned mount path is
// mount_point. Upstream's current SecureMountResponse is empty (it used
// to carry mount_path = mount_point).
//
// # Choices where cocoon differs from upstream
//
//   - Header placement. An empty device with a key gets its LUKS2 header
//     in place (data at 16 MiB), so the same device secure-mounts again
//     as "encrypted" with the same key, after a reboot too, and
//     cryptsetup luksDump/open read it. (Upstream, since its commit
//     d58935a0 of February 2026, writes a detached header into
//     /run/confidential-containers/cdh/luks-headers, which its own
//     "encrypted" path never reads.) Without a key the
//     volume is ephemeral: a random volume key and a header that exist
//     only in this process's memory, never on any disk or tmpfs, no
//     keyslot; Unmount (or the process ending) makes the data
//     unrecoverable.
//   - mapperName. With dm-crypt it is the device-mapper name
//     (/dev/mapper/NAME). The userspace engine has no /dev/mapper node: it
//     names the engine's FUSE mount (source "cocoon-cryptvol:NAME") and
//     the block device is /dev/loopN. We do not create /dev/mapper/NAME
//     symlinks: that directory belongs to device-mapper, and tools that
//     find a name there (cryptsetup status, dmsetup, udev rules) would act
//     on something that is not a mapping. A targetType "device" symlink
//     therefore points at /dev/mapper/NAME or /dev/loopN. Names are
//     limited to 127 characters of A-Z a-z 0-9 . _ + -.
//   - In-use checks. A block device is opened exclusively first, so one
//     that is mounted or mapped is refused (ErrBusy) as cryptsetup
//     refuses it; under the userspace engine that exclusive open is held
//     while the volume is mounted. A mount point, device or mapper name
//     already held by this Mounter is refused too.
//   - A failure after formatting wipes the header it wrote, so nothing
//     half-made can be opened later.
//   - Teardown. Upstream never unmounts: the kata-agent unmounts the file
//     system and closes the /dev/mapper mapping it finds with cryptsetup.
//     Mounter.Unmount tears a volume down; Mounter.Reap (run before each
//     SecureMount) releases a fileSystem volume once no mount of it is
//     left, so the userspace engine's loop device, FUSE mount and claim
//     do not outlive the agent's unmount.
//
// # Errors
//
// Error texts follow upstream's chain (storage::Error, BlockDeviceError,
// the luks2 driver's contexts), e.g. "Error when mounting Block device:
// Error when doing luks2 operation: Failed to open LUKS2 device: ...",
// with cocoon's cause appended. Upstream's ttRPC service answers every
// failure with status INTERNAL and "[CDH] [ERROR]: Secure Mount failed".
// Callers classify with errors.Is: ErrUnknownVolumeType, ErrUnsupported,
// ErrIntegrityUnsupported, ErrInvalidOptions, ErrNoDevice, ErrKey,
// ErrBusy, ErrLUKS2, ErrWrongKey (within ErrLUKS2), ErrNotMounted.
//
// # What it must never do
//
// Never log a key or put one in an error; never write one to disk or pass
// one on a command line (cryptvol formats and opens in-process); zeroize
// key buffers after use. Never leave a mount, mapping, loop device,
// symlink or half-written header behind on an error path. Never format a
// device that is in use.
package securemount
