/* The uniform coder's inner loops, fused: one pass per block instead of a
 * dozen numpy passes (see weightroll/coders/uniform.py, which falls back to
 * numpy when this module is not built and defines what each loop computes).
 *
 * Values are float32, C order, viewed as `rows` x `width`. Each value is
 * multiplied by its factor `inv` (one for all: mode 0; one per row: mode 1;
 * one per column: mode 2) and rounded half to even, as numpy's `rint` does;
 * levels beyond +-127 (and NaN) are outside the codes. Arithmetic is float32
 * exactly as numpy does it (no fused multiply-add), so codes and decoded values are bit-identical to the
 * numpy path; error sums are accumulated in float64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Each multiplication and subtraction is rounded to float32 on its own, as
 * in numpy: never contracted into a fused multiply-add (GCC ignores the
 * standard pragma; setup.py passes -ffp-contract=off). */
#if defined(_MSC_VER)
#pragma fp_contract(off)
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__GNUC__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define UNLIKELY(x) (x)
#endif

/* The loops are compiled twice where the compiler can (GCC and Clang on
 * x86-64 with glibc): for AVX2 and for the baseline, picked when the module
 * loads. Same results either way: the same float32 operations, in order. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define HALF_RANGE 127
#define LEVELS (2 * HALF_RANGE + 1)

/* The items a buffer must hold: 'f' float32, 'd' float64, 'B' uint8,
 * 'q' int64, native byte order. */
