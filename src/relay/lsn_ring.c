#include "lsn_ring.h"

#include <stdlib.h>

typedef struct {
    obx_lsn_t end_lsn;
    int64_t commit_time_us;
    uint32_t pending;
    int committed;
} entry_t;

struct obx_lsn_ring_s {
    entry_t *e;
    size_t cap, head, len;  /* circular: entries head .. head+len-1 */
    uint64_t head_seq;      /* ticket of e[head] */
    int in_txn, open_has_entry;
    uint64_t inflight_msgs;
    obx_lsn_t flush;
    int64_t open_time_us, flush_time_us;
};

int obx_pos_cmp(obx_pos_t a, obx_pos_t b)
{
    if (a.commit_lsn != b.commit_lsn) return a.commit_lsn < b.commit_lsn ? -1 : 1;
    if (a.index != b.index) return a.index < b.index ? -1 : 1;
    return 0;
}

obx_lsn_ring_t *obx_lsn_ring_new(obx_lsn_t start_lsn)
{
    obx_lsn_ring_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->cap = 64;
    r->e = calloc(r->cap, sizeof(entry_t));
    if (!r->e) {
        free(r);
        return NULL;
    }
    r->flush = start_lsn;
    return r;
}

void obx_lsn_ring_destroy(obx_lsn_ring_t *r)
{
    if (!r) return;
    free(r->e);
    free(r);
}

static entry_t *at(obx_lsn_ring_t *r, size_t i) { return &r->e[(r->head + i) % r->cap]; }

static void advance(obx_lsn_ring_t *r)
{
    while (r->len > 0) {
        entry_t *h = at(r, 0);
        if (!h->committed || h->pending > 0) break;
        if (h->end_lsn > r->flush) r->flush = h->end_lsn;
        if (h->commit_time_us > r->flush_time_us) r->flush_time_us = h->commit_time_us;
        r->head = (r->head + 1) % r->cap;
        r->head_seq++;
        r->len--;
    }
}

static int grow(obx_lsn_ring_t *r)
{
    size_t ncap = r->cap * 2;
    entry_t *n = malloc(ncap * sizeof(entry_t));
    if (!n) return -1;
    for (size_t i = 0; i < r->len; i++) n[i] = *at(r, i);
    free(r->e);
    r->e = n;
    r->cap = ncap;
    r->head = 0;
    return 0;
}

int obx_lsn_ring_begin(obx_lsn_ring_t *r)
{
    if (r->in_txn) return -1;
    r->in_txn = 1;
    r->open_has_entry = 0;
    r->open_time_us = 0;
    return 0;
}

int obx_lsn_ring_add(obx_lsn_ring_t *r, uint64_t *ticket)
{
    if (!r->in_txn) return -1;
    if (!r->open_has_entry) {
        if (r->len == r->cap && grow(r) != 0) return -1;
        entry_t *t = at(r, r->len++);
        t->end_lsn = 0;
        t->commit_time_us = r->open_time_us;
        t->pending = 0;
        t->committed = 0;
        r->open_has_entry = 1;
    }
    at(r, r->len - 1)->pending++;
    r->inflight_msgs++;
    *ticket = r->head_seq + r->len - 1;
    return 0;
}

int obx_lsn_ring_commit(obx_lsn_ring_t *r, obx_lsn_t end_lsn)
{
    if (!r->in_txn) return -1;
    r->in_txn = 0;
    if (r->open_has_entry) {
        entry_t *t = at(r, r->len - 1);
        t->end_lsn = end_lsn;
        t->committed = 1;
    } else if (r->len > 0) {
        /* Empty txn: confirmable exactly when the newest entry is. */
        entry_t *t = at(r, r->len - 1);
        if (end_lsn > t->end_lsn) t->end_lsn = end_lsn;
        if (r->open_time_us > t->commit_time_us) t->commit_time_us = r->open_time_us;
    } else {
        if (end_lsn > r->flush) r->flush = end_lsn;
        if (r->open_time_us > r->flush_time_us) r->flush_time_us = r->open_time_us;
    }
    r->open_has_entry = 0;
    advance(r);
    return 0;
}

int obx_lsn_ring_ack(obx_lsn_ring_t *r, uint64_t ticket)
{
    if (ticket < r->head_seq || ticket >= r->head_seq + r->len) return -1;
    entry_t *t = at(r, (size_t)(ticket - r->head_seq));
    if (t->pending == 0) return -1;
    t->pending--;
    r->inflight_msgs--;
    if (ticket == r->head_seq) advance(r);
    return 0;
}

void obx_lsn_ring_keepalive(obx_lsn_ring_t *r, obx_lsn_t wal_end)
{
    if (obx_lsn_ring_idle(r) && wal_end > r->flush) r->flush = wal_end;
}

obx_lsn_t obx_lsn_ring_flush_lsn(const obx_lsn_ring_t *r) { return r->flush; }
size_t obx_lsn_ring_inflight_txns(const obx_lsn_ring_t *r) { return r->len; }
uint64_t obx_lsn_ring_inflight_msgs(const obx_lsn_ring_t *r) { return r->inflight_msgs; }
int obx_lsn_ring_idle(const obx_lsn_ring_t *r) { return !r->in_txn && r->len == 0; }
int obx_lsn_ring_in_txn(const obx_lsn_ring_t *r) { return r->in_txn; }

void obx_lsn_ring_set_time(obx_lsn_ring_t *r, int64_t commit_time_us)
{
    r->open_time_us = commit_time_us;
    if (r->open_has_entry) at(r, r->len - 1)->commit_time_us = commit_time_us;
}

int64_t obx_lsn_ring_ticket_time(const obx_lsn_ring_t *r, uint64_t ticket)
{
    if (ticket < r->head_seq || ticket >= r->head_seq + r->len) return 0;
    return r->e[(r->head + (size_t)(ticket - r->head_seq)) % r->cap].commit_time_us;
}

int64_t obx_lsn_ring_flush_time(const obx_lsn_ring_t *r) { return r->flush_time_us; }
