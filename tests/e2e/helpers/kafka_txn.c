/* Test helper (compiled by test_eos_chaos.py): what kcat cannot do.
 *   kafka_txn BROKERS open-txn TOPIC   one record per partition in a transaction
 *                                      left open until stdin closes, then aborted
 *   kafka_txn BROKERS add-partitions TOPIC N */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

static int die(const char *what, rd_kafka_error_t *e)
{
    fprintf(stderr, "%s: %s\n", what, e ? rd_kafka_error_string(e) : "failed");
    return 1;
}

int main(int argc, char **argv)
{
    char err[512];
    if (argc < 4) return 64;
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", argv[1], err, sizeof(err));
    if (!strcmp(argv[2], "open-txn"))
        rd_kafka_conf_set(c, "transactional.id", "outboxd-test-open-txn", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (!rk) return die(err, NULL);
    if (!strcmp(argv[2], "add-partitions") && argc == 5) {
        rd_kafka_NewPartitions_t *np = rd_kafka_NewPartitions_new(argv[3], (size_t)atoi(argv[4]), err, sizeof(err));
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_CreatePartitions(rk, &np, 1, NULL, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
        int rc = !ev || rd_kafka_event_error(ev);
        const rd_kafka_CreatePartitions_result_t *r = ev ? rd_kafka_event_CreatePartitions_result(ev) : NULL;
        size_t n = 0;
        const rd_kafka_topic_result_t **tr = r ? rd_kafka_CreatePartitions_result_topics(r, &n) : NULL;
        if (!rc && n == 1 && rd_kafka_topic_result_error(tr[0])) rc = 1;
        if (ev) rd_kafka_event_destroy(ev);
        rd_kafka_NewPartitions_destroy(np);
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(rk);
        puts(rc ? "failed" : "added");
        return rc;
    }
    const struct rd_kafka_metadata *md;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, argv[3], NULL);
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) || md->topic_cnt != 1) return die("metadata", NULL);
    int parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_error_t *e;
    if ((e = rd_kafka_init_transactions(rk, 30000))) return die("init_transactions", e);
    if ((e = rd_kafka_begin_transaction(rk))) return die("begin_transaction", e);
    for (int p = 0; p < parts; p++)
        rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(p), RD_KAFKA_V_VALUE("open", 4),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    rd_kafka_flush(rk, 30000);
    printf("open %d\n", parts);
    fflush(stdout);
    while (getchar() != EOF) {}
    if ((e = rd_kafka_abort_transaction(rk, 30000))) return die("abort_transaction", e);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return 0;
}