static int
same_format(const char *format, char kind)
{
    if (format == NULL)
        return kind == 'B';
    if (*format == '@' || *format == '=')
        format++;
#if PY_LITTLE_ENDIAN
    else if (*format == '<')
        format++;
#endif
    if (kind == 'q' && sizeof(long) == 8 && format[0] == 'l' && format[1] == '\0')
        return 1;
    return format[0] == kind && format[1] == '\0';
}

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, char kind, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const Py_ssize_t itemsize = kind == 'B' ? 1 : kind == 'f' ? 4 : 8;
    if (view->itemsize != itemsize || !same_format(view->format, kind)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %s items, got format '%s'", name,
                     kind == 'f' ? "float32" : kind == 'd' ? "float64" : kind == 'B' ? "uint8" : "int64",
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int
check_factors(Py_ssize_t count, int mode, Py_ssize_t rows, Py_ssize_t width, const char *name)
{
    Py_ssize_t need = mode == 0 ? 1 : mode == 1 ? rows : width;
    if (mode < 0 || mode > 2 || count != need) {
        PyErr_Format(PyExc_ValueError, "%s: mode %d needs %zd factors, got %zd", name, mode, need, count);
        return -1;
    }
    return 0;
}

/* numpy's rint (round half to even) for |y| <= 2**22, without a libm call
 * (inlined rintf needs SSE4.1): adding and subtracting 1.5 * 2**23 leaves
 * y rounded in the default rounding mode. Larger values (and NaN, infinity)
 * give some value beyond +-127 or NaN: outside the codes either way. */
static inline float
round_even(float y)
{
    const float big = 12582912.0f; /* not folded away: no -ffast-math */
    return (y + big) - big;
}

/* Rows are worked through in segments of at most this many values, each
 * segment's channels consecutive: small arrays that stay in L1 and simple
 * loops that the compiler vectorises. */
#define SEGMENT 256
/* Partial sums per segment: a float64 sum is a chain of dependent
 * additions, and the compiler may not reorder them on its own. */
#define LANES 8

struct segment {
    const float *values;
    Py_ssize_t count;
    const float *factors; /* one per value, or NULL: `factor` for all */
    float factor;
    const float *scales; /* one per value, or NULL: `scale` for all (if has_scale) */
    float scale;
    int has_scale;
};

/* q[i] = the level of value i (rounded value times its factor). */
static inline void
levels_of(const struct segment *g, float *q)
{
    const float *v = g->values;
    if (g->factors) {
        for (Py_ssize_t i = 0; i < g->count; i++)
            q[i] = round_even(v[i] * g->factors[i]);
    } else {
        const float f = g->factor;
        for (Py_ssize_t i = 0; i < g->count; i++)
            q[i] = round_even(v[i] * f);
    }
}

static inline int
any_outside(const float *q, Py_ssize_t count)
{
    int bad = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        bad |= !(fabsf(q[i]) <= (float)HALF_RANGE);
    return bad;
}

/* Walks `rows` x `width` values in segments; `visit(g, channel, state)` gets
 * each, `channel` being the first value's channel ((first + column) %
 * channels, 0 without channels). */
typedef void (*visitor)(const struct segment *g, Py_ssize_t channel, void *state);

static void
walk(const float *xs, Py_ssize_t rows, Py_ssize_t width, const float *fs, const float *sc, int mode,
     Py_ssize_t channels, Py_ssize_t first, visitor visit, void *state)
{
    for (Py_ssize_t r = 0; r < rows; r++) {
        Py_ssize_t channel = channels > 0 ? first % channels : 0;
        for (Py_ssize_t j = 0; j < width;) {
            Py_ssize_t m = width - j < SEGMENT ? width - j : SEGMENT;
            if (channels > 0 && channels - channel < m)
                m = channels - channel;
            struct segment g = {xs + r * width + j, m, NULL, 0.0f, NULL, 1.0f, sc != NULL};
            if (mode == 2) {
                g.factors = fs + j;
                g.scales = sc ? sc + j : NULL;
            } else {
                g.factor = fs[mode == 0 ? 0 : r];
                g.scale = sc ? sc[mode == 0 ? 0 : r] : 1.0f;
            }
            visit(&g, channel, state);
            j += m;
            if (channels > 0) {
                channel += m;
                if (channel == channels)
                    channel = 0;
            }
        }
    }
}

struct level_state {
    int64_t *counts;
    double *sums;
    long long outside;
};

VECTOR_CLONES static void
level_visit(const struct segment *g, Py_ssize_t channel, void *p)
{
    (void)channel;
    struct level_state *st = (struct level_state *)p;
    float q[SEGMENT];
    levels_of(g, q);
    int bad = any_outside(q, g->count);
    for (Py_ssize_t i = 0; i < g->count; i++) {
        if (bad && !(fabsf(q[i]) <= (float)HALF_RANGE)) {
            st->outside++;
            st->counts[HALF_RANGE]++;
            continue;
        }
        int k = (int)q[i] + HALF_RANGE;
        st->counts[k]++;
        /* The scaled value exactly as numpy computes it, summed in order. */
        st->sums[k] += (double)(g->values[i] * (g->factors ? g->factors[i] : g->factor));
    }
}

struct code_state {
    const float *table;
    uint8_t *codes; /* NULL for a trial; else where value 0 of the walk goes */
    float *decoded;
    const float *origin; /* value 0 of the walk: output offsets are from it */
    double *sq_c, *ref_c;
    int want_ref, extremes;
    double sq[LANES], ref[LANES]; /* totals, kept only without channel sums */
    float max_abs;
    int lowest, highest;
    long long outside;
};

/* Squared values to their channel's sum or, with `want_ref` and no
 * channel sums, to the total (the same additions, in the same order, for
 * `code` and `reference`). */
static inline void
add_reference(struct code_state *st, const float *v, Py_ssize_t m, Py_ssize_t channel)
{
    if (st->ref_c) {
        double *sums = st->ref_c + channel;
        for (Py_ssize_t k = 0; k < m; k++)
            sums[k] += (double)v[k] * (double)v[k];
    } else if (st->want_ref) {
        double ref[LANES] = {0.0};
        Py_ssize_t i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int l = 0; l < LANES; l++)
                ref[l] += (double)v[i + l] * (double)v[i + l];
        for (; i < m; i++)
            ref[0] += (double)v[i] * (double)v[i];
        for (int l = 0; l < LANES; l++)
            st->ref[l] += ref[l];
    }
}

