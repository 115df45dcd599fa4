#!/bin/sh
# Every capture in this directory, in the order it was made (PG 15.20,
# wal2json 2.5). Needs capture_ddl.sql applied (as app) and the ut_capture
# slot (as outboxd); drop both afterwards. LSNs and xids will differ from the
# committed files, so the tests' expected LSNs/xids must follow a re-capture.
set -eu
cd "$(dirname "$0")"
sh capture.sh outbox_basic <<'SQL'
insert into ut_outbox values ('4c215ef0-a0de-4f54-8e4d-f24837890dcc','athlete','a1','AthleteUpdated',
 '{"name": "Zoë \"q\""}',1,NULL,'{"n": 5, "trace": "t1"}','2026-11-26 12:15:12.02468+00');
SQL
sh capture.sh strings <<'SQL'
insert into ut_types (id, t, j, js) values
 (1, E'quote " backslash \\ slash / nl \n tab \t cr \r ctl \x01 del \x7f', '{"k": "v"}', '{"k": "v"}'),
 (2, 'é ü ß 中文 😀 𝄞', '{"e": "\u00e9", "emoji": "\ud83d\ude00", "lit": "\\u0041", "ctl": "\u0001"}',
     '{"e": "\u00e9", "emoji": "\ud83d\ude00",  "sp" :  1 }'),
 (3, '', '"just a string"', '[1, 2.50, true, null]');
SQL
sh capture.sh numbers <<'SQL'
insert into ut_types (id, big, num, f8, f4, i2) values
 (10, 9007199254740993, 1.5, 0.1, 3.14, -32768),
 (11, 9223372036854775807, 12345678901234567890.123, 'Infinity', 'NaN', 32767),
 (12, -9223372036854775808, 10.0, '-Infinity', 1e30, 0),
 (13, 9007199254740992, 'NaN', 1e-300, -0, 1),
 (14, 9007199254740991, 0, 123456789012, 1.5e10, -1),
 (15, -9007199254740991, -0.000001, 5e-324, 'Infinity', 2);
SQL
sh capture.sh bool_bytea_time Asia/Kolkata <<'SQL'
insert into ut_types (id, b, bin, ts, tsn, d, arr) values
 (20, true, '\x00ff10abCDEF'::bytea, '2026-11-26 12:15:12.02468+00', '2026-11-26 12:15:12', '2026-11-26', '{1,2,3}'),
 (21, false, ''::bytea, '1999-12-31 23:59:59+00', '2000-01-01 00:00:00.5', '1970-01-01', '{}');
SQL
sh capture.sh tz_pst America/Los_Angeles <<'SQL'
insert into ut_types (id, ts) values (22, '2026-11-26 12:15:12+00');
SQL
DATESTYLE='SQL, DMY' sh capture.sh outbox_datestyle_sql America/Los_Angeles <<'SQL'
insert into ut_outbox values ('0d9c6f3e-8a53-4c4f-9a3a-0f6b1d2e3f40','athlete','a9','AthleteUpdated','{}',2,NULL,NULL,'2026-11-26 12:15:12.5+00');
SQL
BYTEA_OUTPUT=escape sh capture.sh bytea_escape_output <<'SQL'
insert into ut_outbox_bytea values ('5b0e3c0a-6f55-4d5e-8e0a-3b8f6f1a2c11','blob','b1','BlobStored','\x414243ff00'::bytea,1,'2026-11-26 12:15:12+00');
SQL
sh capture.sh update_delete <<'SQL'
update ut_types set t = 'updated', big = 42 where id = 1;
update ut_types set id = 100 where id = 2;
delete from ut_types where id = 3;
SQL
sh capture.sh truncate <<'SQL'
truncate ut_types;
SQL
sh capture.sh messages <<'SQL'
select pg_logical_emit_message(true, 'ut_tx', 'hello "m" é\n😀') is not null;
select pg_logical_emit_message(true, 'ut_bin', '\x00ff41'::bytea) is not null;
select pg_logical_emit_message(false, 'ut_nontx', 'outside') is not null;
insert into ut_outbox_text values ('e1','note','n1','NoteAdded','plain text');
SQL
sh capture.sh outbox_huge <<'SQL'
insert into ut_outbox values ('9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a','report','r1','ReportGenerated',
 jsonb_build_object('rows', (select jsonb_agg(jsonb_build_object('i', g, 's', 'x"y\z é 😀 ' || md5(g::text))) from generate_series(1, 14000) g)),
 7, NULL, NULL, '2026-11-26 12:15:12+00');
