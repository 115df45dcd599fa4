/* The flush-LSN rule (src/lsn_ring.h): flush = end LSN of the newest
 * transaction that, with every one before it, is committed and fully acked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lsn_ring.h"

#define START 0x1000

static obx_lsn_ring_t *ring(obx_lsn_t start)
{
    obx_lsn_ring_t *r = obx_lsn_ring_new(start);
    assert_non_null(r);
    return r;
}

/* One transaction with n messages, committed at end; tickets into t. */
static void txn(obx_lsn_ring_t *r, int n, obx_lsn_t end, uint64_t *t)
{
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    assert_true(obx_lsn_ring_in_txn(r));
    for (int i = 0; i < n; i++) assert_int_equal(obx_lsn_ring_add(r, &t[i]), 0);
    assert_int_equal(obx_lsn_ring_commit(r, end), 0);
    assert_false(obx_lsn_ring_in_txn(r));
}

static void ack(obx_lsn_ring_t *r, uint64_t t) { assert_int_equal(obx_lsn_ring_ack(r, t), 0); }

static void test_new(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_true(obx_lsn_ring_idle(r));
    assert_false(obx_lsn_ring_in_txn(r));
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 0);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 0);
    obx_lsn_ring_destroy(r);
    obx_lsn_ring_destroy(NULL);
}

static void test_one_txn_in_order(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t t[3];
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(obx_lsn_ring_add(r, &t[i]), 0);
    assert_false(obx_lsn_ring_idle(r));
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 3);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 1);
    assert_int_equal(obx_lsn_ring_commit(r, 0x2000), 0);
    ack(r, t[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    ack(r, t[1]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 1);
    ack(r, t[2]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    assert_true(obx_lsn_ring_idle(r));
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 0);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 0);
    obx_lsn_ring_destroy(r);
}

/* Kafka acks arrive out of order across partitions. */
static void test_out_of_order_acks(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t a[2], b[1], c[1], d[2];
    txn(r, 2, 0x2000, a);
    txn(r, 1, 0x3000, b);
    txn(r, 1, 0x4000, c);
    txn(r, 2, 0x5000, d);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 4);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 6);

    ack(r, c[0]); /* txn 3 done, 1 and 2 not: nothing confirmable */
    ack(r, b[0]); /* txn 2 done, txn 1 not */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    ack(r, a[1]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    ack(r, d[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    ack(r, a[0]); /* txn 1 done: 1..3 confirm at once, 4 still waits */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x4000);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 1);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 1);
    ack(r, d[1]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x5000);
    assert_true(obx_lsn_ring_idle(r));
    obx_lsn_ring_destroy(r);
}

/* Acks of the open txn before its COMMIT confirm nothing until the commit. */
static void test_acks_before_commit(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t t[2];
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    assert_int_equal(obx_lsn_ring_add(r, &t[0]), 0);
    assert_int_equal(obx_lsn_ring_add(r, &t[1]), 0);
    ack(r, t[1]);
    ack(r, t[0]);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 0);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_false(obx_lsn_ring_idle(r));
    obx_lsn_ring_keepalive(r, 0x9000); /* txn open: no */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_int_equal(obx_lsn_ring_commit(r, 0x2000), 0);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    assert_true(obx_lsn_ring_idle(r));
    obx_lsn_ring_destroy(r);
}

static void test_empty_txn_when_idle(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    assert_false(obx_lsn_ring_idle(r));
    assert_int_equal(obx_lsn_ring_commit(r, 0x2000), 0);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    assert_true(obx_lsn_ring_idle(r));
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 0);
    /* an older end never moves flush back */
    txn(r, 0, 0x1800, NULL);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    obx_lsn_ring_destroy(r);
}

/* An empty txn behind unacked ones merges into the newest entry: it is
 * confirmable exactly when that entry is, and takes no ring slot. */