/* The errors `v - out` of `m` decoded values: squared, to their channel's
 * sum or (a vector) to the totals; the largest absolute one, with
 * `extremes`; and the values' squares (`add_reference`). */
static inline void
add_errors(struct code_state *st, const float *v, const float *out, Py_ssize_t m, Py_ssize_t channel)
{
    /* Squared errors go to their channel's sum or, for a vector, to the
     * total; the totals of a tensor with channels are the channels' sums. */
    if (st->sq_c) {
        double *sums = st->sq_c + channel;
        for (Py_ssize_t k = 0; k < m; k++) {
            float e = v[k] - out[k];
            sums[k] += (double)e * (double)e;
        }
    } else {
        /* Local partial sums: a single chain of float64 additions waits on itself. */
        double sq[LANES] = {0.0};
        Py_ssize_t i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float e = v[i + l] - out[i + l];
                sq[l] += (double)e * (double)e;
            }
        for (; i < m; i++) {
            float e = v[i] - out[i];
            sq[0] += (double)e * (double)e;
        }
        for (int l = 0; l < LANES; l++)
            st->sq[l] += sq[l];
    }
    if (st->extremes) {
        float max_abs[LANES] = {0.0f};
        Py_ssize_t i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float a = fabsf(v[i + l] - out[i + l]);
                max_abs[l] = a > max_abs[l] ? a : max_abs[l];
            }
        for (; i < m; i++) {
            float a = fabsf(v[i] - out[i]);
            max_abs[0] = a > max_abs[0] ? a : max_abs[0];
        }
        for (int l = 0; l < LANES; l++)
            st->max_abs = max_abs[l] > st->max_abs ? max_abs[l] : st->max_abs;
    }
    add_reference(st, v, m, channel);
}

VECTOR_CLONES static void
reference_visit(const struct segment *g, Py_ssize_t channel, void *p)
{
    add_reference((struct code_state *)p, g->values, g->count, channel);
}

VECTOR_CLONES static void
code_visit(const struct segment *g, Py_ssize_t channel, void *p)
{
    struct code_state *st = (struct code_state *)p;
    const Py_ssize_t m = g->count;
    const float *v = g->values;
    float q[SEGMENT], out[SEGMENT];
    int32_t level[SEGMENT];
    levels_of(g, q);
    int bad = any_outside(q, m);
    if (UNLIKELY(bad)) { /* outside values: level 0 (their code), fixed below */
        for (Py_ssize_t i = 0; i < m; i++)
            if (!(fabsf(q[i]) <= (float)HALF_RANGE)) {
                q[i] = 0.0f;
                st->outside++;
            }
    }
    for (Py_ssize_t i = 0; i < m; i++)
        level[i] = (int32_t)q[i];
    if (st->codes) { /* the extreme levels, in lanes the compiler vectorises */
        int32_t low[LANES], high[LANES];
        for (int l = 0; l < LANES; l++) {
            low[l] = HALF_RANGE;
            high[l] = -HALF_RANGE;
        }
        Py_ssize_t i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int l = 0; l < LANES; l++) {
                low[l] = level[i + l] < low[l] ? level[i + l] : low[l];
                high[l] = level[i + l] > high[l] ? level[i + l] : high[l];
            }
        for (; i < m; i++) {
            low[0] = level[i] < low[0] ? level[i] : low[0];
            high[0] = level[i] > high[0] ? level[i] : high[0];
        }
        for (int l = 0; l < LANES; l++) {
            st->lowest = low[l] < st->lowest ? low[l] : st->lowest;
            st->highest = high[l] > st->highest ? high[l] : st->highest;
        }
    }
    const Py_ssize_t at = v - st->origin;
    if (st->codes) {
        uint8_t *codes = st->codes + at;
        for (Py_ssize_t i = 0; i < m; i++)
            codes[i] = (uint8_t)(level[i] + HALF_RANGE);
    }
    for (Py_ssize_t i = 0; i < m; i++)
        out[i] = st->table[level[i] + HALF_RANGE];
    if (g->scales) {
        for (Py_ssize_t i = 0; i < m; i++)
            out[i] = out[i] * g->scales[i];
    } else if (g->has_scale) {
        const float scale = g->scale;
        for (Py_ssize_t i = 0; i < m; i++)
            out[i] = out[i] * scale;
    }
    if (UNLIKELY(bad)) { /* outside values decode to themselves */
        for (Py_ssize_t i = 0; i < m; i++) {
            float y = round_even(v[i] * (g->factors ? g->factors[i] : g->factor));
            if (!(fabsf(y) <= (float)HALF_RANGE))
                out[i] = v[i];
        }
    }
    if (st->decoded)
        memcpy(st->decoded + at, out, (size_t)m * sizeof(float));
    add_errors(st, v, out, m, channel);
}



