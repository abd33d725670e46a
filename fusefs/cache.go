package fusefs

import (
	"container/list"
	"sync"
)

// ChunkCache keeps verified uncompressed chunks in memory, least recently
// used first out, within a byte budget. Only verified bytes are added. One
// cache may be shared by many layers.
type ChunkCache struct {
	mu    sync.Mutex
	max   int64
	used  int64
	order *list.List // front: most recently used
	items map[chunkKey]*list.Element
}

type cacheItem struct {
	key  chunkKey
	data []byte
}

// NewChunkCache returns a cache holding at most maxBytes of chunk data.
func NewChunkCache(maxBytes int64) *ChunkCache {
	return &ChunkCache{max: maxBytes, order: list.New(), items: map[chunkKey]*list.Element{}}
}

// Used returns the bytes held.
func (c *ChunkCache) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

func (c *ChunkCache) get(k chunkKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*cacheItem).data, true
}

func (c *ChunkCache) add(k chunkKey, data []byte) {
	n := int64(len(data))
	if n > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[k]; ok {
		return
	}
	c.items[k] = c.order.PushFront(&cacheItem{key: k, data: data})
	c.used += n
	for c.used > c.max {
		c.remove(c.order.Back())
	}
}

func (c *ChunkCache) remove(el *list.Element) {
	it := el.Value.(*cacheItem)
	c.order.Remove(el)
	delete(c.items, it.key)
	c.used -= int64(len(it.data))
}

func (c *ChunkCache) dropLayer(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if el.Value.(*cacheItem).key.layer == id {
			c.remove(el)
		}
		el = next
	}
}
