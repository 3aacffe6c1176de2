/*
 * core._fastpath: a conservative C filter over raw request bytes.
 *
 * `check` walks a serialized TrackActivities / StreamActivities / TrackActivity request on the wire and
 * sorts its activities into three groups:
 *
 *   fast  - certainly valid under core.validation AND already in the canonical form that
 *           workers.rows would produce (action, locale, device type, currency unchanged by the
 *           normalisers; no unknown fields; no repeated singular field; map entries with one key and
 *           one value; minimal varints). Their bytes can be framed as rows as they are.
 *   slow  - everything else; the Python path (upb parse, validate_activities, encode_rows) decides
 *           and writes every rejection message.
 *   dups  - the duplicate-id rule: ids that are syntactically valid UUIDs take part, compared as
 *           128-bit values (so case-insensitively); the first occurrence wins whatever its validity;
 *           every later occurrence is a duplicate, decided before any other check.
 *
 * An activity whose bytes upb would refuse to parse (malformed wire data inside it, or a known string
 * field that is not valid UTF-8) is slow and its id takes no part in the duplicate rule: the Python
 * path (core.wire.salvage_batch) sees such an activity as empty, without an id. Constructs for
 * which this module does not know for certain whether upb parses them (groups, wire types 6 and 7,
 * field number 0, tags longer than 5 bytes, lengths longer than 5 bytes, 10-byte varints that overflow
 * 64 bits) raise ValueError for the whole request, as broken top-level framing does: the caller then
 * takes the Python path for the whole request.
 *
 * `frame` turns the fast activities into ProtobufList rows: 0x0a, varint(row length), the activity
 * bytes, an id field when the activity has none (a UUID v4 made from caller-supplied random bytes),
 * and the batch suffix. Whether an activity has an id is read from its bytes (a top-level field 1 of
 * wire type 2 with a non-empty value); the triples of `fast` carry plain indexes.
 *
 * `keys` reads, from the same fast activities, the strings enrichment looks up (target type and id, the
 * user's ids, the user agent), so that enrichment never parses an activity the filter vouched for.
 *
 * C99 and the CPython C API only.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_OK 0
#define SCAN_BROKEN 1    /* upb certainly fails to parse the activity */
#define SCAN_UNCERTAIN 2 /* not known whether upb parses it: the whole request goes to Python */

/* Keys of a map compared for duplicates; a longer map is left to the Python path. */
#define MAP_KEYS_MAX 64

#define NANOS_PER_SECOND INT64_C(1000000000)

/* Field numbers of protos/activity/v1/activity.proto (and of the well-known types it uses) that this
 * filter reads. Each message's fields are 1..*_MAX_FIELD, every one of them known here; a number past
 * it is an unknown field (slow). tests/core/test_c_field_numbers.py checks every *_FIELD constant of
 * this file against the descriptors: a number changed in the .proto fails there, not in production. */
#define ACTIVITY_ID_FIELD 1
#define ACTIVITY_ACTION_FIELD 2
#define ACTIVITY_TARGET_FIELD 3
#define ACTIVITY_USER_FIELD 4
#define ACTIVITY_SOURCE_ID_FIELD 5
#define ACTIVITY_METADATA_FIELD 6
#define ACTIVITY_SEGMENTS_FIELD 7
#define ACTIVITY_OCCURRED_AT_FIELD 8
#define ACTIVITY_SOURCE_FIELD 9
#define ACTIVITY_MAX_FIELD 9

#define TARGET_TYPE_FIELD 1
#define TARGET_ID_FIELD 2
#define TARGET_ATTRIBUTES_FIELD 3
#define TARGET_MAX_FIELD 3

#define USER_SESSION_ID_FIELD 1
#define USER_ANONYMOUS_ID_FIELD 2
#define USER_USER_ID_FIELD 3
#define USER_IDENTITIES_FIELD 4
#define USER_MAX_FIELD 4

#define METADATA_LOCALE_FIELD 1
#define METADATA_DEVICE_TYPE_FIELD 2
#define METADATA_QUANTITY_FIELD 3
#define METADATA_PRICE_FIELD 4
#define METADATA_CURRENCY_FIELD 5
#define METADATA_ORDER_ID_FIELD 6
#define METADATA_PAGE_URL_FIELD 7
#define METADATA_REFERRER_FIELD 8
#define METADATA_USER_AGENT_FIELD 9
#define METADATA_QUERY_FIELD 10
#define METADATA_CUSTOM_FIELD 11
#define METADATA_MAX_FIELD 11

#define SOURCE_TYPE_FIELD 1
#define SOURCE_NAME_FIELD 2
#define SOURCE_VARIANT_FIELD 3
#define SOURCE_POSITION_FIELD 4
#define SOURCE_RESULT_COUNT_FIELD 5
#define SOURCE_MAX_FIELD 5

/* An entry of every map<string, string> (Target.attributes, User.identities, Metadata.custom). */
#define MAP_KEY_FIELD 1
#define MAP_VALUE_FIELD 2
#define MAP_MAX_FIELD 2

/* google.protobuf.Timestamp */
#define TIMESTAMP_SECONDS_FIELD 1
#define TIMESTAMP_NANOS_FIELD 2
#define TIMESTAMP_MAX_FIELD 2

/* The envelope of FORMAT ProtobufList: its repeated row field (workers.rows frames the same). */
#define ROWS_ENVELOPE_FIELD 1

/* Fields are tracked in 32-bit `seen` masks, and `frame` writes one-byte keys. */
#if ACTIVITY_MAX_FIELD > 31 || TARGET_MAX_FIELD > 31 || USER_MAX_FIELD > 31 || METADATA_MAX_FIELD > 31 || \
    MAP_MAX_FIELD > 31 || TIMESTAMP_MAX_FIELD > 31 || SOURCE_MAX_FIELD > 31
#error "a *_MAX_FIELD past 31 does not fit the seen masks"
#endif
#if ACTIVITY_ID_FIELD > 15 || ROWS_ENVELOPE_FIELD > 15
#error "frame writes the keys of ACTIVITY_ID_FIELD and ROWS_ENVELOPE_FIELD as one byte"
#endif

#define FIELD_BIT(num) (1u << (num))
/* The fields an activity, a target and a map entry must carry (each once) to be fast. */
#define ACTIVITY_REQUIRED_BITS \
    (FIELD_BIT(ACTIVITY_ACTION_FIELD) | FIELD_BIT(ACTIVITY_TARGET_FIELD) | FIELD_BIT(ACTIVITY_USER_FIELD))
#define TARGET_REQUIRED_BITS (FIELD_BIT(TARGET_TYPE_FIELD) | FIELD_BIT(TARGET_ID_FIELD))
#define MAP_ENTRY_BITS (FIELD_BIT(MAP_KEY_FIELD) | FIELD_BIT(MAP_VALUE_FIELD))
/* The one-byte key of a length-delimited field (wire type 2) numbered below 16. */
#define LEN_KEY(num) ((uint8_t)((num) << 3 | 2))
/* An id field that frame adds: its key, its length (36), and the 36 characters of a UUID. */
#define ID_FIELD_BYTES 38

typedef struct {
    int64_t max_activity_bytes;
    int64_t max_id_chars;
    int64_t max_name_chars;
    int64_t max_text_chars;
    int64_t max_map_entries;
    int64_t max_segments;
    int64_t max_future_ns;
    int64_t received_ns;
    int64_t skew_ns;
    const uint8_t *currencies; /* bitmap over 26^3 upper-case three-letter codes */
} ctx_t;

typedef struct {
    uint32_t num;
    uint32_t wt;
    uint64_t val;        /* wire type 0 */
    const uint8_t *data; /* wire types 1, 2, 5 */
    size_t len;
} field_t;

typedef struct {
    int64_t n;
    const uint8_t *key[MAP_KEYS_MAX];
    size_t klen[MAP_KEYS_MAX];
} map_t;

/* Per-activity outcome of the scan. */
typedef struct {
    uint32_t start;
    uint32_t end;
    uint8_t kind;    /* K_FAST, K_SLOW, K_DUP */
    uint8_t missing; /* fast and without an id */
} act_t;

enum { K_FAST = 0, K_SLOW = 1, K_DUP = 2 };

/* Random keys of the duplicate-id hash, drawn at import so that crafted ids cannot force collisions. */
static uint64_t hash_keys[5];

/* Bytes of the canonical name form [a-z][a-z0-9_.:]* after the first: 1 if allowed. */
static uint8_t name_tail[256];

/* -- wire format ------------------------------------------------------------------------------- */

/* A varint at *pp: returns its length (1..10) and stores its value modulo 2^64, 0 if the input ends
 * inside it, -1 if it runs past 10 bytes. */
static inline int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    ptrdiff_t avail = end - p;
    uint64_t v = 0;
    int i;
    for (i = 0; i < 10; i++) {
        uint8_t b;
        if (i >= avail)
            return 0;
        b = p[i];
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            *pp = p + i + 1;
            return i + 1;
        }
    }
    return -1;
}

/* The next field at *pp (< end). Encodings that parse but are not minimal set *slow. */
static inline int next_field(const uint8_t **pp, const uint8_t *end, field_t *f, int *slow)
{
    const uint8_t *p = *pp;
    uint64_t tag, len;
    int n;

    if (*p < 0x80) {
        tag = *p++;
    } else {
        n = read_varint(&p, end, &tag);
        if (n == 0)
            return SCAN_BROKEN;
        if (n < 0 || n > 5 || tag > UINT32_MAX)
            return SCAN_UNCERTAIN;
        if (p[-1] == 0)
            *slow = 1;
    }
    f->num = (uint32_t)(tag >> 3);
    f->wt = (uint32_t)(tag & 7);
    if (f->num == 0)
        return SCAN_UNCERTAIN;
    switch (f->wt) {
    case 0:
        if (p < end && *p < 0x80) {
            f->val = *p++;
            break;
        }
        n = read_varint(&p, end, &f->val);
        if (n <= 0)
            return SCAN_BROKEN; /* truncated, or longer than 10 bytes */
        if (n == 10 && p[-1] > 1)
            return SCAN_UNCERTAIN; /* overflows 64 bits */
        if (n > 1 && p[-1] == 0)
            *slow = 1;
        break;
    case 1:
        if (end - p < 8)
            return SCAN_BROKEN;
        f->data = p;
        f->len = 8;
        p += 8;
        break;
    case 5:
        if (end - p < 4)
            return SCAN_BROKEN;
        f->data = p;
        f->len = 4;
        p += 4;
        break;
    case 2:
        if (p < end && *p < 0x80) {
            len = *p++;
        } else {
            n = read_varint(&p, end, &len);
            if (n == 0)
                return SCAN_BROKEN;
            if (n < 0 || n > 5)
                return SCAN_UNCERTAIN;
            if (p[-1] == 0)
                *slow = 1;
        }
        if (len > (uint64_t)(end - p))
            return SCAN_BROKEN;
        f->data = p;
        f->len = (size_t)len;
        p += (size_t)len;
        break;
    default:
        return SCAN_UNCERTAIN; /* groups, 6, 7 */
    }
    *pp = p;
    return SCAN_OK;
}

