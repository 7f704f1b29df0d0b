/* The trellis coder's loops (see weightroll/coders/trellis.py, which falls
 * back to numpy when this module is not built and defines what each loop
 * computes): the Viterbi search for a segment's levels, and the state
 * machine that turns levels into reconstruction levels.
 *
 * The search does, value after value, the float32 and float64 operations
 * the numpy version does (no fused multiply-add: setup.py passes
 * -ffp-contract=off), in the same order, with the same ties, so the levels
 * are the same bits either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#pragma fp_contract(off)
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static const int TRANSITIONS[4][2] = {{0, 2}, {2, 0}, {1, 3}, {3, 1}};

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *kinds, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *format = view->format ? view->format : "B";
    if (*format == '@' || *format == '=' || *format == '<')
        format++;
    if (view->itemsize != itemsize || format[0] == '\0' || format[1] != '\0' || strchr(kinds, format[0]) == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: unexpected item format '%s'", name, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The level of an odd reconstruction level `m` (Q1): (m + sign(m)) / 2,
 * an exact halving of an even number, without branches. */
static inline int
odd_level(int m)
{
    return (m + (m > 0) - (m < 0)) >> 1;
}

/* floorf(x) as an int, without a libm call, for |x| < 2**31 (the values
 * searched are within 253 of zero). */
static inline int
floor_int(float x)
{
    const int i = (int)x; /* towards zero */
    return i - (x < (float)i);
}

/* `take ? b : a` for doubles without a branch: x86 has no conditional move
 * for them, and a branch on which of two costs is smaller is a coin toss the
 * processor mispredicts half the time. */
static inline double
choose(int take, double a, double b)
{
    const double pair[2] = {a, b};
    return pair[take];
}

/* `take ? b : a` for ints, by arithmetic: the compiler may not branch on
 * the parity of a level either. */
static inline int
pick_int(int take, int a, int b)
{
    return a ^ ((a ^ b) & -take);
}

/* The better of two candidates `(k, d)` of one parity: the one of smaller
 * squared difference, the first of equals. */
#define PICK(k, d, k2, d2)             \
    do {                               \
        const int take_ = (d2) < (d);  \
        d = choose(take_, d, d2);      \
        k = pick_int(take_, k, k2);    \
    } while (0)

/* One value `v` of a segment: the costs `cost[4]` of the paths to each
 * state move on by one value, and the back pointers of this value (`bs[4]`,
 * `bl[4]`: each state's previous state and level) are written (see
 * trellis.levels for the rule, ties included). */
static inline void
step(const float v, double *cost, int8_t *bs, int16_t *bl)
{
    const double wide = (double)v;
    const int even = 2 * floor_int(v * 0.5f);
    const int odd = 2 * floor_int((v - 1.0f) * 0.5f) + 1;
    const double d_e = (wide - (double)even) * (wide - (double)even);
    const double d_e2 = (wide - (double)(even + 2)) * (wide - (double)(even + 2));
    const double d_o = (wide - (double)odd) * (wide - (double)odd);
    const double d_o2 = (wide - (double)(odd + 2)) * (wide - (double)(odd + 2));
    const double d_z = wide * wide;
    /* Q0 (states 0, 1): levels even / 2 and even / 2 + 1, one of each parity. */
    const int k_e = even >> 1;
    const int e_first = (k_e & 1) == 0;
    const int q0k[2] = {k_e + (k_e & 1), k_e + 1 - (k_e & 1)};  /* the even level, the odd one */
    const double q0d[2] = {choose(e_first, d_e2, d_e), choose(e_first, d_e, d_e2)};
    /* Q1 (states 2, 3): levels of odd, odd + 2 and 0, the best of each parity. */
    const int k_o = odd_level(odd), k_o2 = odd_level(odd + 2);
    const int p_o = k_o & 1, p_o2 = k_o2 & 1;
    int q1k[2] = {k_o, k_o};
    double q1d[2] = {choose(p_o, d_o, INFINITY), choose(p_o, INFINITY, d_o)};
    const double d_even2 = choose(p_o2, d_o2, INFINITY), d_odd2 = choose(p_o2, INFINITY, d_o2);
    PICK(q1k[0], q1d[0], k_o2, d_even2);
    PICK(q1k[1], q1d[1], k_o2, d_odd2);
    PICK(q1k[0], q1d[0], 0, d_z);
    /* Each state is reached from two: the lower one unless the other is cheaper. */
    const double a0 = cost[0] + q0d[0], b0 = cost[1] + q0d[1];
    const double a2 = cost[0] + q0d[1], b2 = cost[1] + q0d[0];
    const double a1 = cost[2] + q1d[0], b1 = cost[3] + q1d[1];
    const double a3 = cost[2] + q1d[1], b3 = cost[3] + q1d[0];
    const int t0 = b0 < a0, t1 = b1 < a1, t2 = b2 < a2, t3 = b3 < a3;
    cost[0] = choose(t0, a0, b0); bs[0] = (int8_t)t0; bl[0] = (int16_t)pick_int(t0, q0k[0], q0k[1]);
    cost[2] = choose(t2, a2, b2); bs[2] = (int8_t)t2; bl[2] = (int16_t)pick_int(t2, q0k[1], q0k[0]);
    cost[1] = choose(t1, a1, b1); bs[1] = (int8_t)(2 + t1); bl[1] = (int16_t)pick_int(t1, q1k[0], q1k[1]);
    cost[3] = choose(t3, a3, b3); bs[3] = (int8_t)(2 + t3); bl[3] = (int16_t)pick_int(t3, q1k[1], q1k[0]);
}

