/* Structured logging on stderr: one line per event of interest.
 * JSON lines when stderr is not a terminal (containers), text otherwise.
 * Lines carry their context as fields (like pgbouncer's slog_*): the slot
 * or consumer group of the process and, per thread, e.g. the snapshot a
 * thread runs. Owns nothing the caller passes: values are copied. */
#ifndef OBX_LOG_H
#define OBX_LOG_H

typedef enum { OBX_LOG_DEBUG = 0, OBX_LOG_INFO, OBX_LOG_WARN, OBX_LOG_ERROR } obx_log_level_t;
typedef enum { OBX_LOG_AUTO = 0, OBX_LOG_TEXT, OBX_LOG_JSON } obx_log_format_t;

void obx_log_setup(obx_log_level_t level, obx_log_format_t format);
int obx_log_level_parse(const char *s, obx_log_level_t *out);
int obx_log_format_parse(const char *s, obx_log_format_t *out);
int obx_log_enabled(obx_log_level_t level);

/* Context fields printed with every line: JSON members after "event",
 * `key=value` before the event in text. Process-wide fields (slot, group)
 * are set by the entry points; thread fields (snapshot) by code running in
 * its own thread, and override a process field of the same key. value NULL
 * or "" removes the field. At most OBX_LOG_MAX_CONTEXT of each; keys up to
 * 31 bytes, values cut at 127. Thread-safe. */
#define OBX_LOG_MAX_CONTEXT 4
void obx_log_set_context(const char *key, const char *value);
void obx_log_set_thread_context(const char *key, const char *value);

/* `event` is a short stable token (e.g. "slot_created") for log queries;
 * the formatted message is for humans. Registered secrets (err.h) in the
 * message are replaced with "***". */
void obx_log(obx_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define obx_debug(ev, ...) do { if (obx_log_enabled(OBX_LOG_DEBUG)) obx_log(OBX_LOG_DEBUG, ev, __VA_ARGS__); } while (0)
#define obx_info(ev, ...) obx_log(OBX_LOG_INFO, ev, __VA_ARGS__)
#define obx_warn(ev, ...) obx_log(OBX_LOG_WARN, ev, __VA_ARGS__)
#define obx_error(ev, ...) obx_log(OBX_LOG_ERROR, ev, __VA_ARGS__)

#endif
