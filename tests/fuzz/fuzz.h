/* Shared by the libFuzzer targets in tests/fuzz/ (built with -DOBX_FUZZ=ON,
 * run by scripts/fuzz.sh). A failed check aborts, which libFuzzer reports as
 * a crash and saves the input. */
#ifndef OBX_FUZZ_H
#define OBX_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

/* A malloc'd copy of the input with a NUL after it (for APIs that take C
 * strings); the caller frees it. Exactly sized, so ASan sees overreads. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    CHECK(s);
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