static void test_empty_txn_merges(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t a[1], b[1];
    txn(r, 1, 0x2000, a);
    txn(r, 0, 0x2100, NULL);
    txn(r, 0, 0x2200, NULL);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 1);
    txn(r, 1, 0x3000, b);
    txn(r, 0, 0x3100, NULL);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 2);
    ack(r, a[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2200); /* txn a + both empties */
    ack(r, b[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3100);
    assert_true(obx_lsn_ring_idle(r));

    /* the same with the later txn acked first */
    txn(r, 1, 0x4000, a);
    txn(r, 0, 0x4100, NULL);
    txn(r, 1, 0x5000, b);
    ack(r, b[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3100);
    ack(r, a[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x5000);
    obx_lsn_ring_destroy(r);
}

static void test_keepalive(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t t[1];
    obx_lsn_ring_keepalive(r, 0x2000); /* idle: confirmable */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    obx_lsn_ring_keepalive(r, 0x1800); /* never backwards */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);

    assert_int_equal(obx_lsn_ring_begin(r), 0); /* open, nothing added yet */
    obx_lsn_ring_keepalive(r, 0x2500);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    assert_int_equal(obx_lsn_ring_add(r, &t[0]), 0);
    obx_lsn_ring_keepalive(r, 0x2600);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    assert_int_equal(obx_lsn_ring_commit(r, 0x3000), 0);
    obx_lsn_ring_keepalive(r, 0x3500); /* committed but unacked */
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x2000);
    ack(r, t[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3000);
    obx_lsn_ring_keepalive(r, 0x3500);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3500);

    /* an open empty txn blocks keepalives too */
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    obx_lsn_ring_keepalive(r, 0x3800);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3500);
    assert_int_equal(obx_lsn_ring_commit(r, 0x3700), 0);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3700);
    obx_lsn_ring_destroy(r);
}

static void test_big_txn(void **state)
{
    (void)state;
    enum { N = 10000 };
    obx_lsn_ring_t *r = ring(START);
    uint64_t *t = malloc(N * sizeof(*t)), u[1];
    assert_non_null(t);
    txn(r, N, 0x100000, t);
    txn(r, 1, 0x200000, u);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), N + 1);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 2);
    ack(r, u[0]);
    for (int i = N - 1; i > 0; i--) {
        ack(r, t[i]);
        assert_int_equal(obx_lsn_ring_inflight_msgs(r), (uint64_t)i);
    }
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    ack(r, t[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x200000);
    assert_true(obx_lsn_ring_idle(r));
    free(t);
    obx_lsn_ring_destroy(r);
}

/* More in-flight txns than the initial 64 slots, growing while the ring has
 * wrapped (head not at slot 0). */
static void test_ring_growth(void **state)
{
    (void)state;
    enum { N = 300 };
    obx_lsn_ring_t *r = ring(START);
    uint64_t t[N];
    for (int i = 0; i < 40; i++) txn(r, 1, 0x10000 + (obx_lsn_t)i * 0x100, &t[i]);
    for (int i = 0; i < 30; i++) ack(r, t[i]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x10000 + 29 * 0x100);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), 10);
    for (int i = 40; i < N; i++) txn(r, 1, 0x10000 + (obx_lsn_t)i * 0x100, &t[i]);
    assert_int_equal(obx_lsn_ring_inflight_txns(r), N - 30);
    /* ack back to front: nothing moves until the oldest is acked */
    /* in order, each step confirming exactly its own txn: entries kept
     * their WAL order through the growth */
    for (int i = 30; i < N; i++) {
        ack(r, t[i]);
        assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x10000 + (obx_lsn_t)i * 0x100);
        assert_int_equal(obx_lsn_ring_inflight_txns(r), (size_t)(N - 1 - i));
    }
    assert_true(obx_lsn_ring_idle(r));

    /* back to front: nothing moves until the oldest is acked */
    for (int i = 0; i < N; i++) txn(r, 1, 0x100000 + (obx_lsn_t)i * 0x100, &t[i]);
    for (int i = N - 1; i > 0; i--) ack(r, t[i]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x10000 + (N - 1) * 0x100);
    ack(r, t[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x100000 + (N - 1) * 0x100);
    assert_true(obx_lsn_ring_idle(r));
    obx_lsn_ring_destroy(r);
}

