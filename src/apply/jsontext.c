/* outboxd apply: the original text of a payload value. cJSON keeps numbers
 * only as doubles (12345678901234567.89 and integers above 2^53 lose
 * digits), so values reach PostgreSQL as the bytes the producer wrote: a
 * small scanner walks the payload text in step with the tree cJSON already
 * parsed (and so validated) and returns the byte range of one value. It
 * only skips over values; cJSON stays the parser.
 *
 * Nothing here allocates: spans point into the caller's text. */
#include "apply_int.h"

#include <cjson/cJSON.h>
#include <string.h>

/* cJSON's whitespace: every byte up to and including space. */
static const char *ws(const char *p, const char *end)
{
    while (p < end && (unsigned char)*p <= 32) p++;
    return p;
}

static const char *skip_string(const char *p, const char *end)
{
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* What cJSON reads as a number: strtod over these characters, and a parse
 * that succeeded had no more of them after the number. */
static int num_char(char c) { return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'; }

static const char *skip_value(const char *p, const char *end)
{
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                if (!(p = skip_string(p, end))) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') depth--;
            p++;
            if (!depth) return p;
        }
        return NULL;
    }
    const char *lit[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(lit[i]);
        if ((size_t)(end - p) >= l && !memcmp(p, lit[i], l)) return p + l;
    }
    const char *s = p;
    while (p < end && num_char(*p)) p++;
    return p > s ? p : NULL;
}

/* The text must start as the node's type does: else the walk is lost. */
static int starts_as(const cJSON *node, char c)
{
    if (cJSON_IsObject(node)) return c == '{';
    if (cJSON_IsArray(node)) return c == '[';
    if (cJSON_IsString(node)) return c == '"';
    if (cJSON_IsNumber(node)) return c == '-' || (c >= '0' && c <= '9');
    if (cJSON_IsBool(node)) return c == 't' || c == 'f';
    return c == 'n';
}

typedef struct {
    const cJSON *target;
    const char *start;
    size_t len;
} span_t;

/* Walks node's text from p; returns the end of it, or NULL when the text
 * does not follow the tree. Stops early once the target is found. */
static const char *walk(const cJSON *node, const char *p, const char *end, span_t *sp, int depth)
{
    p = ws(p, end);
    if (p >= end || depth > 2000 || !starts_as(node, *p)) return NULL;
    if (node == sp->target || !(cJSON_IsObject(node) || cJSON_IsArray(node))) {
        const char *q = skip_value(p, end);
        if (q && node == sp->target) sp->start = p, sp->len = (size_t)(q - p);
        return q;
    }
    int obj = cJSON_IsObject(node);
    p++;
    for (const cJSON *c = node->child; c; c = c->next) {
        p = ws(p, end);
        if (c != node->child) {
            if (p >= end || *p != ',') return NULL;
            p = ws(p + 1, end);
        }
        if (obj) {
            if (!(p = skip_string(p, end))) return NULL;
            p = ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p++;
        }
        if (!(p = walk(c, p, end, sp, depth + 1)) || sp->start) return p;
    }
    p = ws(p, end);
    return p < end && *p == (obj ? '}' : ']') ? p + 1 : NULL;
}

int obx_apply_json_span(const char *json, size_t len, const cJSON *root, const cJSON *v, const char **start, size_t *n)
{
    const char *p = json, *end = json + len;
    if (!json || !root || !v) return -1;
    /* cJSON skips a UTF-8 byte order mark. */
    if (len >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3;
    span_t sp = {.target = v};
    if (!walk(root, p, end, &sp, 0) || !sp.start) return -1;
    *start = sp.start;
    *n = sp.len;
    return 0;
}

static size_t digits(const char *s, size_t i, size_t n)
{
    size_t j = i;
    while (j < n && s[j] >= '0' && s[j] <= '9') j++;
    return j - i;
}

int obx_apply_json_number_ok(const char *s, size_t n, int integer)
{
    size_t i = 0, d;
    if (i < n && s[i] == '-') i++;
    if (!(d = digits(s, i, n)) || (d > 1 && s[i] == '0')) return 0;
    i += d;
    if (integer) return i == n;
    if (i < n && s[i] == '.') {
        if (!(d = digits(s, ++i, n))) return 0;
        i += d;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (!(d = digits(s, i, n))) return 0;
        i += d;
    }
    return i == n;
}

int obx_apply_json_text_ok(const char *s, size_t n)
{
    const char *p = s, *end = s + n;
    while (p < end) {
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++) {
                if ((unsigned char)*p < 32) return 0;
                if (*p == '\\') p++;
            }
            if (p >= end) return 0;
            p++;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            const char *q = p;
            while (q < end && num_char(*q)) q++;
            if (!obx_apply_json_number_ok(p, (size_t)(q - p), 0)) return 0;
            p = q;
        } else {
            p++;
        }
    }
    return 1;
}
