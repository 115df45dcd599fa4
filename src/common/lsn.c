#include "lsn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int obx_lsn_parse(const char *s, obx_lsn_t *out)
{
    /* Exactly pg_lsn_in's syntax: 1-8 hex digits, '/', 1-8 hex digits. strtoul
     * alone would also take blanks, signs and "0x". */
    static const char hex[] = "0123456789abcdefABCDEF";
    if (!s) return -1;
    size_t nh = strspn(s, hex);
    if (nh < 1 || nh > 8 || s[nh] != '/') return -1;
    const char *lo_s = s + nh + 1;
    size_t nl = strspn(lo_s, hex);
    if (nl < 1 || nl > 8 || lo_s[nl] != '\0') return -1;
    *out = ((uint64_t)strtoul(s, NULL, 16) << 32) | strtoul(lo_s, NULL, 16);
    return 0;
}

char *obx_lsn_format(obx_lsn_t lsn, char *buf, size_t size)
{
    snprintf(buf, size, OBX_LSN_FMT, OBX_LSN_ARGS(lsn));
    return buf;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Two decimal digits at p; never reads past a NUL. */
static int two_digits(const char *p, int *out)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9') return -1;
    *out = (p[0] - '0') * 10 + (p[1] - '0');
    return 0;
}

int obx_timestamptz_parse(const char *s, int64_t *out_us)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (!s) return -1;
    /* Fast path for the fixed ISO layout wal2json sends on every BEGIN (sscanf
     * showed in the relay's profile); anything else goes through sscanf. */
    int y1, y2;
    if (strnlen(s, 19) == 19 && s[4] == '-' && s[7] == '-' && (s[10] == ' ' || s[10] == 'T') && s[13] == ':' &&
        s[16] == ':' && two_digits(s, &y1) == 0 && two_digits(s + 2, &y2) == 0 && two_digits(s + 5, &mo) == 0 &&
        two_digits(s + 8, &d) == 0 && two_digits(s + 11, &h) == 0 && two_digits(s + 14, &mi) == 0 &&
        two_digits(s + 17, &sec) == 0) {
        y = y1 * 100 + y2;
        n = 19;
    } else if (sscanf(s, "%4d-%2d-%2d%*1[ T]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n == 0) {
        return -1;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60)
        return -1;
    const char *p = s + n;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (digits < 6) {
                frac = frac * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        while (digits++ < 6) frac *= 10;
    }
    while (*p == ' ') p++;
    int64_t off = 0;
    if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh = 0, om = 0, os = 0;
        p++;
        if (two_digits(p, &oh) != 0) return -1;
        p += 2;
        if (*p == ':') p++;
        if (*p >= '0' && *p <= '9') {
            if (two_digits(p, &om) != 0) return -1;
            p += 2;
            if (*p == ':') {
                p++;
                if (two_digits(p, &os) != 0) return -1;
                p += 2;
            }
        }
        off = sign * (oh * 3600 + om * 60 + os);
    } else if (*p == 'Z' || strncmp(p, "UTC", 3) == 0 || strncmp(p, "GMT", 3) == 0) {
        p += (*p == 'Z') ? 1 : 3;
    }
    /* Anything left (" BC", a zone abbreviation) would silently shift the time. */
    if (*p) return -1;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off;
    *out_us = secs * 1000000 + frac;
    return 0;
}