static void test_bad_calls(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = ring(START);
    uint64_t a[1], b[1], c[2], x;
    assert_int_equal(obx_lsn_ring_add(r, &x), -1);     /* no open txn */
    assert_int_equal(obx_lsn_ring_commit(r, 0x9000), -1);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), START);
    assert_int_equal(obx_lsn_ring_ack(r, 0), -1);      /* nothing issued */
    assert_int_equal(obx_lsn_ring_ack(r, 12345), -1);
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    assert_int_equal(obx_lsn_ring_begin(r), -1);       /* already open */
    assert_int_equal(obx_lsn_ring_commit(r, 0x1100), 0);

    txn(r, 1, 0x2000, a);
    txn(r, 1, 0x3000, b);
    txn(r, 2, 0x4000, c);
    assert_int_equal(obx_lsn_ring_ack(r, c[1] + 1), -1); /* beyond the newest */
    ack(r, b[0]);
    assert_int_equal(obx_lsn_ring_ack(r, b[0]), -1); /* duplicate, entry not retired */
    ack(r, a[0]);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3000);
    assert_int_equal(obx_lsn_ring_ack(r, a[0]), -1); /* duplicate, entry retired */
    assert_int_equal(obx_lsn_ring_ack(r, b[0]), -1);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x3000);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 2);
    ack(r, c[0]);
    ack(r, c[1]);
    assert_int_equal(obx_lsn_ring_ack(r, c[1]), -1);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x4000);
    assert_int_equal(obx_lsn_ring_inflight_msgs(r), 0);
    obx_lsn_ring_destroy(r);
}

/* ---- randomized, against an independent oracle ------------------------ */

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

typedef struct {
    obx_lsn_t end;
    int n, acked, committed;
} otxn_t;

typedef struct {
    uint64_t ticket;
    int txn;
} omsg_t;

static void test_randomized(void **state)
{
    (void)state;
    enum { NTXN = 3000 };
    otxn_t *tx = calloc(NTXN, sizeof(*tx));
    omsg_t *pool = malloc(NTXN * 40 * sizeof(*pool)); /* unacked messages */
    assert_non_null(tx);
    assert_non_null(pool);
    size_t npool = 0;
    obx_lsn_ring_t *r = ring(START);
    obx_lsn_t oracle = START, lsn = START, last = START;
    int next = 0, open = -1, left_to_add = 0;
    unsigned long steps = 0;
    size_t max_entries = 0;

    while (next < NTXN || open >= 0 || npool > 0) {
        uint64_t dice = rnd() % 100;
        if (open < 0 && next < NTXN && (dice < 35 || npool == 0)) {
            open = next++;
            /* a third empty, some big, most small */
            uint64_t k = rnd() % 10;
            tx[open].n = k < 3 ? 0 : k < 9 ? (int)(1 + rnd() % 5) : (int)(1 + rnd() % 39);
            left_to_add = tx[open].n;
            assert_int_equal(obx_lsn_ring_begin(r), 0);
        } else if (open >= 0 && left_to_add > 0 && dice < 60) {
            assert_int_equal(obx_lsn_ring_add(r, &pool[npool].ticket), 0);
            pool[npool++].txn = open;
            left_to_add--;
        } else if (open >= 0 && left_to_add == 0 && dice < 60) {
            lsn += 0x10 + rnd() % 0x1000;
            tx[open].end = lsn;
            tx[open].committed = 1;
            assert_int_equal(obx_lsn_ring_commit(r, lsn), 0);
            open = -1;
        } else if (npool > 0 && dice < 95 && !(next % 1000 >= 700 && next < NTXN && dice < 90)) {
            /* (acks slow to a trickle for 300 of every 1000 txns: a slow
             * broker, so the ring grows and wraps) */
            size_t i = (size_t)(rnd() % npool);
            omsg_t m = pool[i];
            pool[i] = pool[--npool];
            assert_int_equal(obx_lsn_ring_ack(r, m.ticket), 0);
            tx[m.txn].acked++;
            /* a second ack of the same message is refused when detectable
             * (tickets name a txn, so only once its count reached zero) */
            if (tx[m.txn].acked == tx[m.txn].n) assert_int_equal(obx_lsn_ring_ack(r, m.ticket), -1);
        } else {
            /* keepalive: walEnd at or past everything received so far */
            obx_lsn_t w = lsn + rnd() % 0x100;
            int idle = open < 0 && npool == 0;
            obx_lsn_ring_keepalive(r, w);
            if (idle) {
                if (w > oracle) oracle = w;
                if (w > lsn) lsn = w;
            }
        }
        steps++;

        /* oracle: newest fully-acked committed prefix */
        int p = 0;
        while (p < next && tx[p].committed && tx[p].acked == tx[p].n) p++;
        if (p > 0 && tx[p - 1].end > oracle) oracle = tx[p - 1].end;
        if (oracle < last) fail_msg("oracle went backwards at step %lu", steps);
        last = oracle;
        obx_lsn_t got = obx_lsn_ring_flush_lsn(r);
        if (got != oracle)
            fail_msg("step %lu: flush %llx, oracle %llx (prefix %d of %d)", steps, (unsigned long long)got,
                     (unsigned long long)oracle, p, next);
        uint64_t unacked = 0;
        size_t entries = 0;
        for (int i = 0; i < next; i++) {
            unacked += (uint64_t)(tx[i].n - tx[i].acked);
            /* txns with messages past the done prefix hold a ring entry */
            if (i >= p && tx[i].n > 0 && (tx[i].committed || tx[i].n - left_to_add > 0)) entries++;
        }
        assert_int_equal(obx_lsn_ring_inflight_msgs(r), unacked - (open >= 0 ? (uint64_t)left_to_add : 0));
        assert_int_equal(obx_lsn_ring_inflight_txns(r), entries);
        if (entries > max_entries) max_entries = entries;
        assert_int_equal(obx_lsn_ring_idle(r), open < 0 && npool == 0);
    }
    assert_int_equal(obx_lsn_ring_flush_lsn(r), oracle);
    assert_true(oracle >= tx[NTXN - 1].end);
    assert_true(steps > 20000);
    assert_true(max_entries > 200); /* the ring grew well past its first 64 */
    obx_lsn_ring_destroy(r);
    free(pool);
    free(tx);
}

