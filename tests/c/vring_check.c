/*
 * Prints what the Linux UAPI headers say about split rings and the balloon, as
 * "NAME VALUE" lines, for tests/virtq_c_interop.rs (parsed by tests/c/uapi.rs).
 *
 * Values are decimal unsigned 64-bit integers. Names with dots are families:
 *   vring_size.N.ALIGN, vring_avail_off.N.ALIGN, vring_used_off.N.ALIGN,
 *   used_event_off.N, avail_event_off.N, need_event.* (checksums, see below).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/virtio_balloon.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_ring.h>

#define P(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
#define C(sym) P(#sym, sym)
/* "sizeof.<struct>" and "offsetof.<struct>.<field>", the names the Rust side asks for. */
#define SIZEOF(s) P("sizeof." #s, sizeof(struct s))
#define OFFSETOF(s, f) P("offsetof." #s "." #f, offsetof(struct s, f))

/* splitmix64: the same stream is generated on the Rust side. */
static uint64_t mix_state;
static uint64_t splitmix64(void)
{
	uint64_t z = (mix_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* FNV-1a over one byte per decision (0 or 1). */
struct digest {
	uint64_t hash, count, yes;
};
static void digest_init(struct digest *d)
{
	d->hash = 0xcbf29ce484222325ull;
	d->count = 0;
	d->yes = 0;
}
static void digest_add(struct digest *d, int bit)
{
	d->hash = (d->hash ^ (uint64_t)(bit != 0)) * 0x100000001b3ull;
	d->count++;
	d->yes += bit != 0;
}
static void digest_print(const char *family, const struct digest *d)
{
	printf("need_event.%s.hash %llu\n", family, (unsigned long long)d->hash);
	printf("need_event.%s.count %llu\n", family, (unsigned long long)d->count);
	printf("need_event.%s.yes %llu\n", family, (unsigned long long)d->yes);
}

/* Distances around every wrap-around edge: 0..300, 0x7f00..0x8100, 0xfe00..0xffff. */
static int edge_distance(unsigned i)
{
	if (i <= 300)
		return (int)i;
	i -= 301;
	if (i <= 0x200)
		return (int)(0x7f00 + i);
	i -= 0x201;
	if (i <= 0x1ff)
		return (int)(0xfe00 + i);
	return -1;
}

static void need_event_checks(void)
{
	struct digest d;
	/* Uniform triples. */
	mix_state = 0x5eed;
	digest_init(&d);
	for (int i = 0; i < 4000000; i++) {
		uint64_t z = splitmix64();
		digest_add(&d, vring_need_event((__u16)z, (__u16)(z >> 16), (__u16)(z >> 32)));
	}
	digest_print("uniform", &d);
	/* Near misses: small windows, event just around them. */
	mix_state = 0xbeef;
	digest_init(&d);
	for (int i = 0; i < 1000000; i++) {
		uint64_t z = splitmix64();
		__u16 old = (__u16)z;
		__u16 new_idx = (__u16)(old + ((z >> 16) & 0x3f));
		__u16 ev = (__u16)(old + ((z >> 32) & 0x7f) - 0x20);
		digest_add(&d, vring_need_event(ev, new_idx, old));
	}
	digest_print("near", &d);
	/* Every pair of edge distances (new - old, new - event) at a few new indices. */
	static const __u16 news[] = {0, 1, 0x7fff, 0x8000, 0xffff};
	digest_init(&d);
	for (unsigned k = 0; k < sizeof(news) / sizeof(news[0]); k++)
		for (unsigned a = 0; edge_distance(a) >= 0; a++)
			for (unsigned b = 0; edge_distance(b) >= 0; b++) {
				__u16 n = news[k];
				__u16 old = (__u16)(n - edge_distance(a));
				__u16 ev = (__u16)(n - edge_distance(b));
				digest_add(&d, vring_need_event(ev, n, old));
			}
	digest_print("edges", &d);
}

static void ring_layout(void)
{
	C(VRING_DESC_F_NEXT);
	C(VRING_DESC_F_WRITE);
	C(VRING_DESC_F_INDIRECT);
	C(VRING_USED_F_NO_NOTIFY);
	C(VRING_AVAIL_F_NO_INTERRUPT);
	C(VIRTIO_RING_F_INDIRECT_DESC);
	C(VIRTIO_RING_F_EVENT_IDX);
	C(VIRTIO_F_VERSION_1);
	C(VRING_DESC_ALIGN_SIZE);
	C(VRING_AVAIL_ALIGN_SIZE);
	C(VRING_USED_ALIGN_SIZE);
	SIZEOF(vring_desc);
	OFFSETOF(vring_desc, addr);
	OFFSETOF(vring_desc, len);
	OFFSETOF(vring_desc, flags);
	OFFSETOF(vring_desc, next);
	SIZEOF(vring_avail);
	OFFSETOF(vring_avail, flags);
	OFFSETOF(vring_avail, idx);
	OFFSETOF(vring_avail, ring);
	SIZEOF(vring_used_elem);
	OFFSETOF(vring_used_elem, id);
	OFFSETOF(vring_used_elem, len);
	SIZEOF(vring_used);
	OFFSETOF(vring_used, flags);
	OFFSETOF(vring_used, idx);
	OFFSETOF(vring_used, ring);

	static const unsigned long aligns[] = {4, 16, 64, 256, 4096, 65536};
	/* A base that every align divides; vring_init only computes addresses. */
	char *base = (char *)(uintptr_t)0x100000000ull;
	for (unsigned n = 1; n <= 32768; n *= 2) {
		char name[64];
		for (unsigned k = 0; k < sizeof(aligns) / sizeof(aligns[0]); k++) {
			struct vring vr;
			vring_init(&vr, n, base, aligns[k]);
			snprintf(name, sizeof(name), "vring_size.%u.%lu", n, aligns[k]);
			P(name, vring_size(n, aligns[k]));
			snprintf(name, sizeof(name), "vring_avail_off.%u.%lu", n, aligns[k]);
			P(name, (char *)vr.avail - base);
			snprintf(name, sizeof(name), "vring_used_off.%u.%lu", n, aligns[k]);
			P(name, (char *)vr.used - base);
			if (k == 0) {
				snprintf(name, sizeof(name), "used_event_off.%u", n);
				P(name, (char *)&vring_used_event(&vr) - (char *)vr.avail);
				snprintf(name, sizeof(name), "avail_event_off.%u", n);
				P(name, (char *)&vring_avail_event(&vr) - (char *)vr.used);
			}
		}
	}
}

static void balloon(void)
{
	C(VIRTIO_ID_BALLOON);
	C(VIRTIO_BALLOON_F_MUST_TELL_HOST);
	C(VIRTIO_BALLOON_F_STATS_VQ);
	C(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
	C(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
	C(VIRTIO_BALLOON_F_PAGE_POISON);
	C(VIRTIO_BALLOON_F_REPORTING);
	C(VIRTIO_BALLOON_PFN_SHIFT);
	C(VIRTIO_BALLOON_CMD_ID_STOP);
	C(VIRTIO_BALLOON_CMD_ID_DONE);
	C(VIRTIO_BALLOON_S_SWAP_IN);
	C(VIRTIO_BALLOON_S_SWAP_OUT);
	C(VIRTIO_BALLOON_S_MAJFLT);
	C(VIRTIO_BALLOON_S_MINFLT);
	C(VIRTIO_BALLOON_S_MEMFREE);
	C(VIRTIO_BALLOON_S_MEMTOT);
	C(VIRTIO_BALLOON_S_AVAIL);
	C(VIRTIO_BALLOON_S_CACHES);
	C(VIRTIO_BALLOON_S_HTLB_PGALLOC);
	C(VIRTIO_BALLOON_S_HTLB_PGFAIL);
	/* Tags added in later kernels: present only if this header has them. */
#ifdef VIRTIO_BALLOON_S_OOM_KILL
	C(VIRTIO_BALLOON_S_OOM_KILL);
#endif
#ifdef VIRTIO_BALLOON_S_ALLOC_STALL
	C(VIRTIO_BALLOON_S_ALLOC_STALL);
#endif
#ifdef VIRTIO_BALLOON_S_ASYNC_SCAN
	C(VIRTIO_BALLOON_S_ASYNC_SCAN);
#endif
#ifdef VIRTIO_BALLOON_S_DIRECT_SCAN
	C(VIRTIO_BALLOON_S_DIRECT_SCAN);
#endif
#ifdef VIRTIO_BALLOON_S_ASYNC_RECLAIM
	C(VIRTIO_BALLOON_S_ASYNC_RECLAIM);
#endif
#ifdef VIRTIO_BALLOON_S_DIRECT_RECLAIM
	C(VIRTIO_BALLOON_S_DIRECT_RECLAIM);
#endif
	C(VIRTIO_BALLOON_S_NR);
	SIZEOF(virtio_balloon_config);
	OFFSETOF(virtio_balloon_config, num_pages);
	OFFSETOF(virtio_balloon_config, actual);
	OFFSETOF(virtio_balloon_config, free_page_hint_cmd_id);
	OFFSETOF(virtio_balloon_config, free_page_report_cmd_id);
	OFFSETOF(virtio_balloon_config, poison_val);
	SIZEOF(virtio_balloon_stat);
	OFFSETOF(virtio_balloon_stat, tag);
	OFFSETOF(virtio_balloon_stat, val);
}

int main(void)
{
	ring_layout();
	balloon();
	need_event_checks();
	return 0;
}
