/* PostgreSQL LSNs: "X/X" text <-> uint64, and timestamptz text. */
#ifndef OBX_LSN_H
#define OBX_LSN_H

#include <stddef.h>
#include <stdint.h>

typedef uint64_t obx_lsn_t;
#define OBX_LSN_FMT "%X/%X"
#define OBX_LSN_ARGS(l) (unsigned)((l) >> 32), (unsigned)(l)

/* Parses "16/B374D848"; returns 0, or -1 when s is not an LSN. */
int obx_lsn_parse(const char *s, obx_lsn_t *out);
/* Writes "16/B374D848" into buf (at least 24 bytes); returns buf. */
char *obx_lsn_format(obx_lsn_t lsn, char *buf, size_t size);

/* Parses a PostgreSQL timestamptz text ("2026-11-26 12:00:00.123456+00",
 * "... UTC", "...+05:30", "T" separator) into Unix microseconds. */
int obx_timestamptz_parse(const char *s, int64_t *out_us);

#endif
