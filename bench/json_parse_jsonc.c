/* json-c side of json_parse.c (json-c and jansson both define json_object_get). */
#include <json-c/json.h>
#include <stddef.h>

extern size_t sink;

void p_jsonc(const char *s, size_t n)
{
    struct json_tokener *tok = json_tokener_new();
    json_object *r = json_tokener_parse_ex(tok, s, (int)n), *cols;
    if (r && json_object_object_get_ex(r, "columns", &cols)) {
        size_t k = json_object_array_length(cols);
        for (size_t i = 0; i < k; i++) {
            json_object *v;
            if (json_object_object_get_ex(json_object_array_get_idx(cols, i), "value", &v) &&
                json_object_is_type(v, json_type_string))
                sink += (size_t)json_object_get_string_len(v);
        }
    }
    json_object_put(r);
    json_tokener_free(tok);
}

