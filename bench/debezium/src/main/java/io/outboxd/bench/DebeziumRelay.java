package io.outboxd.bench;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.connect.header.Header;
import org.apache.kafka.connect.source.SourceRecord;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.RecordChangeEvent;
import io.debezium.engine.format.ChangeEventFormat;

/**
 * The Debezium side of bench/run.sh: the PostgreSQL connector (pgoutput) with the
 * outbox EventRouter SMT in the embedded engine, and a KafkaProducer of our own.
 *
 * Offsets are committed the way a relay must: a batch's records are marked
 * processed only after every one of their sends is acked (acks=all, idempotent
 * producer), then the batch is finished. Offsets go to a file store; the engine
 * flushes them to the file and confirms them to the slot on its own schedule.
 *
 * Record encoding is the cheapest possible (key = aggregateid as UTF-8, value =
 * the payload column's JSON text, EventRouter headers as UTF-8 text), so that the
 * measured cost is Debezium's, not a converter's.
 *
 * Configuration: environment variables, see env() calls below. Prints
 * "bench-debezium: streaming" on stdout once the connector task runs.
 */
public final class DebeziumRelay {

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            if (dflt == null) {
                throw new IllegalArgumentException("environment variable " + name + " is required");
            }
            return dflt;
        }
        return v;
    }

    private static byte[] bytes(Object o) {
        if (o == null) {
            return null;
        }
        if (o instanceof byte[]) {
            return (byte[]) o;
        }
        return o.toString().getBytes(StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        final String brokers = env("BENCH_KAFKA_BROKERS", "127.0.0.1:9092");
        final String topicPrefix = env("BENCH_TOPIC_PREFIX", null);

        Properties pp = new Properties();
        pp.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        pp.setProperty(ProducerConfig.ACKS_CONFIG, "all");
        pp.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        // Same batching and compression outboxd sets on librdkafka (linger.ms=5, lz4);
        // a larger batch.size than Java's 16 KiB default, closer to librdkafka's 1 MB.
        pp.setProperty(ProducerConfig.LINGER_MS_CONFIG, env("BENCH_LINGER_MS", "5"));
        pp.setProperty(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        pp.setProperty(ProducerConfig.BATCH_SIZE_CONFIG, env("BENCH_BATCH_SIZE", "262144"));
        pp.setProperty(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.setProperty(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        final KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp);

        Properties p = new Properties();
        p.setProperty("name", "bench-debezium");
        p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        p.setProperty("offset.storage.file.filename", env("BENCH_OFFSET_FILE", null));
        p.setProperty("offset.flush.interval.ms", env("BENCH_OFFSET_FLUSH_MS", "1000"));
        p.setProperty("database.hostname", env("BENCH_PG_HOST", "127.0.0.1"));
        p.setProperty("database.port", env("BENCH_PG_PORT", "55432"));
        p.setProperty("database.user", env("BENCH_PG_USER", "outboxd"));
        p.setProperty("database.password", env("BENCH_PG_PASSWORD", "outboxd"));
        p.setProperty("database.dbname", env("BENCH_PG_DB", "app"));
        p.setProperty("topic.prefix", "bench-dbz");
        p.setProperty("plugin.name", "pgoutput");
        p.setProperty("slot.name", env("BENCH_SLOT", null));
        p.setProperty("publication.name", env("BENCH_PUBLICATION", null));
        // bench/run.sh creates the slot (before the backlog is written) and the
        // publication, and drops both at the end.
        p.setProperty("publication.autocreate.mode", "disabled");
        p.setProperty("slot.drop.on.stop", "false");
        p.setProperty("table.include.list", env("BENCH_TABLE", null));
        p.setProperty("snapshot.mode", "no_data");
        // Logical decoding messages (pg_logical_emit_message by other users of the
        // database) are not outbox events: without this they go to <prefix>.message.
        p.setProperty("message.prefix.exclude.list", ".*");
        // Debezium's default poll.interval.ms is 500: its queue hands a batch over
        // only when it is full or the interval ran out, which alone adds up to
        // 500 ms of latency at low rates. Tuned down for a fair latency comparison.
        p.setProperty("poll.interval.ms", env("BENCH_POLL_INTERVAL_MS", "10"));
        p.setProperty("max.batch.size", env("BENCH_MAX_BATCH_SIZE", "2048"));
        p.setProperty("max.queue.size", env("BENCH_MAX_QUEUE_SIZE", "8192"));
        p.setProperty("transforms", "outbox");
        p.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
        p.setProperty("transforms.outbox.route.by.field", "aggregatetype");
        p.setProperty("transforms.outbox.route.topic.replacement", topicPrefix + ".${routedByValue}");
        p.setProperty("transforms.outbox.table.field.event.key", "aggregateid");

        final AtomicInteger failures = new AtomicInteger();
        final CountDownLatch done = new CountDownLatch(1);
        final long[] acked = {0};
        final long[] lastLog = {System.currentTimeMillis()};

        DebeziumEngine.ChangeConsumer<RecordChangeEvent<SourceRecord>> consumer = (records, committer) -> {
            List<Future<RecordMetadata>> futures = new ArrayList<>(records.size());
            for (RecordChangeEvent<SourceRecord> r : records) {
                SourceRecord sr = r.record();
                RecordHeaders headers = new RecordHeaders();
                for (Header h : sr.headers()) {
                    headers.add(h.key(), bytes(h.value()));
                }
                futures.add(producer.send(new ProducerRecord<>(sr.topic(), null, bytes(sr.key()),
                        bytes(sr.value()), headers)));
            }
            // Offsets move only after the broker acked every record of the batch.
            for (int i = 0; i < futures.size(); i++) {
                try {
                    futures.get(i).get();
                } catch (ExecutionException e) {
                    throw new RuntimeException("Kafka send failed", e.getCause());
                }
                committer.markProcessed(records.get(i));
            }
            committer.markBatchFinished();
            acked[0] += records.size();
            long now = System.currentTimeMillis();
            if (now - lastLog[0] >= 5000) {
                System.err.println("bench-debezium: acked " + acked[0]);
                lastLog[0] = now;
            }
        };

        DebeziumEngine<RecordChangeEvent<SourceRecord>> engine = DebeziumEngine
                .create(ChangeEventFormat.of(Connect.class))
                .using(p)
                .notifying(consumer)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        System.out.println("bench-debezium: streaming");
                        System.out.flush();
                    }
                })
                .using((success, message, error) -> {
                    if (!success) {
                        failures.incrementAndGet();
                        System.err.println("bench-debezium: engine failed: " + message);
                        if (error != null) {
                            error.printStackTrace();
                        }
                    }
                    done.countDown();
                })
                .build();

        Thread runner = new Thread(engine, "debezium-engine");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                done.await();
            } catch (Exception e) {
                e.printStackTrace();
            }
            producer.close();
            System.err.println("bench-debezium: stopped, acked " + acked[0]);
        }));
        runner.start();
        done.await();
        if (failures.get() > 0) {
            Runtime.getRuntime().halt(1);
        }
    }
}