/* -- text ---------------------------------------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF, nothing truncated): the number
 * of code points, or -1. */
static int64_t utf8_chars(const uint8_t *s, size_t n)
{
    size_t i = 0;
    int64_t extra = 0;
    while (i < n) {
        uint8_t c, c1;
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & UINT64_C(0x8080808080808080))) {
                i += 8;
                continue;
            }
        }
        c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2)
            return -1;
        if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80)
                return -1;
            i += 2;
            extra += 1;
            continue;
        }
        if (c < 0xF0) {
            if (n - i < 3)
                return -1;
            c1 = s[i + 1];
            if (c == 0xE0) {
                if (c1 < 0xA0 || c1 > 0xBF)
                    return -1;
            } else if (c == 0xED) {
                if (c1 < 0x80 || c1 > 0x9F)
                    return -1;
            } else if ((c1 & 0xC0) != 0x80) {
                return -1;
            }
            if ((s[i + 2] & 0xC0) != 0x80)
                return -1;
            i += 3;
            extra += 2;
            continue;
        }
        if (c < 0xF5) {
            if (n - i < 4)
                return -1;
            c1 = s[i + 1];
            if (c == 0xF0) {
                if (c1 < 0x90 || c1 > 0xBF)
                    return -1;
            } else if (c == 0xF4) {
                if (c1 < 0x80 || c1 > 0x8F)
                    return -1;
            } else if ((c1 & 0xC0) != 0x80) {
                return -1;
            }
            if ((s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
                return -1;
            i += 4;
            extra += 3;
            continue;
        }
        return -1;
    }
    return (int64_t)n - extra;
}

/* A known string field: SCAN_BROKEN if it is not UTF-8; slow unless it has lo..hi code points. */
static inline int str_field(const field_t *f, int64_t lo, int64_t hi, int *slow)
{
    int64_t chars = utf8_chars(f->data, f->len);
    if (chars < 0)
        return SCAN_BROKEN;
    if (chars < lo || chars > hi)
        *slow = 1;
    return SCAN_OK;
}

/* [a-z][a-z0-9_.:]* : the form normalize_action and normalize_device_type leave unchanged. */
static inline int is_canonical_name(const uint8_t *s, size_t n)
{
    size_t i;
    if (n == 0 || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (i = 1; i < n; i++)
        if (!name_tail[s[i]])
            return 0;
    return 1;
}

static inline int is_upper_ascii(uint8_t c)
{
    return c >= 'A' && c <= 'Z';
}

static inline int is_lower_ascii(uint8_t c)
{
    return c >= 'a' && c <= 'z';
}

/* [a-z]{2,3}, then optionally -Xxxx (script), then optionally -XX (region): the forms
 * normalize_locale leaves unchanged (en, en-US, zh-Hant, zh-Hant-TW). */
static int is_canonical_locale(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n && is_lower_ascii(s[i]))
        i++;
    if (i < 2 || i > 3)
        return 0;
    if (i == n)
        return 1;
    if (s[i] != '-')
        return 0;
    i++;
    if (n - i >= 4 && is_upper_ascii(s[i]) && is_lower_ascii(s[i + 1]) && is_lower_ascii(s[i + 2]) &&
        is_lower_ascii(s[i + 3]) && (n - i == 4 || s[i + 4] == '-')) {
        i += 4;
        if (i == n)
            return 1;
        i++;
    }
    return n - i == 2 && is_upper_ascii(s[i]) && is_upper_ascii(s[i + 1]);
}

static inline int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* 8-4-4-4-12 hex digits, either case: 1 and the 128-bit value, or 0. */
static int parse_uuid(const uint8_t *s, size_t n, uint64_t *hi, uint64_t *lo)
{
    uint64_t h = 0, l = 0;
    int digits = 0;
    size_t i;
    if (n != 36)
        return 0;
    for (i = 0; i < 36; i++) {
        int v;
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
            continue;
        }
        v = hexval(s[i]);
        if (v < 0)
            return 0;
        if (digits < 16)
            h = h << 4 | (uint64_t)v;
        else
            l = l << 4 | (uint64_t)v;
        digits++;
    }
    *hi = h;
    *lo = l;
    return 1;
}

static inline int add_overflows(int64_t a, int64_t b, int64_t *out)
{
    if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b))
        return 1;
    *out = a + b;
    return 0;
}

/* -- messages ------------------------------------------------------------------------------------ */

/* One entry of a map<string, string>: key = 1, value = 2. */
static int scan_map_entry(const ctx_t *c, const field_t *e, map_t *m, int *slow)
{
    const uint8_t *p = e->data, *end = e->data + e->len;
    const uint8_t *key = NULL;
    size_t klen = 0;
    unsigned seen = 0;
    int64_t i;
    field_t f;
    int r;

    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.wt != 2 || (f.num != MAP_KEY_FIELD && f.num != MAP_VALUE_FIELD)) {
            *slow = 1; /* unknown field, or a known one with another wire type (unknown to upb) */
            continue;
        }
        if (seen & FIELD_BIT(f.num))
            *slow = 1;
        seen |= FIELD_BIT(f.num);
        if (f.num == MAP_KEY_FIELD) {
            if ((r = str_field(&f, 1, c->max_name_chars, slow)) != SCAN_OK)
                return r;
            key = f.data;
            klen = f.len;
        } else if ((r = str_field(&f, 0, c->max_text_chars, slow)) != SCAN_OK) {
            return r;
        }
    }
    m->n++;
    /* Both key and value on the wire: upb writes both back, so ByteSize() stays within the raw size. */
    if (seen != MAP_ENTRY_BITS)
        *slow = 1;
    if (*slow)
        return SCAN_OK;
    if (m->n > c->max_map_entries || m->n > MAP_KEYS_MAX) {
        *slow = 1;
        return SCAN_OK;
    }
    for (i = 0; i < m->n - 1; i++) {
        if (m->klen[i] == klen && memcmp(m->key[i], key, klen) == 0) {
            *slow = 1; /* a repeated key: the Python map keeps the last one */
            return SCAN_OK;
        }
    }
    m->key[m->n - 1] = key;
    m->klen[m->n - 1] = klen;
    return SCAN_OK;
}

static int scan_target(const ctx_t *c, const field_t *t, int *slow)
{
    const uint8_t *p = t->data, *end = t->data + t->len;
    unsigned seen = 0;
    map_t attrs;
    field_t f;
    int r;

    attrs.n = 0;
    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.wt != 2 || f.num > TARGET_MAX_FIELD) {
            *slow = 1;
            continue;
        }
        if (f.num != TARGET_ATTRIBUTES_FIELD) {
            if (seen & FIELD_BIT(f.num))
                *slow = 1;
            seen |= FIELD_BIT(f.num);
        }
        switch (f.num) {
        case TARGET_TYPE_FIELD:
            r = str_field(&f, 1, c->max_name_chars, slow);
            break;
        case TARGET_ID_FIELD:
            r = str_field(&f, 1, c->max_id_chars, slow);
            break;
        default: /* TARGET_ATTRIBUTES_FIELD */
            r = scan_map_entry(c, &f, &attrs, slow);
            break;
        }
        if (r != SCAN_OK)
            return r;
    }
    if ((seen & TARGET_REQUIRED_BITS) != TARGET_REQUIRED_BITS)
        *slow = 1; /* type or id missing */
    return SCAN_OK;
}

static int scan_user(const ctx_t *c, const field_t *u, int *slow)
{
    const uint8_t *p = u->data, *end = u->data + u->len;
    unsigned seen = 0;
    int any_id = 0;
    map_t identities;
    field_t f;
    int r;

    identities.n = 0;
    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.wt != 2 || f.num > USER_MAX_FIELD) {
            *slow = 1;
            continue;
        }
        if (f.num != USER_IDENTITIES_FIELD) { /* session_id, anonymous_id, user_id */
            if (seen & FIELD_BIT(f.num))
                *slow = 1;
            seen |= FIELD_BIT(f.num);
            r = str_field(&f, 0, c->max_id_chars, slow);
            if (f.len)
                any_id = 1;
        } else {
            r = scan_map_entry(c, &f, &identities, slow);
        }
        if (r != SCAN_OK)
            return r;
    }
    if (!any_id)
        *slow = 1;
    return SCAN_OK;
}

static int scan_metadata(const ctx_t *c, const field_t *md, int *slow)
{
    const uint8_t *p = md->data, *end = md->data + md->len;
    unsigned seen = 0;
    int has_price = 0;
    size_t currency_len = 0;
    map_t custom;
    field_t f;
    int r;

    custom.n = 0;
    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.num > METADATA_MAX_FIELD ||
            f.wt != ((f.num == METADATA_QUANTITY_FIELD || f.num == METADATA_PRICE_FIELD) ? 0u : 2u)) {
            *slow = 1;
            continue;
        }
        if (f.num != METADATA_CUSTOM_FIELD) {
            if (seen & FIELD_BIT(f.num))
                *slow = 1;
            seen |= FIELD_BIT(f.num);
        }
        r = SCAN_OK;
        switch (f.num) {
        case METADATA_LOCALE_FIELD:
            if (!is_canonical_locale(f.data, f.len) || (int64_t)f.len > c->max_name_chars) {
                if (f.len)
                    *slow = 1;
                r = str_field(&f, 0, c->max_name_chars, slow);
            }
            break;
        case METADATA_DEVICE_TYPE_FIELD:
            if (f.len && (!is_canonical_name(f.data, f.len) || (int64_t)f.len > c->max_name_chars)) {
                *slow = 1;
                r = str_field(&f, 0, 0, slow);
            }
            break;
        case METADATA_QUANTITY_FIELD:
            if (f.val == 0 || f.val > (uint64_t)INT64_MAX)
                *slow = 1;
            break;
        case METADATA_PRICE_FIELD:
            if (f.val > (uint64_t)INT64_MAX)
                *slow = 1;
            has_price = 1;
            break;
        case METADATA_CURRENCY_FIELD:
            currency_len = f.len;
            if (f.len == 0)
                break;
            if (f.len == 3 && f.data[0] >= 'A' && f.data[0] <= 'Z' && f.data[1] >= 'A' &&
                f.data[1] <= 'Z' && f.data[2] >= 'A' && f.data[2] <= 'Z') {
                unsigned code = (unsigned)(f.data[0] - 'A') * 676u + (unsigned)(f.data[1] - 'A') * 26u +
                                (unsigned)(f.data[2] - 'A');
                if (c->currencies[code >> 3] & (1u << (code & 7)))
                    break;
            }
            *slow = 1;
            r = str_field(&f, 0, 0, slow);
            break;
        case METADATA_ORDER_ID_FIELD:
            r = str_field(&f, 0, c->max_id_chars, slow);
            break;
        case METADATA_PAGE_URL_FIELD:
        case METADATA_REFERRER_FIELD:
        case METADATA_USER_AGENT_FIELD:
        case METADATA_QUERY_FIELD:
            r = str_field(&f, 0, c->max_text_chars, slow);
            break;
        default: /* METADATA_CUSTOM_FIELD */
            r = scan_map_entry(c, &f, &custom, slow);
            break;
        }
        if (r != SCAN_OK)
            return r;
    }
    if (has_price && currency_len == 0)
        *slow = 1;
    return SCAN_OK;
}

