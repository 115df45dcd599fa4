/* Parse cost of real wal2json lines with cJSON, json-c and jansson: the
 * measurement behind outboxd's choice of JSON parser (docs/benchmarks.md).
 * usage: bench_json_parse FILE [ROUNDS] -- FILE holds one wal2json
 * format-version 2 change per line (pg_recvlogical output). Each parse also
 * walks the columns and reads every value, as the relay does. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

size_t sink;

static void p_cjson(const char *s, size_t n)
{
    cJSON *r = cJSON_ParseWithLength(s, n);
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(r, "columns"), *c;
    cJSON_ArrayForEach(c, cols) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "value");
        if (cJSON_IsString(v)) sink += strlen(v->valuestring);
    }
    cJSON_Delete(r);
}

void p_jsonc(const char *s, size_t n);
void p_jansson(const char *s, size_t n);

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [ROUNDS]\n", argv[0]);
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    char **lines = NULL, *line = NULL;
    size_t *lens = NULL, nl = 0, cap = 0, bytes = 0;
    ssize_t r;
    while ((r = getline(&line, &cap, f)) > 0) {
        if (!strstr(line, "\"action\":\"I\"")) continue;
        lines = realloc(lines, (nl + 1) * sizeof(*lines));
        lens = realloc(lens, (nl + 1) * sizeof(*lens));
        lines[nl] = strndup(line, (size_t)r);
        lens[nl] = (size_t)r;
        bytes += (size_t)r;
        nl++;
    }
    fclose(f);
    if (!nl) {
        fprintf(stderr, "no insert lines in %s\n", argv[1]);
        return 1;
    }
    struct { const char *name; void (*fn)(const char *, size_t); } ps[] = {
        {"cJSON", p_cjson}, {"json-c", p_jsonc}, {"jansson", p_jansson}};
    printf("| parser | us/row | rows/s (one core) |\n|---|---|---|\n");
    for (size_t k = 0; k < 3; k++) {
        double best = 1e9;
        for (int rd = 0; rd < rounds; rd++) {
            double t0 = now_s();
            for (size_t i = 0; i < nl; i++) ps[k].fn(lines[i], lens[i]);
            double t = now_s() - t0;
            if (t < best) best = t;
        }
        printf("| %s | %.2f | %.0f |\n", ps[k].name, best / nl * 1e6, nl / best);
    }
    printf("\n%zu insert lines, %.0f bytes on average (best of %d rounds)\n", nl, (double)bytes / nl, rounds);
    return sink == 0;
}
