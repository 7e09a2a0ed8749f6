/* Coverage-guided fuzzing (libFuzzer, with ASan and UBSan) of the C that reads ring records in user space:
 * the native ring drain (core/bpf/ringdrain.c) copies each record into its arena, and the hook decoder's
 * native formatter (core/hooks/fastrest.c) formats the arena's batch, as the agent does.
 *
 * Input: the batches of tests/fuzz/targets.py's ``records`` target (8 bytes of choices, then records each
 * prefixed with its length as a little-endian u16). The loaded hooks (struct sf_hook table and text
 * fragments) come from files written by tests/fuzz/run.py with the Python Formatter, so the table is what
 * the agent builds: $SENSORIUM_FASTREST_TABLES/hooks.bin and frags.bin.
 *
 * Checked beyond the sanitizers: the arena holds exactly the records given; the formatter accepts its own
 * arguments (never -1 here), every status is one it defines, output ends are ordered and inside the buffer,
 * slot indexes are inside the slots returned; the same holds for each record alone in a buffer of exactly
 * its size (a read past it is a sanitizer error), with output capacities down to none.
 */
#include "fastrest.c"
#include "ringdrain.c"

#include <stdio.h>
#include <stdlib.h>

static struct sf_hook *hooks;
static uint32_t nhooks;
static uint8_t *frags;
static uint64_t frags_len;
static const uint8_t tail[] = "},\"node_name\":\"n\",\"time\":";

static uint8_t *slurp(const char *dir, const char *name, uint64_t *n)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "fastrest_fuzz: cannot open %s\n", path);
		exit(2);
	}
	fseek(f, 0, SEEK_END);
	*n = (uint64_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc(*n ? *n : 1);
	if (*n && fread(p, 1, *n, f) != *n)
		exit(3);
	fclose(f);
	return p;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *dir = getenv("SENSORIUM_FASTREST_TABLES");
	if (!dir) {
		fprintf(stderr, "fastrest_fuzz: set SENSORIUM_FASTREST_TABLES (tests/fuzz/run.py does)\n");
		exit(2);
	}
	uint64_t hn;
	hooks = (struct sf_hook *)slurp(dir, "hooks.bin", &hn);
	nhooks = (uint32_t)(hn / sizeof(struct sf_hook));
	frags = slurp(dir, "frags.bin", &frags_len);
	return 0;
}

#define MAX_RECORDS 64
#define SLOTS 8

static void check(const uint8_t *blob, uint64_t blob_len, const uint32_t *lens, uint32_t n, uint64_t cap)
{
	uint8_t *out = malloc(cap ? cap : 1), status[MAX_RECORDS];
	uint64_t end[MAX_RECORDS];
	uint32_t slot[MAX_RECORDS], slots[4 * SLOTS], slot_n[SLOTS];
	int64_t ns = sf_format(blob, blob_len, lens, n, hooks, nhooks, frags, frags_len, tail, sizeof(tail) - 1,
			       1700000000000000000LL, out, cap, end, status, slot, slots, slot_n, SLOTS);
	if (ns < 0 || ns > SLOTS)
		__builtin_trap();  /* its own arguments are consistent: -1 would drop a whole batch */
	uint64_t prev = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (status[i] > ST_SHORT || end[i] < prev || end[i] > cap)
			__builtin_trap();
		if (status[i] == ST_OK && slot[i] >= (uint64_t)ns)
			__builtin_trap();
		prev = end[i];
	}
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 8)
		return 0;
	const uint8_t *head = data, *p = data + 8, *endp = data + size;
	struct rd_arena *a = rd_new();
	uint64_t total = 0;
	uint32_t n = 0;
	const uint8_t *recp[MAX_RECORDS];
	uint32_t recn[MAX_RECORDS];
	while (endp - p >= 2 && n < MAX_RECORDS) {
		uint32_t len = (uint32_t)p[0] | (uint32_t)p[1] << 8;
		p += 2;
		if ((uint64_t)(endp - p) < len)
			len = (uint32_t)(endp - p);
		/* each record from a buffer of exactly its size, as libbpf hands it over */
		uint8_t *rec = malloc(len ? len : 1);
		memcpy(rec, p, len);
		if (rd_sample(a, rec, len) != 0)
			__builtin_trap();
		free(rec);
		recp[n] = p;
		recn[n++] = len;
		total += len;
		p += len;
	}
	if (a->n != n || a->len != total)
		__builtin_trap();
	for (uint64_t i = 0, off = 0; i < n; off += recn[i], i++)
		if (a->lens[i] != recn[i] || (recn[i] && memcmp(a->buf + off, recp[i], recn[i])))
			__builtin_trap();
	/* the batch as the agent formats it: the arena's blob, exactly its length */
	uint8_t *blob = malloc(total ? total : 1);
	if (total)
		memcpy(blob, a->buf, total);
	uint64_t caps[4] = { 0, 17, 200, 2 * total + (uint64_t)n * 4096 + 64 };
	check(blob, total, a->lens, n, caps[3]);
	check(blob, total, a->lens, n, caps[head[0] % 3]);
	free(blob);
	/* each record alone, in a buffer of exactly its size */
	for (uint32_t i = 0; i < n && i < 4; i++) {
		uint8_t *rec = malloc(recn[i] ? recn[i] : 1);
		memcpy(rec, recp[i], recn[i]);
		check(rec, recn[i], &recn[i], 1, 2 * (uint64_t)recn[i] + 4096);
		check(rec, recn[i], &recn[i], 1, caps[(head[1] + i) % 3]);
		free(rec);
	}
	rd_free(a);
	return 0;
}