/* level_sums(values, width, inv, mode, counts, sums) -> outside
 *
 * For each value's level (rounded value times its factor), add 1 to
 * counts[level + 127] (int64) and the scaled value to sums[level + 127]
 * (float64), in order, as numpy's bincount does. Values outside the codes
 * count at level 0 and add nothing to the sums; their number is returned. */
static PyObject *
level_sums(PyObject *self, PyObject *args)
{
    PyObject *xo, *invo, *countso, *sumso;
    Py_ssize_t width;
    int mode;
    if (!PyArg_ParseTuple(args, "OnOiOO", &xo, &width, &invo, &mode, &countso, &sumso))
        return NULL;
    Py_buffer x, inv, counts, sums;
    if (get_buffer(xo, &x, 0, 'f', "values") < 0)
        return NULL;
    if (get_buffer(invo, &inv, 0, 'f', "inv") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_buffer(countso, &counts, 1, 'q', "counts") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&inv);
        return NULL;
    }
    if (get_buffer(sumso, &sums, 1, 'd', "sums") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&inv);
        PyBuffer_Release(&counts);
        return NULL;
    }
    Py_ssize_t n = x.len / 4, rows = width > 0 ? n / width : 0;
    long long outside = 0;
    int ok = width > 0 && rows * width == n && counts.len == 8 * LEVELS && sums.len == 8 * LEVELS;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "level_sums: bad sizes");
    else if (check_factors(inv.len / 4, mode, rows, width, "level_sums") < 0)
        ok = 0;
    if (ok) {
        const float *xs = (const float *)x.buf, *fs = (const float *)inv.buf;
        int64_t *c = (int64_t *)counts.buf;
        double *s = (double *)sums.buf;
        struct level_state st = {c, s, 0};
        Py_BEGIN_ALLOW_THREADS
        walk(xs, rows, width, fs, NULL, mode, 0, 0, level_visit, &st);
        Py_END_ALLOW_THREADS
        outside = st.outside;
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&inv);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&sums);
    if (!ok)
        return NULL;
    return PyLong_FromLongLong(outside);
}

/* code(values, width, inv, mode, table, scales, codes, decoded,
 *      channels, first, sq_c, ref_c, want_ref, extremes)
 *   -> (sq_err, sq_ref, max_abs, lowest, highest, outside)
 *
 * Codes a block: level = rint(value * inv); code = level + 127 (uint8) and
 * decoded = table[code] (times the value's scale when `scales` is given,
 * same mode as `inv`); a value outside the codes gets level 0 and decodes
 * to itself. `codes` and `decoded` may be None (a trial).
 *
 * Squared errors are added to sq_c (float64, one per channel, at channel
 * (first + column) % channels) when it is given, else summed in `sq_err`;
 * squared values likewise to ref_c, else, with `want_ref`, in `sq_ref`.
 * `max_abs`: the largest absolute error, with `extremes` (else 0).
 * `lowest` / `highest`: the extreme levels (outside values count as 0),
 * when `codes` are made (else 127 and -127). */