SQL
sh capture.sh outbox_variants <<'SQL'
insert into ut_outbox values
 ('11111111-1111-4111-8111-111111111111','order','o-1','OrderPlaced','{"total": 12.50, "n": 12345678901234567890}',NULL,'custom.topic_1','{"s": "v", "n": 5, "f": 1.5, "b": true, "z": null, "o": {"a": [1, 2]}, "big": 12345678901234567890, "u": "é😀"}','2026-11-26 12:15:12.5+05:30'),
 ('22222222-2222-4222-8222-222222222222','order','o-2','OrderPlaced','{}',3,'',NULL,NULL),
 ('33333333-3333-4333-8333-333333333333','order','o-3','OrderPlaced','{}',4,'bad topic',NULL,NULL),
 ('44444444-4444-4444-8444-444444444444','order','o-4','OrderPlaced','{}',5,repeat('t',250),NULL,NULL),
 ('55555555-5555-4555-8555-555555555555','bad type','o-5','OrderPlaced','{}',6,NULL,NULL,NULL),
 (NULL,'order','o-6','OrderPlaced','{}',7,NULL,NULL,NULL),
 ('77777777-7777-4777-8777-777777777777','order',NULL,'OrderPlaced','{}',8,NULL,NULL,NULL),
 ('88888888-8888-4888-8888-888888888888','order','o-8','OrderPlaced',NULL,NULL,NULL,'[1]',NULL),
 ('99999999-9999-4999-8999-999999999999','order','o-9','OrderPlaced','{}',9,repeat('t',249),NULL,NULL),
 ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',repeat('a',237),'o-10','OrderPlaced','{}',10,NULL,NULL,NULL),
 ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb',repeat('a',236),'o-11','OrderPlaced','{}',-9007199254740991,NULL,NULL,NULL),
 ('cccccccc-cccc-4ccc-8ccc-cccccccccccc','order','o-12',NULL,'{}',1,NULL,NULL,NULL),
 ('dddddddd-dddd-4ddd-8ddd-dddddddddddd','order','o-13','OrderPlaced','{}',1,repeat('t',300),NULL,NULL);
insert into ut_outbox_bytea values
 ('5b0e3c0a-6f55-4d5e-8e0a-3b8f6f1a2c11','blob','b1','BlobStored','\x00ff10abCDEF7f80'::bytea,1,'1999-12-31 23:59:59.999999-08'),
 ('5b0e3c0a-6f55-4d5e-8e0a-3b8f6f1a2c12','blob','b2','BlobStored',''::bytea,NULL,NULL),
 ('5b0e3c0a-6f55-4d5e-8e0a-3b8f6f1a2c13','blob','b3','BlobStored',NULL,2,NULL);
insert into ut_outbox_num values
 ('6a6a6a6a-6a6a-4a6a-8a6a-6a6a6a6a6a61','acct',9007199254740993,'Moved','{"x": 1}',1),
 ('6a6a6a6a-6a6a-4a6a-8a6a-6a6a6a6a6a62','acct',42,'Moved','{"x": 1}',1.5),
 ('6a6a6a6a-6a6a-4a6a-8a6a-6a6a6a6a6a63','acct',9007199254740991,'Moved','{"x": 1}',9007199254740993),
 ('6a6a6a6a-6a6a-4a6a-8a6a-6a6a6a6a6a64','acct',-5,'Moved','[1, 2]',10.0);
SQL
sh capture.sh empty_txn <<'SQL'
insert into ut_other values (1);
SQL
sh capture.sh weird_names UTC 'ut\ s\.ch.t\,a\\b' <<'SQL'
insert into "ut s.ch"."t,a\b" values (1);
insert into "ut s.ch"."t" values (2);
SQL