/* Source: type, name and variant are strings; position and result_count are uint32 varints. */
static int scan_source(const ctx_t *c, const field_t *s, int *slow)
{
    const uint8_t *p = s->data, *end = s->data + s->len;
    unsigned seen = 0;
    field_t f;
    int r;

    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.num > SOURCE_MAX_FIELD ||
            f.wt != ((f.num == SOURCE_POSITION_FIELD || f.num == SOURCE_RESULT_COUNT_FIELD) ? 0u : 2u)) {
            *slow = 1;
            continue;
        }
        if (seen & FIELD_BIT(f.num))
            *slow = 1;
        seen |= FIELD_BIT(f.num);
        r = SCAN_OK;
        switch (f.num) {
        case SOURCE_TYPE_FIELD:
            if (f.len && (!is_canonical_name(f.data, f.len) || (int64_t)f.len > c->max_name_chars)) {
                *slow = 1;
                r = str_field(&f, 0, 0, slow);
            }
            break;
        case SOURCE_NAME_FIELD:
        case SOURCE_VARIANT_FIELD:
            r = str_field(&f, 0, c->max_name_chars, slow);
            break;
        default: /* SOURCE_POSITION_FIELD, SOURCE_RESULT_COUNT_FIELD */
            if (f.val > UINT32_MAX)
                *slow = 1; /* upb truncates it to 32 bits; Python writes the value back as it reads it */
            break;
        }
        if (r != SCAN_OK)
            return r;
    }
    return SCAN_OK;
}

/* google.protobuf.Timestamp: seconds = 1 (int64), nanos = 2 (int32). */
static int scan_timestamp(const ctx_t *c, const field_t *t, int *slow)
{
    const uint8_t *p = t->data, *end = t->data + t->len;
    unsigned seen = 0;
    uint64_t seconds = 0, nanos = 0;
    int64_t at, ahead;
    field_t f;
    int r;

    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.wt != 0 || f.num > TIMESTAMP_MAX_FIELD) {
            *slow = 1;
            continue;
        }
        if (seen & FIELD_BIT(f.num))
            *slow = 1;
        seen |= FIELD_BIT(f.num);
        if (f.num == TIMESTAMP_SECONDS_FIELD)
            seconds = f.val;
        else
            nanos = f.val;
    }
    if (*slow)
        return SCAN_OK;
    if (seconds == 0 || seconds > (uint64_t)(INT64_MAX / NANOS_PER_SECOND) ||
        nanos >= (uint64_t)NANOS_PER_SECOND) {
        *slow = 1; /* not after 1970, bad nanos, or too far ahead for any sensible limit */
        return SCAN_OK;
    }
    /* ahead = seconds * 1e9 + nanos + skew - received, every step checked for overflow */
    if (add_overflows((int64_t)seconds * NANOS_PER_SECOND, (int64_t)nanos, &at) ||
        add_overflows(at, c->skew_ns, &ahead) || c->received_ns == INT64_MIN ||
        add_overflows(ahead, -c->received_ns, &ahead) || ahead > c->max_future_ns)
        *slow = 1;
    return SCAN_OK;
}

/* The id of an activity as upb reads it: the last field 1 of wire type 2. */
typedef struct {
    int present;  /* a field 1 of wire type 2 is on the wire */
    int uuid;     /* ... and its last occurrence is a UUID, of value hi:lo */
    uint64_t hi, lo;
} act_id_t;

static int scan_activity(const ctx_t *c, const uint8_t *p, const uint8_t *end, int *slow, act_id_t *id)
{
    unsigned seen = 0;
    int64_t segments = 0;
    int has_source_id = 0;
    field_t f;
    int r;

    id->present = 0;
    id->uuid = 0;
    if (end - p > c->max_activity_bytes)
        *slow = 1;
    while (p < end) {
        if ((r = next_field(&p, end, &f, slow)) != SCAN_OK)
            return r;
        if (f.wt != 2 || f.num > ACTIVITY_MAX_FIELD) {
            *slow = 1;
            continue;
        }
        if (f.num != ACTIVITY_SEGMENTS_FIELD) {
            if (seen & FIELD_BIT(f.num))
                *slow = 1;
            seen |= FIELD_BIT(f.num);
        }
        r = SCAN_OK;
        switch (f.num) {
        case ACTIVITY_ID_FIELD: /* a UUID; an empty id field on the wire is left to Python */
            id->present = 1;
            id->uuid = parse_uuid(f.data, f.len, &id->hi, &id->lo);
            if (!id->uuid) {
                *slow = 1;
                r = str_field(&f, 0, 0, slow);
            }
            break;
        case ACTIVITY_ACTION_FIELD:
            if (!is_canonical_name(f.data, f.len) || (int64_t)f.len > c->max_name_chars) {
                *slow = 1;
                r = str_field(&f, 0, 0, slow);
            }
            break;
        case ACTIVITY_TARGET_FIELD:
            r = scan_target(c, &f, slow);
            break;
        case ACTIVITY_USER_FIELD:
            r = scan_user(c, &f, slow);
            break;
        case ACTIVITY_SOURCE_ID_FIELD:
            has_source_id = f.len > 0;
            r = str_field(&f, 0, c->max_id_chars, slow);
            break;
        case ACTIVITY_SOURCE_FIELD:
            r = scan_source(c, &f, slow);
            break;
        case ACTIVITY_METADATA_FIELD:
            r = scan_metadata(c, &f, slow);
            break;
        case ACTIVITY_SEGMENTS_FIELD:
            segments++;
            r = str_field(&f, 1, c->max_name_chars, slow);
            break;
        default: /* ACTIVITY_OCCURRED_AT_FIELD */
            r = scan_timestamp(c, &f, slow);
            break;
        }
        if (r != SCAN_OK)
            return r;
    }
    if ((seen & ACTIVITY_REQUIRED_BITS) != ACTIVITY_REQUIRED_BITS) /* action, target, user */
        *slow = 1;
    if (segments > c->max_segments)
        *slow = 1;
    if ((seen & FIELD_BIT(ACTIVITY_SOURCE_FIELD)) && !has_source_id)
        *slow = 1; /* a source without the source_id it describes: Python rejects it */
    return SCAN_OK;
}

/* -- check --------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t hi, lo;
    uint32_t used;
} slot_t;

static inline uint64_t uuid_hash(uint64_t hi, uint64_t lo)
{
    /* multiply-add-shift over 32-bit pieces, with random keys: universal, so no crafted collisions */
    return hash_keys[0] * (hi >> 32) + hash_keys[1] * (hi & 0xffffffffu) + hash_keys[2] * (lo >> 32) +
           hash_keys[3] * (lo & 0xffffffffu) + hash_keys[4];
}

static int get_limit(PyObject *limits, Py_ssize_t i, int64_t *out)
{
    PyObject *item = PyTuple_GET_ITEM(limits, i);
    long long v;
    int overflow = 0;
    if (!PyLong_Check(item)) {
        PyErr_Format(PyExc_TypeError, "limits[%zd] must be an int", i);
        return -1;
    }
    v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    /* Out-of-range limits are clamped toward the stricter side: the filter stays conservative. */
    if (overflow > 0)
        v = LLONG_MAX;
    else if (overflow < 0)
        v = LLONG_MIN;
    *out = (int64_t)v;
    return 0;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The currency lookup of the last call, rebuilt only when the codes change. Every call holds the GIL
 * from start to end, so the cache needs no lock. */
static uint8_t currency_bitmap[(26 * 26 * 26 + 7) / 8];
static char *currency_codes;
static Py_ssize_t currency_codes_len = -1;

static int load_currencies(const char *cur, Py_ssize_t len)
{
    uint8_t bitmap[sizeof currency_bitmap];
    char *copy;
    Py_ssize_t i;

    if (len == currency_codes_len && memcmp(cur, currency_codes, (size_t)len) == 0)
        return 0;
    if (len % 3) {
        PyErr_SetString(PyExc_ValueError, "currencies must be a concatenation of three-letter codes");
        return -1;
    }
    memset(bitmap, 0, sizeof bitmap);
    for (i = 0; i < len; i += 3) {
        unsigned code;
        if (cur[i] < 'A' || cur[i] > 'Z' || cur[i + 1] < 'A' || cur[i + 1] > 'Z' || cur[i + 2] < 'A' ||
            cur[i + 2] > 'Z') {
            PyErr_SetString(PyExc_ValueError, "currencies must hold upper-case letters A-Z only");
            return -1;
        }
        code = (unsigned)(cur[i] - 'A') * 676u + (unsigned)(cur[i + 1] - 'A') * 26u + (unsigned)(cur[i + 2] - 'A');
        bitmap[code >> 3] |= (uint8_t)(1u << (code & 7));
    }
    copy = (char *)PyMem_Malloc(len ? (size_t)len : 1);
    if (!copy) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, cur, (size_t)len);
    PyMem_Free(currency_codes);
    currency_codes = copy;
    currency_codes_len = len;
    memcpy(currency_bitmap, bitmap, sizeof bitmap);
    return 0;
}

PyDoc_STRVAR(check_doc,
             "check(raw, activities_field, limits, currencies, received_ns, skew_ns)\n"
             "    -> (fast, slow, dups, missing_ids, count)\n\n"
             "Sort the activities of the serialized request `raw` (field `activities_field`) into those\n"
             "certainly valid and canonical (`fast`: packed little-endian uint32 triples index, start,\n"
             "end of the activity bytes in raw), those for the Python path (`slow`: list of (index,\n"
             "start, end)) and duplicate ids (`dups`: list of indexes). `limits` is (max_activity_bytes,\n"
             "max_id_chars, max_name_chars, max_text_chars, max_map_entries, max_segments,\n"
             "max_future_ns); `currencies` the concatenated upper-case ISO 4217 codes. `missing_ids` is\n"
             "the number of fast activities without an id, `count` the number of activities.\n"
             "ValueError: broken top-level framing, or wire constructs this filter leaves to Python.");

