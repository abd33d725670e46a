package fusefs

import (
	"context"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// Prioritized returns the files the layer's builder placed before its
// .prefetch.landmark (those its workload reads first), in blob order; none
// when the layer has no landmark or a .no.prefetch.landmark.
func (l *Layer) Prioritized() []string { return append([]string(nil), l.prioritized...) }

// Prefetch fetches and verifies the chunks of the prioritized files into
// the chunk cache, neighbouring chunks (across files too) in one request up
// to MaxFetch bytes, and returns how many file bytes it verified. It pays
// off only when the cache can hold them. It stops at the first failure.
func (l *Layer) Prefetch(ctx context.Context) (int64, error) {
	var total, pending int64
	var batch []*estargz.TOCEntry
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := l.chunkData(ctx, batch); err != nil {
			return err
		}
		total += pending
		batch, pending = batch[:0], 0
		return nil
	}
	for _, name := range l.prioritized {
		e, ok := l.r.Lookup(name)
		if !ok || e.Type != "reg" {
			continue
		}
		for off := int64(0); off < e.Size; {
			ce, ok := l.r.ChunkEntryForOffset(e.Name, off)
			if !ok || ce.ChunkSize <= 0 || ce.ChunkOffset+ce.ChunkSize <= off {
				break // a read of this file reports the broken TOC
			}
			batch = append(batch, ce)
			pending += ce.ChunkSize
			off = ce.ChunkOffset + ce.ChunkSize
			if pending >= l.opts.MaxFetch {
				if err := flush(); err != nil {
					return total, err
				}
			}
		}
	}
	return total, flush()
}