static PyObject *
code(PyObject *self, PyObject *args)
{
    PyObject *xo, *invo, *tableo, *scaleso, *codeso, *decodedo, *sqco, *refco;
    Py_ssize_t width, channels, first;
    int mode, want_ref, extremes;
    if (!PyArg_ParseTuple(args, "OnOiOOOOnnOOpp", &xo, &width, &invo, &mode, &tableo, &scaleso, &codeso,
                          &decodedo, &channels, &first, &sqco, &refco, &want_ref, &extremes))
        return NULL;
    Py_buffer bufs[8];
    PyObject *objs[8] = {xo, invo, tableo, scaleso, codeso, decodedo, sqco, refco};
    const int writable[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    const char kinds[8] = {'f', 'f', 'f', 'f', 'B', 'f', 'd', 'd'};
    const char *names[8] = {"values", "inv", "table", "scales", "codes", "decoded", "sq_c", "ref_c"};
    int have[8] = {0};
    int ok = 1;
    for (int i = 0; i < 8 && ok; i++) {
        if (objs[i] == Py_None)
            continue;
        if (get_buffer(objs[i], &bufs[i], writable[i], kinds[i], names[i]) < 0)
            ok = 0;
        else
            have[i] = 1;
    }
    Py_ssize_t n = have[0] ? bufs[0].len / 4 : 0, rows = width > 0 ? n / width : 0;
    if (ok && !(have[0] && have[1] && have[2] && width > 0 && rows * width == n && bufs[2].len == 4 * LEVELS)) {
        PyErr_SetString(PyExc_ValueError, "code: bad sizes");
        ok = 0;
    }
    if (ok && check_factors(bufs[1].len / 4, mode, rows, width, "code (inv)") < 0)
        ok = 0;
    if (ok && have[3] && check_factors(bufs[3].len / 4, mode, rows, width, "code (scales)") < 0)
        ok = 0;
    if (ok && ((have[4] && bufs[4].len != n) || (have[5] && bufs[5].len != 4 * n))) {
        PyErr_SetString(PyExc_ValueError, "code: outputs of the wrong size");
        ok = 0;
    }
    if (ok && (channels < 0 || first < 0 ||
               (channels > 0 && ((have[6] && bufs[6].len / 8 != channels) ||
                                 (have[7] && bufs[7].len / 8 != channels))))) {
        PyErr_SetString(PyExc_ValueError, "code: channel sums of the wrong size, or a negative first channel");
        ok = 0;
    }
    double sq = 0.0, ref = 0.0;
    float high = 0.0f;
    int lowest = HALF_RANGE, highest = -HALF_RANGE;
    long long outside = 0;
    if (ok) {
        const float *xs = (const float *)bufs[0].buf, *fs = (const float *)bufs[1].buf;
        const float *table = (const float *)bufs[2].buf;
        const float *sc = have[3] ? (const float *)bufs[3].buf : NULL;
        uint8_t *codes = have[4] ? (uint8_t *)bufs[4].buf : NULL;
        float *decoded = have[5] ? (float *)bufs[5].buf : NULL;
        double *sq_c = channels > 0 && have[6] ? (double *)bufs[6].buf : NULL;
        double *ref_c = channels > 0 && have[7] ? (double *)bufs[7].buf : NULL;
        struct code_state st = {table, codes, decoded, xs, sq_c, ref_c, want_ref, extremes, {0}, {0}, 0.0f,
                                HALF_RANGE, -HALF_RANGE, 0};
        Py_BEGIN_ALLOW_THREADS
        walk(xs, rows, width, fs, sc, mode, channels, first, code_visit, &st);
        Py_END_ALLOW_THREADS
        for (int l = 0; l < LANES; l++) {
            sq += st.sq[l];
            ref += st.ref[l];
        }
        high = st.max_abs;
        lowest = st.lowest;
        highest = st.highest;
        outside = st.outside;
    }
    for (int i = 0; i < 8; i++)
        if (have[i])
            PyBuffer_Release(&bufs[i]);
    if (!ok)
        return NULL;
    if (n == 0)
        lowest = highest = 0;
    return Py_BuildValue("dddiiL", sq, ref, (double)high, lowest, highest, outside);
}

/* reference(values, width, channels, first, ref_c) -> sq_ref
 *
 * The sums of squared values that `code` adds (with `want_ref`), alone:
 * to ref_c when given (channels as in `code`), else to the returned total. */
static PyObject *
reference(PyObject *self, PyObject *args)
{
    PyObject *xo, *refco;
    Py_ssize_t width, channels, first;
    if (!PyArg_ParseTuple(args, "OnnnO", &xo, &width, &channels, &first, &refco))
        return NULL;
    Py_buffer x, refc;
    int have_refc = refco != Py_None;
    if (get_buffer(xo, &x, 0, 'f', "values") < 0)
        return NULL;
    if (have_refc && get_buffer(refco, &refc, 1, 'd', "ref_c") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    Py_ssize_t n = x.len / 4, rows = width > 0 ? n / width : 0;
    int ok = width > 0 && rows * width == n && channels >= 0 && first >= 0 &&
             (!have_refc || (channels > 0 && refc.len / 8 == channels));
    double total = 0.0;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "reference: bad sizes");
    } else {
        const float one = 1.0f;
        struct code_state st = {NULL, NULL, NULL, (const float *)x.buf, NULL, have_refc ? (double *)refc.buf : NULL,
                                1, 0, {0}, {0}, 0.0f, HALF_RANGE, -HALF_RANGE, 0};
        Py_BEGIN_ALLOW_THREADS
        walk((const float *)x.buf, rows, width, &one, NULL, 0, have_refc ? channels : 0, first, reference_visit, &st);
        Py_END_ALLOW_THREADS
        for (int l = 0; l < LANES; l++)
            total += st.ref[l];
    }
    PyBuffer_Release(&x);
    if (have_refc)
        PyBuffer_Release(&refc);
    if (!ok)
        return NULL;
    return PyFloat_FromDouble(total);
}

