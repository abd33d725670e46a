package fusefs

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// Readers of a range in flight join the one fetch and get its bytes; the
// fetcher lends its own buffer, returns only after every joiner copied from
// it (so overwriting it at once cannot reach a joiner).
func TestRegistryBlobJoinedReadsShareOneFetch(t *testing.T) {
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(2<<20))
	blob := reg.push(t, bl)
	const joiners = 4
	off, n := int64(1000), len(bl.blob)/2
	want := bl.blob[off : off+int64(n)]

	gate := make(chan struct{})
	reg.Gate.Store(&gate)
	ctx := context.Background()
	fetcher := make([]byte, n)
	done := make(chan error, 1)
	go func() {
		_, err := blob.ReadAt(ctx, fetcher, off)
		clear(fetcher) // the caller reuses its buffer at once
		done <- err
	}()
	for reg.Requests.Load() == 0 { // the fetch is at the registry
		time.Sleep(time.Millisecond)
	}
	got := make([][]byte, joiners)
	var wg sync.WaitGroup
	for i := range got {
		got[i] = make([]byte, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := blob.ReadAt(ctx, got[i], off); err != nil {
				t.Error(err)
			}
		}()
	}
	for waitingJoiners(blob, off, n) < joiners {
		time.Sleep(time.Millisecond)
	}
	reg.Gate.Store(nil)
	close(gate)
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, g := range got {
		if !bytes.Equal(g, want) {
			t.Fatalf("joiner %d got other bytes than the blob's", i)
		}
	}
	if r := reg.Requests.Load(); r != 1 {
		t.Fatalf("%d registry requests for one range read by %d callers", r, joiners+1)
	}

}

// waitingJoiners counts the callers joined to the flight of a range.
func waitingJoiners(b *RegistryBlob, off int64, n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.flights[[2]int64{off, int64(n)}]
	if !ok {
		return 0
	}
	return f.joined
}