/* One segment of `length` values: the levels of least squared error, from
 * state 0, ending in the cheapest state (the lowest among equals). (Searching
 * four segments side by side, for the processor to overlap their steps,
 * measured no faster: 0.42 s for 16M values either way.) */
static void
search(const float *y, Py_ssize_t length, int16_t *out, int8_t *back_state, int16_t *back_level)
{
    double cost[4] = {0.0, INFINITY, INFINITY, INFINITY};
    for (Py_ssize_t j = 0; j < length; j++)
        step(y[j], cost, back_state + 4 * j, back_level + 4 * j);
    int state = 0;
    for (int s = 1; s < 4; s++)
        if (cost[s] < cost[state])
            state = s;
    for (Py_ssize_t j = length - 1; j >= 0; j--) {
        out[j] = back_level[4 * j + state];
        state = back_state[4 * j + state];
    }
}

/* levels(y, segment, out): see trellis.levels. */
static PyObject *
levels(PyObject *self, PyObject *args)
{
    PyObject *yo, *outo;
    Py_ssize_t segment;
    if (!PyArg_ParseTuple(args, "OnO", &yo, &segment, &outo))
        return NULL;
    Py_buffer y, out;
    if (get_buffer(yo, &y, 0, 4, "f", "y") < 0)
        return NULL;
    if (get_buffer(outo, &out, 1, 2, "h", "out") < 0) {
        PyBuffer_Release(&y);
        return NULL;
    }
    Py_ssize_t n = y.len / 4;
    int ok = segment > 0 && out.len / 2 == n;
    int8_t *back_state = NULL;
    int16_t *back_level = NULL;
    if (ok && n) {
        Py_ssize_t length = segment < n ? segment : n;
        back_state = malloc(4 * (size_t)length);
        back_level = malloc(8 * (size_t)length);
        if (back_state == NULL || back_level == NULL) {
            free(back_state);
            free(back_level);
            PyBuffer_Release(&y);
            PyBuffer_Release(&out);
            return PyErr_NoMemory();
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t start = 0; start < n; start += segment) {
            const Py_ssize_t stop = start + segment < n ? start + segment : n;
            search((const float *)y.buf + start, stop - start, (int16_t *)out.buf + start, back_state, back_level);
        }
        Py_END_ALLOW_THREADS
    } else if (!ok) {
        PyErr_SetString(PyExc_ValueError, "levels: bad sizes");
    }
    free(back_state);
    free(back_level);
    PyBuffer_Release(&y);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* reconstruction(k, segment, out): see trellis.reconstruction. */
static PyObject *
reconstruction(PyObject *self, PyObject *args)
{
    PyObject *ko, *outo;
    Py_ssize_t segment;
    if (!PyArg_ParseTuple(args, "OnO", &ko, &segment, &outo))
        return NULL;
    Py_buffer k, out;
    if (get_buffer(ko, &k, 0, 2, "h", "k") < 0)
        return NULL;
    if (get_buffer(outo, &out, 1, 2, "h", "out") < 0) {
        PyBuffer_Release(&k);
        return NULL;
    }
    Py_ssize_t n = k.len / 2;
    int ok = segment > 0 && out.len / 2 == n;
    if (ok) {
        const int16_t *in = (const int16_t *)k.buf;
        int16_t *m = (int16_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        int state = 0;
        Py_ssize_t left = 0;  /* values left in the segment (no division per value) */
        for (Py_ssize_t j = 0; j < n; j++) {
            if (left-- == 0) {
                state = 0;
                left = segment - 1;
            }
            const int level = in[j];
            const int sign = (level > 0) - (level < 0);
            m[j] = (int16_t)(2 * level - (state >= 2 ? sign : 0));
            state = TRANSITIONS[state][level & 1];
        }
        Py_END_ALLOW_THREADS
    } else {
        PyErr_SetString(PyExc_ValueError, "reconstruction: bad sizes");
    }
    PyBuffer_Release(&k);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* indices(codes, segment, zero, low, out) -> (lowest, highest): see
 * trellis.table_indices; the codes are uint8, the indices int16. */
static PyObject *
indices(PyObject *self, PyObject *args)
{
    PyObject *co, *outo;
    Py_ssize_t segment;
    int zero, low;
    if (!PyArg_ParseTuple(args, "OniiO", &co, &segment, &zero, &low, &outo))
        return NULL;
    Py_buffer c, out;
    if (get_buffer(co, &c, 0, 1, "B", "codes") < 0)
        return NULL;
    if (get_buffer(outo, &out, 1, 2, "h", "out") < 0) {
        PyBuffer_Release(&c);
        return NULL;
    }
    const Py_ssize_t n = c.len;
    const int ok = segment > 0 && out.len / 2 == n && zero >= -255 && zero <= 255 && low >= -1024 && low <= 1024;
    int lowest = 0, highest = -1;
    if (ok && n) {
        const uint8_t *in = (const uint8_t *)c.buf;
        int16_t *index = (int16_t *)out.buf;
        lowest = INT16_MAX;
        highest = INT16_MIN;
        Py_BEGIN_ALLOW_THREADS
        int state = 0;
        Py_ssize_t left = 0;  /* values left in the segment (no division per value) */
        for (Py_ssize_t j = 0; j < n; j++) {
            if (left-- == 0) {
                state = 0;
                left = segment - 1;
            }
            const int level = (int)in[j] - zero;
            const int sign = (level > 0) - (level < 0);
            const int i = 2 * level - (state >= 2 ? sign : 0) - low;
            index[j] = (int16_t)i;
            lowest = i < lowest ? i : lowest;
            highest = i > highest ? i : highest;
            state = TRANSITIONS[state][level & 1];
        }
        Py_END_ALLOW_THREADS
    } else if (!ok) {
        PyErr_SetString(PyExc_ValueError, "indices: bad arguments");
    }
    PyBuffer_Release(&c);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    return Py_BuildValue("ii", lowest, highest);
}

/* The values of one trellis segment's codes `in[0:length]` from position
 * `skip` on (before it the codes only move the state machine), through
 * `values_of[q1 << 8 | code]`, the value of each code on Q0 and on Q1; adds
 * to `outside` those whose index is beyond the table (`beyond`, likewise).
 *
 * Bit 1 of the state (on Q1 or not) is all a value needs, and it follows
 * from the levels' parities: with the machine (s1, s0) -> (s0 ^ parity, s1),
 * bit 1 at position j + 2 is bit 1 at j xor the parity at j + 1. So it
 * runs in two chains, one for the even positions and one for the odd, one
 * xor per two values, and the processor does not wait on each value's
 * state. */
static Py_ssize_t
trellis_segment(const uint8_t *in, Py_ssize_t length, Py_ssize_t skip, unsigned zero_parity,
                const float *values_of, const uint8_t *beyond, float *values)
{
    unsigned even = 0, odd = 0;  /* bit 1 of the state at the next even / odd position */
    Py_ssize_t outside = 0, j = 0;
#define PARITY(j) (((unsigned)in[j] ^ zero_parity) & 1u)
#define VALUE(j, q1)                                  \
    do {                                              \
        const unsigned at_ = (q1) << 8 | in[j];       \
        outside += beyond[at_];                       \
        values[j] = values_of[at_];                   \
    } while (0)
    for (; j < skip; j++) {
        if (j & 1)
            even ^= PARITY(j);
        else
            odd ^= PARITY(j);
    }
    if (j & 1 && j < length) {
        VALUE(j, odd);
        even ^= PARITY(j);
        j++;
    }
    for (; j + 1 < length; j += 2) {
        VALUE(j, even);
        odd ^= PARITY(j);
        VALUE(j + 1, odd);
        even ^= PARITY(j + 1);
    }
    if (j < length)
        VALUE(j, even);
#undef PARITY
#undef VALUE
    return outside;
}

/* lookup(codes, segment, zero, low, skip, table, out) -> outside: see
 * trellis.lookup. The codes are uint8 from the start of a segment (or plain
 * table indices where segment is 0); the first `skip` only move the state
 * machine; the table and the values are float32. An index outside the
 * table writes entry 0 and is counted (the caller refuses the archive). */
static PyObject *
lookup(PyObject *self, PyObject *args)
{
    PyObject *co, *to, *outo;
    Py_ssize_t segment, skip;
    int zero, low;
    if (!PyArg_ParseTuple(args, "OniinOO", &co, &segment, &zero, &low, &skip, &to, &outo))
        return NULL;
    Py_buffer c, t, out;
    if (get_buffer(co, &c, 0, 1, "B", "codes") < 0)
        return NULL;
    if (get_buffer(to, &t, 0, 4, "f", "table") < 0) {
        PyBuffer_Release(&c);
        return NULL;
    }
    if (get_buffer(outo, &out, 1, 4, "f", "out") < 0) {
        PyBuffer_Release(&c);
        PyBuffer_Release(&t);
        return NULL;
    }
    const Py_ssize_t n = c.len, size = t.len / 4;
    const int ok = segment >= 0 && skip >= 0 && skip <= n && (segment == 0 ? skip == 0 : skip < segment)
                   && out.len / 4 == n - skip && size > 0 && zero >= -255 && zero <= 255 && low >= -1024
                   && low <= 1024;
    Py_ssize_t outside = 0;
    if (ok && n > skip) {
        const uint8_t *in = (const uint8_t *)c.buf;
        const float *table = (const float *)t.buf;
        float *values = (float *)out.buf - skip;  /* indexed as the codes */
        Py_BEGIN_ALLOW_THREADS
        if (segment == 0) {
            for (Py_ssize_t j = 0; j < n; j++) {
                const int in_ = in[j] < size;
                outside += !in_;
                values[j] = table[in_ ? in[j] : 0];
            }
        } else {
            /* Each code's value on Q0 (levels 2k) and on Q1 (2k - sign(k)). */
            float values_of[512];
            uint8_t beyond[512];
            for (int q1 = 0; q1 < 2; q1++)
                for (int code = 0; code < 256; code++) {
                    const int level = code - zero, sign = (level > 0) - (level < 0);
                    const int i = 2 * level - q1 * sign - low;
                    const int in_ = i >= 0 && i < size;
                    beyond[q1 << 8 | code] = (uint8_t)!in_;
                    values_of[q1 << 8 | code] = table[in_ ? i : 0];
                }
            for (Py_ssize_t start = 0; start < n; start += segment) {
                const Py_ssize_t length = n - start > segment ? segment : n - start;
                outside += trellis_segment(in + start, length, start ? 0 : skip, (unsigned)zero & 1u, values_of,
                                           beyond, values + start);
            }
        }
        Py_END_ALLOW_THREADS
    } else if (!ok) {
        PyErr_SetString(PyExc_ValueError, "lookup: bad arguments");
    }
    PyBuffer_Release(&c);
    PyBuffer_Release(&t);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    return PyLong_FromSsize_t(outside);
}

static PyMethodDef methods[] = {
    {"levels", levels, METH_VARARGS, "The Viterbi search for each segment's levels (see trellis.levels)."},
    {"reconstruction", reconstruction, METH_VARARGS, "Levels to reconstruction levels (see trellis.reconstruction)."},
    {"indices", indices, METH_VARARGS, "Codes to table indices, and their range (see trellis.table_indices)."},
    {"lookup", lookup, METH_VARARGS, "Codes to their table's values, and the indices' range (see trellis.lookup)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_trellis", "The trellis coder's loops (optional; numpy is the fallback).", -1, methods,
};

PyMODINIT_FUNC
PyInit__trellis(void)
{
    return PyModule_Create(&module);
}