/* The errors of a decoded block (`decoded` minus nothing: `values - decoded`
 * in float32, as numpy subtracts), summed as `code` sums its own, with the
 * values' squares as `reference` sums them and the largest absolute error. */
struct measure_state {
    struct code_state sums; /* sq / sq_c and ref / ref_c, as `code` keeps them */
    const float *decoded;   /* decoded value 0 of the walk */
};

VECTOR_CLONES static void
measure_visit(const struct segment *g, Py_ssize_t channel, void *p)
{
    struct measure_state *ms = (struct measure_state *)p;
    add_errors(&ms->sums, g->values, ms->decoded + (g->values - ms->sums.origin), g->count, channel);
}

/* measure(values, decoded, width, channels, first, sq_c, ref_c) -> (sq, ref, max_abs)
 *
 * One pass for what `reference` of the values and `reference` of their
 * errors give (to sq_c and ref_c when given, with channels as in `code`,
 * else to the totals), and the largest absolute error. */
static PyObject *
measure(PyObject *self, PyObject *args)
{
    PyObject *xo, *dobj, *sqco, *refco;
    Py_ssize_t width, channels, first;
    if (!PyArg_ParseTuple(args, "OOnnnOO", &xo, &dobj, &width, &channels, &first, &sqco, &refco))
        return NULL;
    Py_buffer x, d, sqc, refc;
    const int have_c = sqco != Py_None && refco != Py_None;
    if (get_buffer(xo, &x, 0, 'f', "values") < 0)
        return NULL;
    if (get_buffer(dobj, &d, 0, 'f', "decoded") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (have_c && get_buffer(sqco, &sqc, 1, 'd', "sq_c") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&d);
        return NULL;
    }
    if (have_c && get_buffer(refco, &refc, 1, 'd', "ref_c") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&d);
        PyBuffer_Release(&sqc);
        return NULL;
    }
    Py_ssize_t n = x.len / 4, rows = width > 0 ? n / width : 0;
    int ok = width > 0 && rows * width == n && d.len == x.len && channels >= 0 && first >= 0 &&
             (!have_c || (channels > 0 && sqc.len / 8 == channels && refc.len / 8 == channels));
    double sq = 0.0, ref = 0.0, high = 0.0;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "measure: bad sizes");
    } else {
        const float one = 1.0f;
        struct measure_state ms = {{NULL, NULL, NULL, (const float *)x.buf, have_c ? (double *)sqc.buf : NULL,
                                    have_c ? (double *)refc.buf : NULL, 1, 1, {0}, {0}, 0.0f, HALF_RANGE,
                                    -HALF_RANGE, 0},
                                   (const float *)d.buf};
        Py_BEGIN_ALLOW_THREADS
        walk((const float *)x.buf, rows, width, &one, NULL, 0, have_c ? channels : 0, first, measure_visit, &ms);
        Py_END_ALLOW_THREADS
        for (int l = 0; l < LANES; l++) {
            sq += ms.sums.sq[l];
            ref += ms.sums.ref[l];
        }
        high = (double)ms.sums.max_abs;
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&d);
    if (have_c) {
        PyBuffer_Release(&sqc);
        PyBuffer_Release(&refc);
    }
    if (!ok)
        return NULL;
    return Py_BuildValue("ddd", sq, ref, high);
}