static PyObject *fp_check(PyObject *self, PyObject *args)
{
    PyObject *raw_obj, *limits;
    const char *cur;
    Py_ssize_t cur_len;
    int afield;
    long long received_ns, skew_ns;
    ctx_t c;
    const uint8_t *raw, *p, *end;
    size_t raw_len;
    act_t *acts = NULL;
    size_t count = 0, cap = 0, nfast = 0, missing = 0, k;
    slot_t *table = NULL;
    size_t tsize;
    PyObject *fast = NULL, *slow = NULL, *dups = NULL, *result = NULL;

    (void)self;
    if (!PyArg_ParseTuple(args, "O!iO!y#LL:check", &PyBytes_Type, &raw_obj, &afield, &PyTuple_Type, &limits,
                          &cur, &cur_len, &received_ns, &skew_ns))
        return NULL;
    if (afield < 1 || afield > 536870911) {
        PyErr_SetString(PyExc_ValueError, "activities_field must be a field number (1 to 2^29-1)");
        return NULL;
    }
    if (PyTuple_GET_SIZE(limits) != 7) {
        PyErr_SetString(PyExc_ValueError, "limits must be a tuple of 7 ints");
        return NULL;
    }
    if (get_limit(limits, 0, &c.max_activity_bytes) || get_limit(limits, 1, &c.max_id_chars) ||
        get_limit(limits, 2, &c.max_name_chars) || get_limit(limits, 3, &c.max_text_chars) ||
        get_limit(limits, 4, &c.max_map_entries) || get_limit(limits, 5, &c.max_segments) ||
        get_limit(limits, 6, &c.max_future_ns))
        return NULL;
    c.received_ns = (int64_t)received_ns;
    c.skew_ns = (int64_t)skew_ns;

    if (load_currencies(cur, cur_len) < 0)
        return NULL;
    c.currencies = currency_bitmap;

    raw = (const uint8_t *)PyBytes_AS_STRING(raw_obj);
    raw_len = (size_t)PyBytes_GET_SIZE(raw_obj);
    if (raw_len > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "request larger than 4 GiB");
        return NULL;
    }

    /* Pass 1: the top-level framing; every activity's span. */
    p = raw;
    end = raw + raw_len;
    while (p < end) {
        field_t f;
        int ignored = 0;
        if (next_field(&p, end, &f, &ignored) != SCAN_OK) {
            PyErr_SetString(PyExc_ValueError, "the request's top-level framing is broken");
            goto done;
        }
        if (f.num != (uint32_t)afield)
            continue;
        if (f.wt != 2) {
            PyErr_SetString(PyExc_ValueError, "the activities field has a wire type other than 2");
            goto done;
        }
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            act_t *n = (act_t *)realloc(acts, ncap * sizeof *acts);
            if (!n) {
                PyErr_NoMemory();
                goto done;
            }
            acts = n;
            cap = ncap;
        }
        acts[count].start = (uint32_t)(f.data - raw);
        acts[count].end = (uint32_t)(f.data - raw + f.len);
        count++;
    }

    /* Pass 2: every activity, and the duplicate-id rule. */
    for (tsize = 16; tsize < 2 * count; tsize *= 2)
        ;
    table = (slot_t *)calloc(tsize, sizeof *table);
    if (!table) {
        PyErr_NoMemory();
        goto done;
    }
    {
        int bits = 0;
        while (((size_t)1 << bits) < tsize)
            bits++;
        for (k = 0; k < count; k++) {
            act_t *a = &acts[k];
            int is_slow = 0, r;
            act_id_t id;
            r = scan_activity(&c, raw + a->start, raw + a->end, &is_slow, &id);
            if (r == SCAN_UNCERTAIN) {
                PyErr_Format(PyExc_ValueError,
                             "activity %zu holds wire data that only the Python parser can judge", k);
                goto done;
            }
            a->missing = 0;
            a->kind = (r == SCAN_OK && !is_slow) ? K_FAST : K_SLOW;
            /* ids of activities that upb parses, and that are UUIDs, take part in the duplicate rule */
            if (r == SCAN_OK && id.uuid) {
                uint64_t hi = id.hi, lo = id.lo;
                size_t h = (size_t)(uuid_hash(hi, lo) >> (64 - bits));
                for (;;) {
                    slot_t *s = &table[h];
                    if (!s->used) {
                        s->used = 1;
                        s->hi = hi;
                        s->lo = lo;
                        break;
                    }
                    if (s->hi == hi && s->lo == lo) {
                        a->kind = K_DUP;
                        break;
                    }
                    h = (h + 1) & (tsize - 1);
                }
            }
            if (a->kind == K_FAST) {
                nfast++;
                if (!id.present) {
                    a->missing = 1;
                    missing++;
                }
            }
        }
    }

    /* Results. */
    fast = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nfast * 12));
    slow = PyList_New(0);
    dups = PyList_New(0);
    if (!fast || !slow || !dups)
        goto done;
    {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(fast);
        for (k = 0; k < count; k++) {
            act_t *a = &acts[k];
            if (a->kind == K_FAST) {
                put_u32(out, (uint32_t)k);
                put_u32(out + 4, a->start);
                put_u32(out + 8, a->end);
                out += 12;
            } else if (a->kind == K_SLOW) {
                PyObject *t = Py_BuildValue("(nII)", (Py_ssize_t)k, (unsigned int)a->start, (unsigned int)a->end);
                if (!t || PyList_Append(slow, t) < 0) {
                    Py_XDECREF(t);
                    goto done;
                }
                Py_DECREF(t);
            } else {
                PyObject *n = PyLong_FromSize_t(k);
                if (!n || PyList_Append(dups, n) < 0) {
                    Py_XDECREF(n);
                    goto done;
                }
                Py_DECREF(n);
            }
        }
    }
    result = Py_BuildValue("(OOOnn)", fast, slow, dups, (Py_ssize_t)missing, (Py_ssize_t)count);

done:
    Py_XDECREF(fast);
    Py_XDECREF(slow);
    Py_XDECREF(dups);
    free(table);
    free(acts);
    return result;
}

/* -- frame --------------------------------------------------------------------------------------- */

/* 1 if the activity bytes hold a non-empty top-level field 1 (wire type 2), 0 if not, -1 if they do
 * not parse. */
static int has_id(const uint8_t *p, const uint8_t *end)
{
    int found = 0, ignored = 0;
    field_t f;
    while (p < end) {
        if (next_field(&p, end, &f, &ignored) != SCAN_OK)
            return -1;
        if (f.num == ACTIVITY_ID_FIELD && f.wt == 2 && f.len > 0)
            found = 1;
    }
    return found;
}

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* 36-character lower-case text of a UUID v4 made from 16 random bytes. */
static void uuid4_text(const uint8_t *random, char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    int i, j = 0;
    memcpy(b, random, 16);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[b[i] >> 4];
        out[j++] = hex[b[i] & 15];
    }
}

/* The number of (index, start, end) triples in `fast`, or -1 with ValueError when it is not a whole
 * number of them. */
static Py_ssize_t triple_count(const Py_buffer *fast)
{
    if (fast->len % 12) {
        PyErr_SetString(PyExc_ValueError, "fast must be packed (index, start, end) uint32 triples");
        return -1;
    }
    return fast->len / 12;
}

