/* W3C Trace Context (https://www.w3.org/TR/trace-context/): the trace id of
 * a traceparent header, for logs. outboxd never changes trace headers: it
 * passes traceparent and tracestate through as they came, valid or not,
 * and only reads the trace id out of a valid one. */
#ifndef OBX_TRACE_H
#define OBX_TRACE_H

#include <stddef.h>

#define OBX_TRACE_ID_LEN 32

/* value (len bytes, need not end in NUL) as a traceparent: 1 and the 32
 * hex digits of its trace id in out (NUL-terminated) when it is valid
 * (version 00: exactly "00-<32 hex>-<16 hex>-<2 hex>", lower case, ids not
 * all zeros; a later version: that prefix, then nothing or "-..."; never
 * version ff), else 0 and out empty. */
int obx_trace_id(const char *value, size_t len, char out[OBX_TRACE_ID_LEN + 1]);

#endif
