package io.outboxd.bench;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;

/**
 * Topic housekeeping for bench/run.sh (kcat cannot create topics):
 *   create BROKERS PARTITIONS TOPIC...   topics with message.timestamp.type=LogAppendTime,
 *                                        so a record's timestamp is the broker's append time
 *   delete BROKERS TOPIC...
 */
public final class BenchAdmin {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: BenchAdmin create BROKERS PARTITIONS TOPIC... | delete BROKERS TOPIC...");
            System.exit(2);
        }
        Properties p = new Properties();
        p.setProperty(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        try (Admin admin = Admin.create(p)) {
            if (args[0].equals("create")) {
                int partitions = Integer.parseInt(args[2]);
                List<NewTopic> topics = new ArrayList<>();
                for (String t : Arrays.copyOfRange(args, 3, args.length)) {
                    topics.add(new NewTopic(t, partitions, (short) 1)
                            .configs(Map.of("message.timestamp.type", "LogAppendTime")));
                }
                admin.createTopics(topics).all().get();
            } else if (args[0].equals("delete")) {
                admin.deleteTopics(Arrays.asList(Arrays.copyOfRange(args, 2, args.length))).all().get();
            } else {
                System.err.println("unknown command " + args[0]);
                System.exit(2);
            }
        }
    }
}