/* The span of triple k, checked to lie within raw: 0, or -1 with ValueError. */
static int triple_span(const uint8_t *fp, size_t k, Py_ssize_t raw_len, uint32_t *start, uint32_t *end)
{
    *start = get_u32(fp + 12 * k + 4);
    *end = get_u32(fp + 12 * k + 8);
    if (*start > *end || *end > (size_t)raw_len) {
        PyErr_Format(PyExc_ValueError, "triple %zu: span %u..%u outside raw", k, *start, *end);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(frame_doc,
             "frame(raw, fast, suffix, random, extras=None) -> (rows, assigned_ids)\n\n"
             "ProtobufList rows of the activities that `fast` (from check) names in `raw`: 0x0a,\n"
             "varint(row length), the activity bytes, an id field (0x0a 0x24 + a UUID v4 made from the\n"
             "next 16 bytes of `random`) when the activity has no id, then `suffix`. Whether an activity\n"
             "has an id is read from its bytes; `extras`, a list of bytes with one item per triple, adds\n"
             "each activity's own fields after the suffix. `assigned_ids` maps index -> assigned id.\n"
             "ValueError: a malformed triple, or fewer than 16 random bytes per activity without id.");

static PyObject *fp_frame(PyObject *self, PyObject *args)
{
    Py_buffer raw, fast, suffix, rnd;
    PyObject *rows = NULL, *assigned = NULL, *result = NULL, *extras = NULL;
    uint8_t *flags = NULL;
    size_t n, k, total = 0, missing = 0;
    const uint8_t *rawp, *fp;
    Py_ssize_t triples;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*|O:frame", &raw, &fast, &suffix, &rnd, &extras))
        return NULL;
    rawp = (const uint8_t *)raw.buf;
    fp = (const uint8_t *)fast.buf;
    if ((triples = triple_count(&fast)) < 0)
        goto done;
    n = (size_t)triples;
    if (extras == Py_None)
        extras = NULL;
    if (extras && (!PyList_Check(extras) || (size_t)PyList_GET_SIZE(extras) != n)) {
        PyErr_SetString(PyExc_ValueError, "extras must be a list of bytes, one per triple");
        goto done;
    }
    flags = (uint8_t *)malloc(n ? n : 1);
    if (!flags) {
        PyErr_NoMemory();
        goto done;
    }
    for (k = 0; k < n; k++) {
        uint32_t start, end;
        size_t row;
        int h;
        if (triple_span(fp, k, raw.len, &start, &end) < 0)
            goto done;
        h = has_id(rawp + start, rawp + end);
        if (h < 0) {
            PyErr_Format(PyExc_ValueError, "triple %zu: the span is not a protobuf message", k);
            goto done;
        }
        flags[k] = (uint8_t)!h;
        missing += (size_t)!h;
        row = (size_t)(end - start) + (h ? 0 : ID_FIELD_BYTES) + (size_t)suffix.len;
        if (extras) {
            PyObject *x = PyList_GET_ITEM(extras, (Py_ssize_t)k);
            if (!PyBytes_Check(x)) {
                PyErr_Format(PyExc_ValueError, "extras[%zu] is not bytes", k);
                goto done;
            }
            row += (size_t)PyBytes_GET_SIZE(x);
        }
        total += 1 + varint_size(row) + row;
    }
    if ((size_t)rnd.len / 16 < missing) {
        PyErr_Format(PyExc_ValueError, "random has %zd bytes; %zu activities without id need %zu", rnd.len,
                     missing, missing * 16);
        goto done;
    }
    rows = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    assigned = PyDict_New();
    if (!rows || !assigned)
        goto done;
    {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(rows);
        const uint8_t *random = (const uint8_t *)rnd.buf;
        for (k = 0; k < n; k++) {
            uint32_t index = get_u32(fp + 12 * k), start = get_u32(fp + 12 * k + 4),
                     end = get_u32(fp + 12 * k + 8);
            size_t len = end - start;
            const char *extra = NULL;
            size_t extra_len = 0;
            if (extras) {
                PyObject *x = PyList_GET_ITEM(extras, (Py_ssize_t)k);
                extra = PyBytes_AS_STRING(x);
                extra_len = (size_t)PyBytes_GET_SIZE(x);
            }
            *out++ = LEN_KEY(ROWS_ENVELOPE_FIELD);
            out = put_varint(out,
                             (uint64_t)(len + (flags[k] ? ID_FIELD_BYTES : 0) + (size_t)suffix.len + extra_len));
            memcpy(out, rawp + start, len);
            out += len;
            if (flags[k]) {
                PyObject *key, *text;
                int err;
                *out++ = LEN_KEY(ACTIVITY_ID_FIELD);
                *out++ = ID_FIELD_BYTES - 2;
                uuid4_text(random, (char *)out);
                random += 16;
                text = PyUnicode_FromStringAndSize((const char *)out, 36);
                out += 36;
                key = PyLong_FromUnsignedLong(index);
                err = !text || !key || PyDict_SetItem(assigned, key, text) < 0;
                Py_XDECREF(text);
                Py_XDECREF(key);
                if (err)
                    goto done;
            }
            memcpy(out, suffix.buf, (size_t)suffix.len);
            out += suffix.len;
            if (extra_len) {
                memcpy(out, extra, extra_len);
                out += extra_len;
            }
        }
    }
    result = PyTuple_Pack(2, rows, assigned);

done:
    Py_XDECREF(rows);
    Py_XDECREF(assigned);
    free(flags);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&fast);
    PyBuffer_Release(&suffix);
    PyBuffer_Release(&rnd);
    return result;
}

/* -- keys ---------------------------------------------------------------------------------------- */

/* Fields of an activity that enrichment looks up, as (message path, field) pairs: target.type,
 * target.id, user.user_id, user.anonymous_id, user.session_id, metadata.user_agent. */
enum { KEY_TARGET_TYPE, KEY_TARGET_ID, KEY_USER_ID, KEY_ANONYMOUS_ID, KEY_SESSION_ID, KEY_USER_AGENT, NKEYS };

static void find_keys(const uint8_t *p, const uint8_t *end, const uint8_t **data, size_t *len)
{
    field_t f, g;
    int ignored = 0;
    while (p < end) {
        const uint8_t *q, *qend;
        if (next_field(&p, end, &f, &ignored) != SCAN_OK)
            return;
        if (f.wt != 2 ||
            (f.num != ACTIVITY_TARGET_FIELD && f.num != ACTIVITY_USER_FIELD && f.num != ACTIVITY_METADATA_FIELD))
            continue;
        q = f.data;
        qend = f.data + f.len;
        while (q < qend) {
            int slot = -1;
            if (next_field(&q, qend, &g, &ignored) != SCAN_OK)
                break;
            if (g.wt != 2)
                continue;
            if (f.num == ACTIVITY_TARGET_FIELD)
                slot = g.num == TARGET_TYPE_FIELD ? KEY_TARGET_TYPE
                       : g.num == TARGET_ID_FIELD ? KEY_TARGET_ID
                                                  : -1;
            else if (f.num == ACTIVITY_USER_FIELD)
                slot = g.num == USER_USER_ID_FIELD        ? KEY_USER_ID
                       : g.num == USER_ANONYMOUS_ID_FIELD ? KEY_ANONYMOUS_ID
                       : g.num == USER_SESSION_ID_FIELD   ? KEY_SESSION_ID
                                                          : -1;
            else
                slot = g.num == METADATA_USER_AGENT_FIELD ? KEY_USER_AGENT : -1;
            if (slot >= 0) {
                data[slot] = g.data;
                len[slot] = g.len;
            }
        }
    }
}

PyDoc_STRVAR(keys_doc,
             "keys(raw, fast) -> list of (target_type, target_id, user_id, anonymous_id, session_id,\n"
             "    user_agent)\n\n"
             "The strings enrichment looks up, for each activity that `fast` (from check) names in `raw`,\n"
             "in the order of `fast`; '' for a field the activity does not carry. The activities must be\n"
             "ones check vouched for (valid UTF-8 in every string).");

static PyObject *fp_keys(PyObject *self, PyObject *args)
{
    Py_buffer raw, fast;
    PyObject *out = NULL, *empty = NULL;
    size_t n, k;
    const uint8_t *rawp, *fp;
    Py_ssize_t triples;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*:keys", &raw, &fast))
        return NULL;
    rawp = (const uint8_t *)raw.buf;
    fp = (const uint8_t *)fast.buf;
    if ((triples = triple_count(&fast)) < 0)
        goto done;
    n = (size_t)triples;
    empty = PyUnicode_FromStringAndSize("", 0);
    out = PyList_New((Py_ssize_t)n);
    if (!empty || !out)
        goto fail;
    for (k = 0; k < n; k++) {
        uint32_t start, end;
        const uint8_t *data[NKEYS] = {0};
        size_t len[NKEYS] = {0};
        PyObject *t;
        int i;
        if (triple_span(fp, k, raw.len, &start, &end) < 0)
            goto fail;
        find_keys(rawp + start, rawp + end, data, len);
        t = PyTuple_New(NKEYS);
        if (!t)
            goto fail;
        PyList_SET_ITEM(out, (Py_ssize_t)k, t);
        for (i = 0; i < NKEYS; i++) {
            PyObject *v;
            if (len[i]) {
                v = PyUnicode_DecodeUTF8((const char *)data[i], (Py_ssize_t)len[i], "strict");
                if (!v)
                    goto fail;
            } else {
                Py_INCREF(empty);
                v = empty;
            }
            PyTuple_SET_ITEM(t, i, v);
        }
    }
    goto done;

fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(empty);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&fast);
    return out;
}

/* -- tracking plans ------------------------------------------------------------------------------ */

/* `plan_compile` turns a tenant's tracking plan (workers.processors.plan) into a program this module
 * runs over the raw bytes of activities `check` vouched for; `plan_screen` sorts them into those that
 * certainly break no rule of the plan (they keep the compiled path) and those the Python plan must
 * judge. The program only ever says "conforms" when the Python plan would find nothing: any rule it
 * cannot evaluate on the bytes is PC_DEFER, and an activity that carries a value for it is judged in
 * Python. Paths are field numbers from Activity down (what the Python side resolved from the
 * descriptors), the last one optionally a map key. Activities check vouched for carry no repeated
 * singular field, no unknown field and no repeated map key, so the first match of a path is its value.
 * `plan_check` runs the same program on one activity the Python path parsed, serialized again: a
 * serialization carries each known field once, before any unknown field (which, sharing a known
 * number, has another wire type, and reads as absent here as in Python). */

#define PLAN_PATH_MAX 8
/* PC_PATTERN_ASCII: a pattern that is a sequence of items, each a set of ASCII characters repeated
 * min..max times (workers.processors.plan_screen.ascii_pattern), matched here rather than by calling
 * Python's re. Each item is a 128-bit set (16 bytes) and min, max as little-endian uint16 (max
 * 0xffff: no bound). No non-ASCII character is in any set, so matching bytes is matching characters. A
 * value longer than PATTERN_ASCII_MAX_LEN bytes is left to Python. */
#define PATTERN_ITEM_BYTES 20
#define PATTERN_ITEMS_MAX 32
#define PATTERN_ASCII_MAX_LEN 256
#define PATTERN_UNBOUNDED 0xffff

enum { PC_REQUIRED = 1, PC_FORBIDDEN, PC_TARGET_TYPES, PC_ENUM_STR, PC_ENUM_NUM, PC_PATTERN, PC_MIN, PC_MAX,
       PC_MAX_LENGTH, PC_DEFER, PC_PATTERN_ASCII, PC_LAST = PC_PATTERN_ASCII };
/* What the last field of a path is, which decides when the value counts as absent (as the Python
 * getters read it: an empty string, a zero without presence, an unset optional, no entry at all). */
enum { PT_STRING = 1, PT_INT64, PT_UINT, PT_UINT_PLAIN, PT_PRESENT, PT_MAP_KEY, PT_LAST = PT_MAP_KEY };

typedef struct {
    int kind;
    int terminal;
    int depth;
    uint32_t nums[PLAN_PATH_MAX];
    char *key;
    Py_ssize_t key_len;
    Py_ssize_t nvalues;
    char **values; /* PC_ENUM_STR, PC_TARGET_TYPES */
    Py_ssize_t *value_lens;
    double *numbers; /* PC_ENUM_NUM */
    double bound;    /* PC_MIN, PC_MAX */
    long long max_length;
    PyObject *matcher; /* PC_PATTERN (and PC_PATTERN_ASCII for long values): called with the value (str);
                          None means no match */
    uint8_t *items;     /* PC_PATTERN_ASCII: nitems items of PATTERN_ITEM_BYTES */
    Py_ssize_t nitems;
    Py_ssize_t fixed_len; /* PC_PATTERN_ASCII whose every item has one count (min == max): the length of
                             every value it matches; -1 otherwise */
} pcheck_t;

typedef struct {
    char *name;
    Py_ssize_t name_len;
    Py_ssize_t ncheck;
    pcheck_t *checks;
} paction_t;

typedef struct {
    int unknown_allow;
    Py_ssize_t nactions;
    paction_t *actions;
} pplan_t;

#define PLAN_CAPSULE "core._fastpath.plan"

static void plan_free(pplan_t *plan)
{
    Py_ssize_t a, c, v;
    if (!plan)
        return;
    for (a = 0; a < plan->nactions; a++) {
        paction_t *act = &plan->actions[a];
        for (c = 0; c < act->ncheck; c++) {
            pcheck_t *chk = &act->checks[c];
            PyMem_Free(chk->key);
            for (v = 0; chk->values && v < chk->nvalues; v++)
                PyMem_Free(chk->values[v]);
            PyMem_Free(chk->values);
            PyMem_Free(chk->value_lens);
            PyMem_Free(chk->numbers);
            Py_XDECREF(chk->matcher);
            PyMem_Free(chk->items);
        }
        PyMem_Free(act->checks);
        PyMem_Free(act->name);
    }
    PyMem_Free(plan->actions);
    PyMem_Free(plan);
}

