/* strmap.c: the topic maps of dedup and the producer have no fixed size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "strmap.h"

static int freed;
static void count_free(void *v)
{
    freed++;
    free(v);
}

/* Far past the old 64 (producer) and 256 (dedup) limits; every key found. */
static void test_grows_past_thousands_of_keys(void **state)
{
    (void)state;
    enum { N = 5000 };
    obx_strmap_t *m = obx_strmap_new();
    assert_non_null(m);
    char k[64];
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "outbox.event.topic-%d", i);
        int *v = malloc(sizeof(*v));
        assert_non_null(v);
        *v = i;
        assert_int_equal(obx_strmap_put(m, k, v), 0);
        assert_int_equal(obx_strmap_count(m), (size_t)i + 1);
    }
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "outbox.event.topic-%d", i);
        int *v = obx_strmap_get(m, k);
        assert_non_null(v);
        assert_int_equal(*v, i);
    }
    assert_null(obx_strmap_get(m, "outbox.event.topic-5000"));
    assert_null(obx_strmap_get(m, ""));
    freed = 0;
    obx_strmap_destroy(m, count_free);
    assert_int_equal(freed, N);
}

static void test_put_replaces_and_clear_empties(void **state)
{
    (void)state;
    obx_strmap_t *m = obx_strmap_new();
    assert_non_null(m);
    int a = 1, b = 2;
    assert_int_equal(obx_strmap_put(m, "t", &a), 0);
    assert_int_equal(obx_strmap_put(m, "t", &b), 0);
    assert_int_equal(obx_strmap_count(m), 1);
    assert_ptr_equal(obx_strmap_get(m, "t"), &b);
    obx_strmap_clear(m, NULL);
    assert_int_equal(obx_strmap_count(m), 0);
    assert_null(obx_strmap_get(m, "t"));
    assert_int_equal(obx_strmap_put(m, "u", &a), 0);
    assert_ptr_equal(obx_strmap_get(m, "u"), &a);
    obx_strmap_destroy(m, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grows_past_thousands_of_keys),
        cmocka_unit_test(test_put_replaces_and_clear_empties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
