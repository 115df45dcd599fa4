/* traceparent -> trace id (trace.h). */
#include "trace.h"

#include <string.h>

static int hex(const char *p, size_t n, int *all_zero)
{
    *all_zero = 1;
    for (size_t i = 0; i < n; i++) {
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
        if (p[i] != '0') *all_zero = 0;
    }
    return 1;
}

int obx_trace_id(const char *v, size_t len, char out[OBX_TRACE_ID_LEN + 1])
{
    int zero_version, zero_trace, zero_parent, zero_flags;
    out[0] = '\0';
    if (!v || len < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return 0;
    if (!hex(v, 2, &zero_version) || !hex(v + 3, 32, &zero_trace) || !hex(v + 36, 16, &zero_parent) ||
        !hex(v + 53, 2, &zero_flags))
        return 0;
    if (!memcmp(v, "ff", 2) || zero_trace || zero_parent) return 0;
    if (!memcmp(v, "00", 2) ? len != 55 : (len > 55 && v[55] != '-')) return 0;
    memcpy(out, v + 3, OBX_TRACE_ID_LEN);
    out[OBX_TRACE_ID_LEN] = '\0';
    return 1;
}
