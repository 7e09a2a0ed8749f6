/* Native drain of BPF ring buffers (core/bpf/ringbuf.py): a libbpf ring_buffer sample callback that
 * appends each record to an arena, so one ring_buffer__consume call copies a whole batch without
 * entering the interpreter per record. Python then takes the arena as one bytes blob plus the lengths.
 *
 * Built with the system cc on first use (core/bpf/native.py); no libbpf or Python headers needed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct rd_arena {
	uint8_t *buf;
	uint64_t len, cap;
	uint32_t *lens;
	uint64_t n, ncap;
};

/* libbpf's ring_buffer_sample_fn. A negative return stops the consume call (libbpf keeps the record). */
int rd_sample(void *ctx, void *data, size_t size)
{
	struct rd_arena *a = ctx;
	if (size > UINT32_MAX)
		return -E2BIG;
	if (a->n == a->ncap) {
		uint64_t nc = a->ncap ? 2 * a->ncap : 4096;
		uint32_t *p = realloc(a->lens, nc * sizeof(*p));
		if (!p)
			return -ENOMEM;
		a->lens = p;
		a->ncap = nc;
	}
	if (size > a->cap - a->len) {
		uint64_t nc = a->cap ? 2 * a->cap : (1u << 20);
		while (nc - a->len < size)
			nc *= 2;
		uint8_t *p = realloc(a->buf, nc);
		if (!p)
			return -ENOMEM;
		a->buf = p;
		a->cap = nc;
	}
	if (size) {  /* an empty record on a fresh arena: buf is NULL, and NULL + 0 is undefined in C */
		memcpy(a->buf + a->len, data, size);
		a->len += size;
	}
	a->lens[a->n++] = (uint32_t)size;
	return 0;
}

struct rd_arena *rd_new(void)
{
	return calloc(1, sizeof(struct rd_arena));
}

void rd_free(struct rd_arena *a)
{
	if (!a)
		return;
	free(a->buf);
	free(a->lens);
	free(a);
}
