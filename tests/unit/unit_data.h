/* Shared by the unit tests: reads a captured .jsonl file from OBX_TESTDATA
 * into lines (the buffer is owned by lines_t; unload frees it). */
#ifndef OBX_UNIT_DATA_H
#define OBX_UNIT_DATA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNIT_MAX_LINES 64

typedef struct {
    char *buf;
    char *line[UNIT_MAX_LINES];
    size_t len[UNIT_MAX_LINES];
    int n;
} lines_t;

static void load(lines_t *l, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", OBX_TESTDATA, name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    assert_true(sz > 0);
    rewind(f);
    memset(l, 0, sizeof(*l));
    l->buf = malloc((size_t)sz + 1);
    assert_non_null(l->buf);
    assert_int_equal(fread(l->buf, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    l->buf[sz] = '\0';
    for (char *p = l->buf; *p;) {
        char *nl = strchr(p, '\n');
        assert_true(l->n < UNIT_MAX_LINES);
        l->line[l->n] = p;
        l->len[l->n] = nl ? (size_t)(nl - p) : strlen(p);
        l->n++;
        if (!nl) break;
        *nl = '\0';
        p = nl + 1;
    }
}

static void unload(lines_t *l) { free(l->buf); }

#endif
