/* Native formatter of the hook decoder's usual records (core/hooks/native.py loads it).
 *
 * One call formats the JSON rest (",\"args\":[...] ... \"time\":\"...\"}\n") of every record of a ring
 * batch that has its hook's usual shape, exactly as engine._quick_rest's generated Python would, and
 * reports every other record as "fallback" so Python renders it on its general path, or drops and counts
 * it when it is malformed (engine.render_args: cut, an argument of another kind, data left over). Every
 * record byte is hostile: each read is bounds-checked against the record's own length, every write against
 * the output's capacity; nothing here trusts a length, offset or count from the record.
 *
 * Built with the system cc on first use (native.py); no Python headers, no libbpf.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#define EV_SIZE 56u
#define MAX_ARGS 8
#define REC_HOOK 1u

enum { ST_OK = 0, ST_FALLBACK = 1, ST_SKIP = 2, ST_SHORT = 3 };

/* One loaded hook: mirrors native.py's SfHook (ctypes). */
struct sf_hook {
	uint32_t policy_id, hook_id;
	int32_t nargs;  /* -1: no native rendering, every record falls back */
	int32_t ret;    /* 0: no return plan, 1: a plain integer, 2: anything else (fallback when present) */
	uint8_t akind[MAX_ARGS];   /* 1: plain integer, 2: plain string_arg */
	uint8_t abits[MAX_ARGS];   /* 8, 16, 32 or 64 */
	uint8_t asigned[MAX_ARGS];
	uint8_t rbits, rsigned;
	uint8_t aquote;  /* bit a: argument a is a 64-bit integer, a JSON string in Tetragon's JSON ("123") */
	uint8_t rquote;  /* the same for the return value */
	uint8_t cgroup;  /* 1: append the record's cgroup_id (the `extended` event format) */
	uint8_t pad[3];
	uint32_t frag_off[MAX_ARGS], frag_len[MAX_ARGS]; /* text before each argument's value */
	uint32_t ret_off, ret_len;  /* ,"return":{"key": (and the opening quote when rquote) */
	uint32_t pn_off, pn_len;    /* ,"policy_name":...,"action":"KPROBE_ACTION_POST" */
};

struct out {
	uint8_t *p;
	uint64_t len, cap;
	int full;
};

static inline void put(struct out *o, const void *s, uint64_t n)
{
	if (o->full || n > o->cap - o->len) {
		o->full = 1;
		return;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static inline void put_u64(struct out *o, uint64_t v)
{
	char buf[24];
	int i = 24;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(o, buf + i, (uint64_t)(24 - i));
}

static inline void put_i64(struct out *o, int64_t v)
{
	if (v < 0) {
		put(o, "-", 1);
		put_u64(o, (uint64_t)0 - (uint64_t)v);
	} else {
		put_u64(o, (uint64_t)v);
	}
}

/* v masked to `bits` and, when signed, sign-extended: Python's `v &= mask; if v >= sign: v -= 2 * sign`. */
static inline void put_int(struct out *o, uint64_t v, unsigned bits, int is_signed)
{
	if (bits < 64)
		v &= (((uint64_t)1) << bits) - 1;
	if (is_signed) {
		if (bits < 64 && (v >> (bits - 1)) & 1)
			v |= ~((((uint64_t)1) << bits) - 1);
		put_i64(o, (int64_t)v);
	} else {
		put_u64(o, v);
	}
}

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Bytes a JSON string cannot hold as they are (engine._UNSAFE): controls, '"', '\\', and >= 0x80. */
static inline int unsafe(const uint8_t *s, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80)
			return 1;
	}
	return 0;
}

/* Largest wall clock rendered here (year 2096); later ones fall back (Python renders or refuses them). */
#define WALL_MAX 4000000000000000000LL

/*
 * blob/lens/n: the batch's records, concatenated. hooks/nhooks/frags: the loaded hooks and their text.
 * tail: '},"node_name":<json>,"time":'. boot_ns: BOOT_WALL_NS.
 * out/out_cap: the rests; out_end[i]: end of record i's rest (empty unless status[i] == ST_OK).
 * status[i]: ST_*. slot[i] (ST_OK only): index of the record's (policy, hook, pid, tid) in slots (4 u32 each),
 * slot_n[k]: records of slot k. Returns the number of slots, or -1 when the arguments are inconsistent.
 */