static void plan_capsule_free(PyObject *capsule)
{
    plan_free((pplan_t *)PyCapsule_GetPointer(capsule, PLAN_CAPSULE));
}

/* A copy of bytes object `b` (PyMem), its length in *len; NULL with an exception set. */
static char *copy_bytes(PyObject *b, Py_ssize_t *len)
{
    char *out;
    if (!PyBytes_Check(b)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return NULL;
    }
    *len = PyBytes_GET_SIZE(b);
    out = PyMem_Malloc((size_t)*len + 1);
    if (!out)
        return (char *)PyErr_NoMemory();
    memcpy(out, PyBytes_AS_STRING(b), (size_t)*len);
    return out;
}

/* One check from (kind, terminal, field numbers, map key or None, argument). */
static int compile_check(PyObject *spec, pcheck_t *chk)
{
    PyObject *nums, *key, *arg;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(spec, "iiOOO:plan check", &chk->kind, &chk->terminal, &nums, &key, &arg))
        return -1;
    if (chk->kind < PC_REQUIRED || chk->kind > PC_LAST || chk->terminal < PT_STRING || chk->terminal > PT_LAST) {
        PyErr_SetString(PyExc_ValueError, "unknown plan check kind or path terminal");
        return -1;
    }
    if (!PyTuple_Check(nums) || (n = PyTuple_GET_SIZE(nums)) < 1 || n > PLAN_PATH_MAX) {
        PyErr_SetString(PyExc_ValueError, "a plan path is a tuple of 1 to 8 field numbers");
        return -1;
    }
    chk->depth = (int)n;
    for (i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(nums, i));
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 1 || v > 536870911) {
            PyErr_SetString(PyExc_ValueError, "a field number is 1 to 2^29 - 1");
            return -1;
        }
        chk->nums[i] = (uint32_t)v;
    }
    if ((chk->terminal == PT_MAP_KEY) != (key != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "a map key goes with a PT_MAP_KEY path, and only there");
        return -1;
    }
    if (key != Py_None && !(chk->key = copy_bytes(key, &chk->key_len)))
        return -1;
    switch (chk->kind) {
    case PC_TARGET_TYPES:
    case PC_ENUM_STR:
    case PC_ENUM_NUM:
        if (!PyTuple_Check(arg)) {
            PyErr_SetString(PyExc_TypeError, "a set of values is a tuple");
            return -1;
        }
        chk->nvalues = PyTuple_GET_SIZE(arg);
        if (chk->kind == PC_ENUM_NUM) {
            chk->numbers = PyMem_Calloc((size_t)chk->nvalues + 1, sizeof(double));
            if (!chk->numbers) {
                PyErr_NoMemory();
                return -1;
            }
            for (i = 0; i < chk->nvalues; i++) {
                chk->numbers[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(arg, i));
                if (chk->numbers[i] == -1.0 && PyErr_Occurred())
                    return -1;
            }
            break;
        }
        chk->values = PyMem_Calloc((size_t)chk->nvalues + 1, sizeof(char *));
        chk->value_lens = PyMem_Calloc((size_t)chk->nvalues + 1, sizeof(Py_ssize_t));
        if (!chk->values || !chk->value_lens) {
            PyErr_NoMemory();
            return -1;
        }
        for (i = 0; i < chk->nvalues; i++)
            if (!(chk->values[i] = copy_bytes(PyTuple_GET_ITEM(arg, i), &chk->value_lens[i])))
                return -1;
        break;
    case PC_MIN:
    case PC_MAX:
        chk->bound = PyFloat_AsDouble(arg);
        if (chk->bound == -1.0 && PyErr_Occurred())
            return -1;
        break;
    case PC_MAX_LENGTH:
        chk->max_length = PyLong_AsLongLong(arg);
        if (chk->max_length == -1 && PyErr_Occurred())
            return -1;
        break;
    case PC_PATTERN:
        if (!PyCallable_Check(arg)) {
            PyErr_SetString(PyExc_TypeError, "a pattern is a callable (a compiled pattern's fullmatch)");
            return -1;
        }
        Py_INCREF(arg);
        chk->matcher = arg;
        break;
    case PC_PATTERN_ASCII: {
        PyObject *items, *matcher;
        Py_ssize_t len;
        if (!PyArg_ParseTuple(arg, "SO:ascii pattern", &items, &matcher))
            return -1;
        len = PyBytes_GET_SIZE(items);
        if (!len || len % PATTERN_ITEM_BYTES || len / PATTERN_ITEM_BYTES > PATTERN_ITEMS_MAX ||
            !PyCallable_Check(matcher)) {
            PyErr_SetString(PyExc_ValueError, "an ASCII pattern is (1 to 32 items of 20 bytes, fullmatch)");
            return -1;
        }
        if (!(chk->items = (uint8_t *)copy_bytes(items, &len)))
            return -1;
        chk->nitems = len / PATTERN_ITEM_BYTES;
        chk->fixed_len = 0;
        for (i = 0; i < chk->nitems; i++) {
            const uint8_t *item = chk->items + i * PATTERN_ITEM_BYTES;
            unsigned lo = (unsigned)item[16] | (unsigned)item[17] << 8, hi = (unsigned)item[18] | (unsigned)item[19] << 8;
            if (lo != hi) {
                chk->fixed_len = -1;
                break;
            }
            chk->fixed_len += lo;
        }
        Py_INCREF(matcher);
        chk->matcher = matcher;
        break;
    }
    default:
        break;
    }
    return 0;
}

PyDoc_STRVAR(plan_compile_doc,
             "plan_compile(unknown_allow, actions) -> program\n\n"
             "A tracking plan as a program for plan_screen. `actions` is a list of (action name as bytes,\n"
             "list of checks); a check is (kind, terminal, field numbers, map key or None, argument).");

static PyObject *fp_plan_compile(PyObject *self, PyObject *args)
{
    int unknown_allow;
    PyObject *actions, *capsule;
    pplan_t *plan;
    Py_ssize_t a, c;

    (void)self;
    if (!PyArg_ParseTuple(args, "pO!:plan_compile", &unknown_allow, &PyList_Type, &actions))
        return NULL;
    plan = PyMem_Calloc(1, sizeof *plan);
    if (!plan)
        return PyErr_NoMemory();
    plan->unknown_allow = unknown_allow;
    plan->actions = PyMem_Calloc((size_t)PyList_GET_SIZE(actions) + 1, sizeof(paction_t));
    if (!plan->actions) {
        PyErr_NoMemory();
        goto fail;
    }
    for (a = 0; a < PyList_GET_SIZE(actions); a++) {
        paction_t *act = &plan->actions[a];
        PyObject *name, *checks;
        plan->nactions = a + 1;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(actions, a), "SO!:plan action", &name, &PyList_Type, &checks))
            goto fail;
        if (!(act->name = copy_bytes(name, &act->name_len)))
            goto fail;
        act->checks = PyMem_Calloc((size_t)PyList_GET_SIZE(checks) + 1, sizeof(pcheck_t));
        if (!act->checks) {
            PyErr_NoMemory();
            goto fail;
        }
        for (c = 0; c < PyList_GET_SIZE(checks); c++) {
            act->ncheck = c + 1;
            if (compile_check(PyList_GET_ITEM(checks, c), &act->checks[c]) < 0)
                goto fail;
        }
    }
    capsule = PyCapsule_New(plan, PLAN_CAPSULE, plan_capsule_free);
    if (!capsule)
        goto fail;
    return capsule;
fail:
    plan_free(plan);
    return NULL;
}

/* The value at a check's path in one activity. */
typedef struct {
    int present;
    const uint8_t *data; /* string values */
    size_t len;
    uint64_t val; /* integer values */
} pvalue_t;

/* The first occurrence of each top-level field of one activity numbered below PLAN_TOP_FIELDS, found in
 * one pass, so that the checks of an action (ten paths, most under user, metadata or target) do not
 * each scan the activity from its start again. */
#define PLAN_TOP_FIELDS 32
typedef struct {
    uint32_t seen;
    field_t f[PLAN_TOP_FIELDS];
} ptop_t;

/* The first occurrence of each field numbered below PLAN_TOP_FIELDS of one submessage (the user, the
 * target, the metadata, ...), found as the checks ask for them: a scan goes on from where the last
 * one stopped and records every field it passes, so that the checks of one submessage read each of
 * its fields once, and once it has reached the end a field the submessage lacks costs nothing more. */
typedef struct {
    uint32_t num; /* the top-level field it is the first occurrence of */
    uint32_t seen;
    const uint8_t *p, *end; /* what is left to scan */
    field_t f[PLAN_TOP_FIELDS];
} psub_t;

/* The top-level index, and the submessages the checks went into. */
#define PLAN_SUBS 6
typedef struct {
    ptop_t top;
    int nsub;
    psub_t sub[PLAN_SUBS];
} pindex_t;

static void index_top(const uint8_t *p, const uint8_t *end, ptop_t *top)
{
    field_t f;
    int ignored = 0;
    top->seen = 0;
    while (p < end) {
        if (next_field(&p, end, &f, &ignored) != SCAN_OK)
            return; /* as a scan would: nothing past broken framing is found */
        if (f.num < PLAN_TOP_FIELDS && !(top->seen & (1u << f.num))) {
            top->seen |= 1u << f.num;
            top->f[f.num] = f;
        }
    }
}

/* The submessage `f` (the first occurrence of top-level field `num`, length-delimited) as the checks
 * read it; NULL when every slot is taken (the caller scans instead). */
static psub_t *sub_of(pindex_t *ix, uint32_t num, const field_t *f)
{
    int s;
    psub_t *sub;
    for (s = 0; s < ix->nsub; s++)
        if (ix->sub[s].num == num)
            return &ix->sub[s];
    if (ix->nsub == PLAN_SUBS)
        return NULL;
    sub = &ix->sub[ix->nsub++];
    sub->num = num;
    sub->seen = 0;
    sub->p = f->data;
    sub->end = f->data + f->len;
    return sub;
}

/* The first occurrence of field `num` (below PLAN_TOP_FIELDS) in `sub`, in *out; 0: there is none
 * (before broken framing, past which a scan finds nothing). */
