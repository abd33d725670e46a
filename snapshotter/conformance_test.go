package snapshotter

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
)

// TestConformance runs containerd's snapshotter suite (core/snapshots/testsuite)
// against cocoon's snapshotter, twice:
//   - with redirect_dir=on, under cocoon's own name, so every check runs,
//     including renaming a directory that lives in a lower layer;
//   - with the default overlay mount options, under the name "overlayfs",
//     which is how the suite knows that such a rename gives EXDEV on an
//     overlay mount without redirect_dir (this kernel's default).
func TestConformance(t *testing.T) {
	factory := func(mountOpts []string) testsuite.SnapshotterFunc {
		return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
			s, err := New(ctx, Options{Root: root, MountOptions: mountOpts})
			if err != nil {
				return nil, nil, err
			}
			return s, s.Close, nil
		}
	}
	t.Run("redirect_dir", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "cocoon", factory([]string{"redirect_dir=on"}))
	})
	t.Run("default", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", factory(nil))
	})
}

// TestWalkEmptyStore: a snapshotter that never held a snapshot lists
// nothing rather than failing (containerd's `ctr snapshots ls` and its
// garbage collector walk it).
func TestWalkEmptyStore(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx, Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	if err := s.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("Walk of an empty store: %d snapshots, %v", n, err)
	}
}