int64_t sf_format(const uint8_t *blob, uint64_t blob_len, const uint32_t *lens, uint32_t n,
		  const struct sf_hook *hooks, uint32_t nhooks, const uint8_t *frags, uint64_t frags_len,
		  const uint8_t *tail, uint32_t tail_len, int64_t boot_ns,
		  uint8_t *outp, uint64_t out_cap, uint64_t *out_end, uint8_t *status,
		  uint32_t *slot, uint32_t *slots, uint32_t *slot_n, uint32_t max_slots)
{
	struct out o = { outp, 0, out_cap, 0 };
	uint64_t off = 0;
	uint32_t nslots = 0, last_hook = 0;
	int64_t cur_secs = -1;
	char date[32];
	int date_len = 0;

	for (uint32_t h = 0; h < nhooks; h++) {  /* the fragments must lie inside frags */
		const struct sf_hook *k = &hooks[h];
		if (k->nargs > MAX_ARGS || (uint64_t)k->ret_off + k->ret_len > frags_len ||
		    (uint64_t)k->pn_off + k->pn_len > frags_len)
			return -1;
		for (int a = 0; a < k->nargs; a++)
			if ((uint64_t)k->frag_off[a] + k->frag_len[a] > frags_len ||
			    (k->akind[a] == 1 && k->abits[a] != 8 && k->abits[a] != 16 && k->abits[a] != 32 &&
			     k->abits[a] != 64))
				return -1;
		if (k->ret == 1 && k->rbits != 8 && k->rbits != 16 && k->rbits != 32 && k->rbits != 64)
			return -1;
	}

	for (uint32_t i = 0; i < n; i++) {
		uint64_t L = lens[i];
		const uint8_t *p = blob + off;
		uint64_t start = o.len;
		out_end[i] = start;
		if (L > blob_len - off)
			return -1;
		off += L;
		if (L < EV_SIZE) {
			status[i] = ST_SHORT;
			continue;
		}
		if (rd16(p) != REC_HOOK) {
			status[i] = ST_SKIP;
			continue;
		}
		uint32_t policy = rd32(p + 24), hook = rd32(p + 28), pid = rd32(p + 16);
		const struct sf_hook *k = NULL;
		if (last_hook < nhooks && hooks[last_hook].policy_id == policy && hooks[last_hook].hook_id == hook) {
			k = &hooks[last_hook];
		} else {
			for (uint32_t h = 0; h < nhooks; h++)
				if (hooks[h].policy_id == policy && hooks[h].hook_id == hook) {
					k = &hooks[h];
					last_hook = h;
					break;
				}
		}
		if (!k) {
			status[i] = ST_SKIP;
			continue;
		}
		status[i] = ST_FALLBACK;
		if (k->nargs < 0 || o.full)
			continue;
		uint8_t actions = p[49], flags = p[50];
		uint64_t ktime = rd64(p + 8), cgroup_id = rd64(p + 40), retval = rd64(p + 32);
		/* signal actions, GetUrl/DnsLookup (Python renders the event and makes the request), stack traces
		 * (SENS_EV_KSTACK | SENS_EV_USTACK): the Python path */
		if ((actions & (6 | 32 | 64)) || (flags & 24))
			continue;
		if (ktime > (uint64_t)WALL_MAX || boot_ns < 0 || boot_ns > WALL_MAX)
			continue;
		int64_t wall = boot_ns + (int64_t)ktime;
		if (wall > WALL_MAX)
			continue;
		uint64_t end = EV_SIZE + (uint64_t)rd32(p + 52);
		if (end > L)  /* cut: Python drops it (engine.render_args's rules) */
			continue;
		uint64_t pos = EV_SIZE;
		int bad = 0;
		put(&o, ",\"args\":[", 9);
		for (int a = 0; a < k->nargs && !bad; a++) {
			if (k->akind[a] == 1) {
				if (pos + 16 > end || p[pos] != 1) {
					bad = 1;
					break;
				}
				put(&o, frags + k->frag_off[a], k->frag_len[a]);
				put_int(&o, rd64(p + pos + 8), k->abits[a], k->asigned[a]);
				if (k->aquote & (1u << a))
					put(&o, "\"}", 2);
				else
					put(&o, "}", 1);
				pos += 16;
			} else if (k->akind[a] == 2) {
				if (pos + 8 > end) {
					bad = 1;
					break;
				}
				uint8_t kind = p[pos], aflags = p[pos + 1];
				uint32_t l = rd16(p + pos + 2);
				if (kind != 2 || aflags || pos + 8 + (((uint64_t)l + 7) & ~(uint64_t)7) > end ||
				    unsafe(p + pos + 8, l)) {
					bad = 1;
					break;
				}
				put(&o, frags + k->frag_off[a], k->frag_len[a]);
				put(&o, p + pos + 8, l);
				put(&o, "\"}", 2);
				pos += 8 + (((uint64_t)l + 7) & ~(uint64_t)7);
			} else {
				bad = 1;
			}
		}
		if (pos != end)  /* data the arguments do not explain: Python decides */
			bad = 1;
		put(&o, "]", 1);
		if (!bad && k->ret && (flags & 2)) {
			if (k->ret != 1) {
				bad = 1;
			} else {
				put(&o, frags + k->ret_off, k->ret_len);
				put_int(&o, retval, k->rbits, k->rsigned);
				if (k->rquote)
					put(&o, "\"}", 2);
				else
					put(&o, "}", 1);
			}
		}
		if (bad || o.full) {
			o.len = start;
			o.full = 0;  /* a later, shorter record may still fit */
			continue;
		}
		put(&o, frags + k->pn_off, k->pn_len);
		if (cgroup_id && k->cgroup) {
			put(&o, ",\"cgroup_id\":", 13);
			put_u64(&o, cgroup_id);
		}
		int64_t secs = wall / 1000000000, nanos = wall % 1000000000;
		if (secs != cur_secs) {
			struct tm tm;
			time_t t = (time_t)secs;
			if (!gmtime_r(&t, &tm)) {
				o.len = start;
				continue;
			}
			date_len = 0;
			char *d = date;
			int y = tm.tm_year + 1900;
			if (y < 1000 || y > 9999) {
				o.len = start;
				continue;
			}
			/* "%Y-%m-%dT%H:%M:%S" by hand (the C locale's strftime would do; this is locale-free) */
			int vals[6] = { y, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec };
			d[0] = '"';
			d[1] = (char)('0' + y / 1000); d[2] = (char)('0' + y / 100 % 10);
			d[3] = (char)('0' + y / 10 % 10); d[4] = (char)('0' + y % 10);
			date_len = 5;
			static const char seps[5] = { '-', '-', 'T', ':', ':' };
			for (int j = 1; j < 6; j++) {
				d[date_len++] = seps[j - 1];
				d[date_len++] = (char)('0' + vals[j] / 10 % 10);
				d[date_len++] = (char)('0' + vals[j] % 10);
			}
			cur_secs = secs;
		}
		put(&o, tail, tail_len);
		put(&o, date, (uint64_t)date_len);
		char ns[16];
		ns[0] = '.';
		for (int j = 9; j >= 1; j--) {
			ns[j] = (char)('0' + nanos % 10);
			nanos /= 10;
		}
		memcpy(ns + 10, "Z\"}\n", 4);
		put(&o, ns, 14);
		if (o.full) {
			o.len = start;
			o.full = 0;
			continue;
		}
		/* the record's (policy, hook, pid, tid) slot; consecutive records usually share it */
		uint32_t tid = rd32(p + 20), s = nslots;
		if (nslots && slots[4 * (nslots - 1)] == policy && slots[4 * (nslots - 1) + 1] == hook &&
		    slots[4 * (nslots - 1) + 2] == pid && slots[4 * (nslots - 1) + 3] == tid) {
			s = nslots - 1;
		} else {
			for (uint32_t j = 0; j < nslots; j++)
				if (slots[4 * j] == policy && slots[4 * j + 1] == hook && slots[4 * j + 2] == pid &&
				    slots[4 * j + 3] == tid) {
					s = j;
					break;
				}
		}
		if (s == nslots) {
			if (nslots >= max_slots) {  /* too many threads in one batch: Python does the rest */
				o.len = start;
				continue;
			}
			slots[4 * s] = policy;
			slots[4 * s + 1] = hook;
			slots[4 * s + 2] = pid;
			slots[4 * s + 3] = tid;
			slot_n[s] = 0;
			nslots++;
		}
		slot_n[s]++;
		slot[i] = s;
		status[i] = ST_OK;
		out_end[i] = o.len;
	}
	return nslots;
}