static int sub_field(psub_t *sub, uint32_t num, field_t *out)
{
    field_t f;
    int ignored = 0;
    if (sub->seen & (1u << num)) {
        *out = sub->f[num];
        return 1;
    }
    while (sub->p < sub->end) {
        if (next_field(&sub->p, sub->end, &f, &ignored) != SCAN_OK) {
            sub->p = sub->end;
            return 0;
        }
        if (f.num < PLAN_TOP_FIELDS && !(sub->seen & (1u << f.num))) {
            sub->seen |= 1u << f.num;
            sub->f[f.num] = f;
            if (f.num == num) {
                *out = f;
                return 1;
            }
        }
    }
    return 0;
}

/* The value of the path's last field `f`. 1: found or certainly absent; 0: a map entry with another
 * key, look further. */
static int path_terminal(const pcheck_t *chk, const field_t *f, pvalue_t *out)
{
    int ignored = 0;
    switch (chk->terminal) {
    case PT_STRING:
        if (f->wt == 2 && f->len) {
            out->present = 1;
            out->data = f->data;
            out->len = f->len;
        }
        return 1;
    case PT_INT64:
    case PT_UINT:
    case PT_UINT_PLAIN:
        if (f->wt == 0 && (chk->terminal != PT_UINT_PLAIN || f->val)) {
            out->present = 1;
            out->val = f->val;
        }
        return 1;
    case PT_PRESENT: /* a message, a map or a list of strings: length-delimited, whatever else it is */
        out->present = f->wt == 2;
        return 1;
    default: { /* PT_MAP_KEY: this entry's value, when its key is the one looked for */
        const uint8_t *q, *qend, *value = NULL;
        size_t value_len = 0;
        int key_matches = 0;
        field_t g;
        if (f->wt != 2)
            return 0; /* an unknown field sharing the map's number, which holds no entry */
        q = f->data;
        qend = f->data + f->len;
        while (q < qend) {
            if (next_field(&q, qend, &g, &ignored) != SCAN_OK || g.wt != 2)
                break;
            if (g.num == MAP_KEY_FIELD)
                key_matches = g.len == (size_t)chk->key_len && memcmp(g.data, chk->key, g.len) == 0;
            else if (g.num == MAP_VALUE_FIELD) {
                value = g.data;
                value_len = g.len;
            }
        }
        if (!key_matches)
            return 0;
        if (value_len) {
            out->present = 1;
            out->data = value;
            out->len = value_len;
        }
        return 1;
    }
    }
}

/* The first field of the path at each level, as a scan from the activity's start finds it; the top
 * level from the index unless the path ends there in a map (whose entries are many fields), the
 * second from the submessage's index (for a map: its first entry, then a scan of what follows). */
static void find_path(const pcheck_t *chk, pindex_t *ix, const uint8_t *p, const uint8_t *end, pvalue_t *out)
{
    int level = 0, ignored = 0;
    field_t f;

    memset(out, 0, sizeof *out);
    if (chk->nums[0] < PLAN_TOP_FIELDS && (chk->depth > 1 || chk->terminal != PT_MAP_KEY)) {
        const ptop_t *top = &ix->top;
        psub_t *sub;
        if (!(top->seen & (1u << chk->nums[0])))
            return;
        f = top->f[chk->nums[0]];
        if (chk->depth == 1) {
            path_terminal(chk, &f, out);
            return;
        }
        if (f.wt != 2)
            return;
        p = f.data;
        end = f.data + f.len;
        level = 1;
        if (chk->nums[1] < PLAN_TOP_FIELDS && (sub = sub_of(ix, chk->nums[0], &f)) != NULL) {
            if (!sub_field(sub, chk->nums[1], &f))
                return;
            if (chk->depth == 2) {
                if (path_terminal(chk, &f, out))
                    return;
                /* a map entry with another key: the entries after it (after a field that is no entry,
                   the submessage from its start: rare, an unknown field) */
                if (f.wt == 2)
                    p = f.data + f.len;
            } else {
                if (f.wt != 2)
                    return;
                p = f.data;
                end = f.data + f.len;
                level = 2;
            }
        }
    }
    for (; level < chk->depth; level++) {
        uint32_t num = chk->nums[level];
        int last = level == chk->depth - 1, found = 0;
        while (p < end) {
            if (next_field(&p, end, &f, &ignored) != SCAN_OK)
                return;
            if (f.num != num)
                continue;
            if (!last) {
                if (f.wt != 2)
                    return;
                found = 1;
                break;
            }
            if (path_terminal(chk, &f, out))
                return;
        }
        if (!found)
            return;
        end = f.data + f.len;
        p = f.data;
    }
}

/* The value of an integer path as Python reads it: int64 fields are two's complement. */
static double int_value(const pcheck_t *chk, const pvalue_t *v, int *exact)
{
    if (chk->terminal == PT_INT64) {
        int64_t s = (int64_t)v->val;
        *exact = s >= -(INT64_C(1) << 53) && s <= (INT64_C(1) << 53);
        return (double)s;
    }
    *exact = v->val <= (UINT64_C(1) << 53);
    return (double)v->val;
}

static int is_int_terminal(int terminal)
{
    return terminal == PT_INT64 || terminal == PT_UINT || terminal == PT_UINT_PLAIN;
}

/* Whether the whole of s[0..len) (len <= PATTERN_ASCII_MAX_LEN) matches the items: the positions each
 * item can end at, from those the item before could, as re.fullmatch finds a match if there is one. */
static int ascii_fullmatch(const uint8_t *items, Py_ssize_t nitems, const uint8_t *s, size_t len)
{
    uint8_t reach[PATTERN_ASCII_MAX_LEN + 1], next[PATTERN_ASCII_MAX_LEN + 1];
    Py_ssize_t it;
    size_t p, k;

    memset(reach, 0, len + 1);
    reach[0] = 1;
    for (it = 0; it < nitems; it++) {
        const uint8_t *item = items + it * PATTERN_ITEM_BYTES, *set = item;
        unsigned lo = (unsigned)item[16] | (unsigned)item[17] << 8, hi = (unsigned)item[18] | (unsigned)item[19] << 8;
        int any = 0;
        memset(next, 0, len + 1);
        for (p = 0; p <= len; p++) {
            if (!reach[p])
                continue;
            for (k = 0;; k++) {
                if (k >= lo) {
                    next[p + k] = 1;
                    any = 1;
                }
                if ((hi != PATTERN_UNBOUNDED && k >= hi) || p + k == len)
                    break;
                if (s[p + k] >= 128 || !(set[s[p + k] >> 3] & (1u << (s[p + k] & 7))))
                    break;
            }
        }
        if (!any)
            return 0;
        memcpy(reach, next, len + 1);
    }
    return reach[len];
}

/* ascii_fullmatch for items that each have one count (min == max), `fixed_len` in all. */
static int ascii_fixed_match(const uint8_t *items, Py_ssize_t nitems, Py_ssize_t fixed_len, const uint8_t *s,
                             size_t len)
{
    Py_ssize_t it;
    size_t p = 0, k;

    if (len != (size_t)fixed_len)
        return 0;
    for (it = 0; it < nitems; it++) {
        const uint8_t *set = items + it * PATTERN_ITEM_BYTES;
        unsigned count = (unsigned)set[16] | (unsigned)set[17] << 8;
        for (k = 0; k < count; k++, p++)
            if (s[p] >= 128 || !(set[s[p] >> 3] & (1u << (s[p] & 7))))
                return 0;
    }
    return 1;
}

/* 1: the activity certainly breaks no rule of `act`; 0: Python must judge it; -1: an exception. */
static int plan_conforms(const paction_t *act, pindex_t *ix, const uint8_t *p, const uint8_t *end)
{
    Py_ssize_t c, i;
    pvalue_t v;

    for (c = 0; c < act->ncheck; c++) {
        const pcheck_t *chk = &act->checks[c];
        int string = chk->terminal == PT_STRING || chk->terminal == PT_MAP_KEY, exact, match;
        double number;
        find_path(chk, ix, p, end, &v);
        switch (chk->kind) {
        case PC_REQUIRED:
            if (!v.present)
                return 0;
            continue;
        case PC_FORBIDDEN:
            if (v.present)
                return 0;
            continue;
        case PC_TARGET_TYPES: /* target.type, which check vouched is there: one of the allowed names */
        case PC_ENUM_STR:
            if (!v.present && chk->kind == PC_TARGET_TYPES)
                return 0;
            if (!v.present)
                continue;
            if (!string)
                return 0;
            for (i = 0; i < chk->nvalues; i++)
                if (chk->value_lens[i] == (Py_ssize_t)v.len && memcmp(chk->values[i], v.data, v.len) == 0)
                    break;
            if (i == chk->nvalues)
                return 0;
            continue;
        case PC_ENUM_NUM:
            if (!v.present)
                continue;
            if (!is_int_terminal(chk->terminal))
                return 0;
            number = int_value(chk, &v, &exact);
            if (!exact)
                return 0;
            for (i = 0; i < chk->nvalues; i++)
                if (chk->numbers[i] == number)
                    break;
            if (i == chk->nvalues)
                return 0;
            continue;
        case PC_MIN:
        case PC_MAX:
            if (!v.present)
                continue;
            if (!is_int_terminal(chk->terminal))
                return 0; /* a string read as a number: Python decides */
            number = int_value(chk, &v, &exact);
            if (!exact || (chk->kind == PC_MIN ? number < chk->bound : number > chk->bound))
                return 0;
            continue;
        case PC_MAX_LENGTH:
            if (!v.present)
                continue;
            if (!string)
                return 0;
            /* a value has at most as many characters as bytes */
            if ((long long)v.len > chk->max_length && utf8_chars(v.data, v.len) > chk->max_length)
                return 0;
            continue;
        case PC_PATTERN_ASCII:
            if (!v.present)
                continue;
            if (!string)
                return 0;
            if (chk->fixed_len >= 0) {
                /* one count per item: the value's every byte is the next item's, and a value of
                   another length in bytes does not match (one of other characters is not ASCII) */
                if (!ascii_fixed_match(chk->items, chk->nitems, chk->fixed_len, v.data, v.len))
                    return 0;
                continue;
            }
            if (v.len <= PATTERN_ASCII_MAX_LEN) {
                if (!ascii_fullmatch(chk->items, chk->nitems, v.data, v.len))
                    return 0;
                continue;
            }
            /* fall through - a long value goes to the pattern itself */
        case PC_PATTERN: {
            PyObject *text, *result;
            if (!v.present)
                continue;
            if (!string)
                return 0;
            text = PyUnicode_DecodeUTF8((const char *)v.data, (Py_ssize_t)v.len, "strict");
            if (!text)
                return -1;
            result = PyObject_CallOneArg(chk->matcher, text);
            Py_DECREF(text);
            if (!result)
                return -1;
            match = result != Py_None;
            Py_DECREF(result);
            if (!match)
                return 0;
            continue;
        }
        default: /* PC_DEFER */
            if (v.present)
                return 0;
            continue;
        }
    }
    return 1;
}

