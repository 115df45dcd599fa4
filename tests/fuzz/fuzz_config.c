/* The config parsers: obx_config_load_file on the input as a file, then
 * obx_config_load_env on its lines as an environment, then what runs on a
 * loaded config (validation, printing with secrets redacted, the key rule
 * check). */
#include "config.h"
#include "fuzz.h"

#include <unistd.h>

static char path[64];
static FILE *devnull;

static void remove_file(void) { unlink(path); }

static void setup(void)
{
    snprintf(path, sizeof(path), "/tmp/obx-fuzz-config-%d.conf", (int)getpid());
    atexit(remove_file);
    devnull = fopen("/dev/null", "w");
    CHECK(devnull);
}

/* librdkafka loads plugin libraries while its conf is being set: never
 * hand it a fuzzed plugin path. */
static void drop_plugins(obx_config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_kafka; i++)
        if (strstr(cfg->kafka[i].key, "plugin") || strstr(cfg->kafka[i].key, "interceptor")) {
            free(cfg->kafka[i].value);
            cfg->kafka[i].value = strdup("");
            CHECK(cfg->kafka[i].value);
            free(cfg->kafka[i].key);
            cfg->kafka[i].key = strdup("client.id");
            CHECK(cfg->kafka[i].key);
        }
}

static void use(obx_config_t *cfg, const obx_config_t *defaults)
{
    char err[512];
    drop_plugins(cfg);
    (void)obx_config_validate(cfg, err, sizeof(err));
    obx_config_print(cfg, devnull);
    (void)obx_config_check_key_rule(defaults, cfg, err, sizeof(err));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static obx_config_t *defaults;
    if (!devnull) setup();
    if (!defaults) CHECK((defaults = obx_config_new()) != NULL);
    char err[512];

    FILE *f = fopen(path, "w");
    CHECK(f);
    CHECK(fwrite(data, 1, size, f) == size);
    CHECK(fclose(f) == 0);
    obx_config_t *cfg = obx_config_new();
    CHECK(cfg);
    err[0] = '\0';
    if (obx_config_load_file(cfg, path, err, sizeof(err)) == 0) use(cfg, defaults);
    else CHECK(err[0]);
    obx_config_destroy(cfg);

    /* The same bytes as NAME=value lines of an environment. */
    char *text = fuzz_cstr(data, size);
    char *envp[65];
    size_t n = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < 64; l = strtok_r(NULL, "\n", &save))
        envp[n++] = l;
    envp[n] = NULL;
    cfg = obx_config_new();
    CHECK(cfg);
    if (obx_config_load_env(cfg, envp, err, sizeof(err)) == 0) use(cfg, defaults);
    obx_config_destroy(cfg);
    free(text);
    return 0;
}