/* mark(patterns, seen) -> count
 *
 * Sets seen[p] = 1 for each uint16 pattern p, and returns how many entries
 * of `seen` (65,536 bytes) are set afterwards: the distinct bit patterns of
 * a 16-bit tensor, a chunk at a time (select._lossless_16). */
static PyObject *
mark(PyObject *self, PyObject *args)
{
    PyObject *po, *so;
    if (!PyArg_ParseTuple(args, "OO", &po, &so))
        return NULL;
    Py_buffer p, seen;
    if (PyObject_GetBuffer(po, &p, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (get_buffer(so, &seen, 1, 'B', "seen") < 0) {
        PyBuffer_Release(&p);
        return NULL;
    }
    const int ok = p.len % 2 == 0 && seen.len == 65536;
    Py_ssize_t count = 0;
    if (ok) {
        const uint16_t *in = (const uint16_t *)p.buf;
        uint8_t *set = (uint8_t *)seen.buf;
        const Py_ssize_t n = p.len / 2;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            set[in[i]] = 1;
        for (Py_ssize_t i = 0; i < 65536; i++)
            count += set[i];
        Py_END_ALLOW_THREADS
    } else {
        PyErr_SetString(PyExc_ValueError, "mark: bad sizes");
    }
    PyBuffer_Release(&p);
    PyBuffer_Release(&seen);
    if (!ok)
        return NULL;
    return PyLong_FromSsize_t(count);
}

static PyMethodDef methods[] = {
    {"level_sums", level_sums, METH_VARARGS, "Per-level counts and sums of scaled values (see the module comment)."},
    {"code", code, METH_VARARGS, "Code, decode and measure one block (see the module comment)."},
    {"reference", reference, METH_VARARGS, "Sums of squared values, as `code` adds them."},
    {"mark", mark, METH_VARARGS, "Marks 16-bit patterns seen; returns how many are (see the comment)."},
    {"measure", measure, METH_VARARGS, "Sums of squared values and errors of a decoded block, in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The uniform coder's fused inner loops (optional; numpy is the fallback).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__kernel(void)
{
    return PyModule_Create(&module);
}