/* Commit times ride along: per ticket for commit-to-ack latency, and the
 * newest confirmed one (with or without rows) for source age. */
static void test_commit_times(void **state)
{
    (void)state;
    obx_lsn_ring_t *r = obx_lsn_ring_new(0x100);
    assert_non_null(r);
    uint64_t t1, t2;
    assert_int_equal(obx_lsn_ring_flush_time(r), 0);
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    obx_lsn_ring_set_time(r, 1000);
    assert_int_equal(obx_lsn_ring_add(r, &t1), 0);
    assert_int_equal(obx_lsn_ring_commit(r, 0x200), 0);
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    obx_lsn_ring_set_time(r, 2000);
    assert_int_equal(obx_lsn_ring_add(r, &t2), 0);
    assert_int_equal(obx_lsn_ring_commit(r, 0x300), 0);
    /* An empty transaction merges into the newest entry, time included. */
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    obx_lsn_ring_set_time(r, 3000);
    assert_int_equal(obx_lsn_ring_commit(r, 0x400), 0);
    assert_int_equal(obx_lsn_ring_ticket_time(r, t1), 1000);
    assert_int_equal(obx_lsn_ring_ticket_time(r, t2), 3000);
    assert_int_equal(obx_lsn_ring_ticket_time(r, t2 + 5), 0);
    assert_int_equal(obx_lsn_ring_ack(r, t2), 0);
    assert_int_equal(obx_lsn_ring_flush_time(r), 0); /* t1 still in flight */
    assert_int_equal(obx_lsn_ring_ack(r, t1), 0);
    assert_int_equal(obx_lsn_ring_flush_lsn(r), 0x400);
    assert_int_equal(obx_lsn_ring_flush_time(r), 3000);
    /* Idle: an empty transaction confirms at once, with its time. */
    assert_int_equal(obx_lsn_ring_begin(r), 0);
    obx_lsn_ring_set_time(r, 4000);
    assert_int_equal(obx_lsn_ring_commit(r, 0x500), 0);
    assert_int_equal(obx_lsn_ring_flush_time(r), 4000);
    obx_lsn_ring_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new),
        cmocka_unit_test(test_one_txn_in_order),
        cmocka_unit_test(test_out_of_order_acks),
        cmocka_unit_test(test_acks_before_commit),
        cmocka_unit_test(test_empty_txn_when_idle),
        cmocka_unit_test(test_empty_txn_merges),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_big_txn),
        cmocka_unit_test(test_ring_growth),
        cmocka_unit_test(test_bad_calls),
        cmocka_unit_test(test_randomized),
        cmocka_unit_test(test_commit_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