/* The action of an activity check vouched for (canonical, present): its first action field. */
static void find_action(const ptop_t *top, const uint8_t *p, const uint8_t *end, const uint8_t **data, size_t *len)
{
    field_t f;
    int ignored = 0;
    *data = NULL;
    *len = 0;
    if ((top->seen & (1u << ACTIVITY_ACTION_FIELD)) && top->f[ACTIVITY_ACTION_FIELD].wt == 2) {
        *data = top->f[ACTIVITY_ACTION_FIELD].data;
        *len = top->f[ACTIVITY_ACTION_FIELD].len;
        return;
    }
    while (p < end) {
        if (next_field(&p, end, &f, &ignored) != SCAN_OK)
            return;
        if (f.num == ACTIVITY_ACTION_FIELD && f.wt == 2) {
            *data = f.data;
            *len = f.len;
            return;
        }
    }
}

/* 1: the activity at [p, end) certainly breaks no rule of the plan's action named `action` (an action
 * the plan does not list: whether the plan allows unknown actions); 0: Python must judge it; -1: an
 * exception. `action` NULL: the activity's own action field. */
static int plan_verdict(const pplan_t *plan, const uint8_t *action, size_t action_len, const uint8_t *p,
                        const uint8_t *end)
{
    pindex_t ix;
    Py_ssize_t a;
    index_top(p, end, &ix.top);
    ix.nsub = 0;
    if (!action)
        find_action(&ix.top, p, end, &action, &action_len);
    for (a = 0; a < plan->nactions; a++)
        if (plan->actions[a].name_len == (Py_ssize_t)action_len &&
            memcmp(plan->actions[a].name, action, action_len) == 0)
            return plan_conforms(&plan->actions[a], &ix, p, end);
    return plan->unknown_allow;
}

PyDoc_STRVAR(plan_screen_doc,
             "plan_screen(raw, fast, program) -> (conforming, to_judge)\n\n"
             "Sorts the activities `fast` (from check) names in `raw` into those that certainly break no\n"
             "rule of `program` (from plan_compile) and those the Python plan must judge; both packed as\n"
             "`fast` is, in its order.");

static PyObject *fp_plan_screen(PyObject *self, PyObject *args)
{
    Py_buffer raw, fast;
    PyObject *capsule, *ok = NULL, *judge = NULL, *out = NULL;
    const uint8_t *rawp, *fp;
    uint8_t *okp = NULL, *judgep = NULL;
    size_t n, k, nok = 0, njudge = 0;
    Py_ssize_t triples;
    pplan_t *plan;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*O:plan_screen", &raw, &fast, &capsule))
        return NULL;
    if (!(plan = PyCapsule_GetPointer(capsule, PLAN_CAPSULE)))
        goto done;
    if ((triples = triple_count(&fast)) < 0)
        goto done;
    n = (size_t)triples;
    rawp = (const uint8_t *)raw.buf;
    fp = (const uint8_t *)fast.buf;
    for (k = 0; k < n; k++) {
        uint32_t start, end;
        int verdict;
        if (triple_span(fp, k, raw.len, &start, &end) < 0)
            goto done;
        verdict = plan_verdict(plan, NULL, 0, rawp + start, rawp + end);
        if (verdict < 0)
            goto done;
        if (!judge) {
            if (verdict)
                continue; /* the spans so far all conform: nothing to copy yet */
            /* the first span to judge: the ones before it conform */
            ok = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(12 * n));
            judge = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(12 * n));
            if (!ok || !judge)
                goto done;
            okp = (uint8_t *)PyBytes_AS_STRING(ok);
            judgep = (uint8_t *)PyBytes_AS_STRING(judge);
            nok = k;
            memcpy(okp, fp, 12 * nok);
        }
        if (verdict)
            memcpy(okp + 12 * nok++, fp + 12 * k, 12);
        else
            memcpy(judgep + 12 * njudge++, fp + 12 * k, 12);
    }
    if (!judge) {
        /* every span conforms: `fast` itself (a copy unless it is a bytes object), and nothing to judge */
        if (fast.obj && PyBytes_CheckExact(fast.obj)) {
            ok = fast.obj;
            Py_INCREF(ok);
        } else if (!(ok = PyBytes_FromStringAndSize((const char *)fp, (Py_ssize_t)(12 * n)))) {
            goto done;
        }
        if (!(judge = PyBytes_FromStringAndSize(NULL, 0)))
            goto done;
    } else if (_PyBytes_Resize(&ok, (Py_ssize_t)(12 * nok)) < 0 ||
               _PyBytes_Resize(&judge, (Py_ssize_t)(12 * njudge)) < 0) {
        goto done;
    }
    out = PyTuple_Pack(2, ok, judge);
done:
    Py_XDECREF(ok);
    Py_XDECREF(judge);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&fast);
    return out;
}

PyDoc_STRVAR(plan_check_doc,
             "plan_check(program, action, activity) -> bool\n\n"
             "Whether the serialized Activity `activity` certainly breaks no rule that `program` (from\n"
             "plan_compile) has for the action named `action` (bytes: the plan's name for the activity's\n"
             "action, which may be spelled otherwise in the activity; one the plan does not list: whether\n"
             "the plan allows unknown actions). False: the Python plan must judge it.");

static PyObject *fp_plan_check(PyObject *self, PyObject *args)
{
    PyObject *capsule;
    Py_buffer action, activity;
    pplan_t *plan;
    int verdict = -1;

    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*y*:plan_check", &capsule, &action, &activity))
        return NULL;
    if ((plan = PyCapsule_GetPointer(capsule, PLAN_CAPSULE)))
        verdict = plan_verdict(plan, (const uint8_t *)action.buf, (size_t)action.len,
                               (const uint8_t *)activity.buf, (const uint8_t *)activity.buf + activity.len);
    PyBuffer_Release(&action);
    PyBuffer_Release(&activity);
    if (verdict < 0)
        return NULL;
    return PyBool_FromLong(verdict);
}

PyDoc_STRVAR(count_field_doc,
             "count_field(raw, field) -> int\n\n"
             "How many times the top-level field `field` occurs in the serialized message `raw` (the\n"
             "activities of a request), without reading inside any. ValueError: broken framing.");

static PyObject *fp_count_field(PyObject *self, PyObject *args)
{
    Py_buffer raw;
    int num, ignored = 0, broken = 0;
    const uint8_t *p, *end;
    Py_ssize_t count = 0;
    field_t f;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*i:count_field", &raw, &num))
        return NULL;
    p = (const uint8_t *)raw.buf;
    end = p + raw.len;
    while (p < end) {
        if (next_field(&p, end, &f, &ignored) != SCAN_OK) {
            broken = 1;
            break;
        }
        count += f.num == (uint32_t)num;
    }
    PyBuffer_Release(&raw);
    if (broken) {
        PyErr_SetString(PyExc_ValueError, "the message's top-level framing is broken");
        return NULL;
    }
    return PyLong_FromSsize_t(count);
}

/* -- module -------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"check", fp_check, METH_VARARGS, check_doc},
    {"frame", fp_frame, METH_VARARGS, frame_doc},
    {"keys", fp_keys, METH_VARARGS, keys_doc},
    {"plan_compile", fp_plan_compile, METH_VARARGS, plan_compile_doc},
    {"plan_screen", fp_plan_screen, METH_VARARGS, plan_screen_doc},
    {"plan_check", fp_plan_check, METH_VARARGS, plan_check_doc},
    {"count_field", fp_count_field, METH_VARARGS, count_field_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "core._fastpath",
    "C fast path over raw request bytes: check() sorts activities, frame() builds ProtobufList rows.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    PyObject *os, *bytes, *m;
    const char *s;
    int i;

    name_tail['_'] = name_tail['.'] = name_tail[':'] = 1;
    for (i = 'a'; i <= 'z'; i++)
        name_tail[i] = 1;
    for (i = '0'; i <= '9'; i++)
        name_tail[i] = 1;

    os = PyImport_ImportModule("os");
    if (!os)
        return NULL;
    bytes = PyObject_CallMethod(os, "urandom", "i", (int)sizeof hash_keys);
    Py_DECREF(os);
    if (!bytes)
        return NULL;
    if (!PyBytes_Check(bytes) || PyBytes_GET_SIZE(bytes) != (Py_ssize_t)sizeof hash_keys) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_RuntimeError, "os.urandom returned an unexpected value");
        return NULL;
    }
    s = PyBytes_AS_STRING(bytes);
    memcpy(hash_keys, s, sizeof hash_keys);
    Py_DECREF(bytes);
    m = PyModule_Create(&module);
    if (!m)
        return NULL;
    /* The plan program's vocabulary, for core.fastpath to build programs with. */
    if (PyModule_AddIntConstant(m, "PC_REQUIRED", PC_REQUIRED) < 0 ||
        PyModule_AddIntConstant(m, "PC_FORBIDDEN", PC_FORBIDDEN) < 0 ||
        PyModule_AddIntConstant(m, "PC_TARGET_TYPES", PC_TARGET_TYPES) < 0 ||
        PyModule_AddIntConstant(m, "PC_ENUM_STR", PC_ENUM_STR) < 0 ||
        PyModule_AddIntConstant(m, "PC_ENUM_NUM", PC_ENUM_NUM) < 0 ||
        PyModule_AddIntConstant(m, "PC_PATTERN", PC_PATTERN) < 0 ||
        PyModule_AddIntConstant(m, "PC_MIN", PC_MIN) < 0 || PyModule_AddIntConstant(m, "PC_MAX", PC_MAX) < 0 ||
        PyModule_AddIntConstant(m, "PC_MAX_LENGTH", PC_MAX_LENGTH) < 0 ||
        PyModule_AddIntConstant(m, "PC_DEFER", PC_DEFER) < 0 ||
        PyModule_AddIntConstant(m, "PC_PATTERN_ASCII", PC_PATTERN_ASCII) < 0 ||
        PyModule_AddIntConstant(m, "PT_STRING", PT_STRING) < 0 ||
        PyModule_AddIntConstant(m, "PT_INT64", PT_INT64) < 0 || PyModule_AddIntConstant(m, "PT_UINT", PT_UINT) < 0 ||
        PyModule_AddIntConstant(m, "PT_UINT_PLAIN", PT_UINT_PLAIN) < 0 ||
        PyModule_AddIntConstant(m, "PT_PRESENT", PT_PRESENT) < 0 ||
        PyModule_AddIntConstant(m, "PT_MAP_KEY", PT_MAP_KEY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
