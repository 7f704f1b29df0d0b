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

/* `take ? b : a` for floats without a branch: a branch on which of two
 * costs is smaller is a coin toss the processor mispredicts half the time. */
static inline float
choose(int take, float a, float b)
{
    const float pair[2] = {a, b};
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
step(const float v, float *cost, int8_t *bs, int16_t *bl)
{
    const int even = 2 * floor_int(v * 0.5f);
    const int odd = 2 * floor_int((v - 1.0f) * 0.5f) + 1;
    const float d_e = (v - (float)even) * (v - (float)even);
    const float d_e2 = (v - (float)(even + 2)) * (v - (float)(even + 2));
    const float d_o = (v - (float)odd) * (v - (float)odd);
    const float d_o2 = (v - (float)(odd + 2)) * (v - (float)(odd + 2));
    const float d_z = v * v;
    /* Q0 (states 0, 1): levels even / 2 and even / 2 + 1, one of each parity. */
    const int k_e = even >> 1;
    const int e_first = (k_e & 1) == 0;
    const int q0k[2] = {k_e + (k_e & 1), k_e + 1 - (k_e & 1)};  /* the even level, the odd one */
    const float q0d[2] = {choose(e_first, d_e2, d_e), choose(e_first, d_e, d_e2)};
    /* Q1 (states 2, 3): levels of odd, odd + 2 and 0, the best of each parity. */
    const int k_o = odd_level(odd), k_o2 = odd_level(odd + 2);
    const int p_o = k_o & 1, p_o2 = k_o2 & 1;
    int q1k[2] = {k_o, k_o};
    float q1d[2] = {choose(p_o, d_o, INFINITY), choose(p_o, INFINITY, d_o)};
    const float d_even2 = choose(p_o2, d_o2, INFINITY), d_odd2 = choose(p_o2, INFINITY, d_o2);
    PICK(q1k[0], q1d[0], k_o2, d_even2);
    PICK(q1k[1], q1d[1], k_o2, d_odd2);
    PICK(q1k[0], q1d[0], 0, d_z);
    /* Each state is reached from two: the lower one unless the other is cheaper. */
    const float a0 = cost[0] + q0d[0], b0 = cost[1] + q0d[1];
    const float a2 = cost[0] + q0d[1], b2 = cost[1] + q0d[0];
    const float a1 = cost[2] + q1d[0], b1 = cost[3] + q1d[1];
    const float a3 = cost[2] + q1d[1], b3 = cost[3] + q1d[0];
    const int t0 = b0 < a0, t1 = b1 < a1, t2 = b2 < a2, t3 = b3 < a3;
    cost[0] = choose(t0, a0, b0); bs[0] = (int8_t)t0; bl[0] = (int16_t)pick_int(t0, q0k[0], q0k[1]);
    cost[2] = choose(t2, a2, b2); bs[2] = (int8_t)t2; bl[2] = (int16_t)pick_int(t2, q0k[1], q0k[0]);
    cost[1] = choose(t1, a1, b1); bs[1] = (int8_t)(2 + t1); bl[1] = (int16_t)pick_int(t1, q1k[0], q1k[1]);
    cost[3] = choose(t3, a3, b3); bs[3] = (int8_t)(2 + t3); bl[3] = (int16_t)pick_int(t3, q1k[1], q1k[0]);
}

/* The cheapest of four end states, the lowest among equals. */
static inline int
cheapest(const float *cost)
{
    int state = 0;
    for (int s = 1; s < 4; s++)
        if (cost[s] < cost[state])
            state = s;
    return state;
}

/* Buffers for the search of segments of `length` values. */
typedef struct {
    Py_ssize_t length;
    int8_t *back_state;  /* one segment at a time: 4 a value */
    int16_t *back_level;
    float *lanes;        /* GROUP segments side by side: their values, interleaved */
    float *lane_levels;  /* each value's 4 states' levels, GROUP lanes each */
    uint8_t *lane_turns; /* each value's 4 states' choices, a bit a lane */
} Work;

#define GROUP 8

static int
work_init(Work *w, Py_ssize_t length)
{
    w->length = length;
    w->back_state = malloc(4 * (size_t)length);
    w->back_level = malloc(8 * (size_t)length);
    w->lanes = malloc(GROUP * sizeof(float) * (size_t)length);
    w->lane_levels = malloc(4 * GROUP * sizeof(float) * (size_t)length);
    w->lane_turns = malloc(4 * (size_t)length);
    return w->back_state && w->back_level && w->lanes && w->lane_levels && w->lane_turns;
}

static void
work_free(Work *w)
{
    free(w->back_state);
    free(w->back_level);
    free(w->lanes);
    free(w->lane_levels);
    free(w->lane_turns);
}

/* One segment of `length` values: the levels of least squared error, from
 * state 0, ending in the cheapest state (the lowest among equals); and, if
 * `grid` is not NULL, each value's grid (0: Q0, 1: Q1), which the state
 * the path reaches with it tells (Q0 reaches states 0 and 2). */
static void
search(const float *y, Py_ssize_t length, int16_t *out, uint8_t *grid, Work *w)
{
    float cost[4] = {0.0f, INFINITY, INFINITY, INFINITY};
    for (Py_ssize_t j = 0; j < length; j++)
        step(y[j], cost, w->back_state + 4 * j, w->back_level + 4 * j);
    int state = cheapest(cost);
    for (Py_ssize_t j = length - 1; j >= 0; j--) {
        out[j] = w->back_level[4 * j + state];
        if (grid)
            grid[j] = (uint8_t)(state & 1);
        state = w->back_state[4 * j + state];
    }
}

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_GROUPS 1

/* `search` of GROUP segments of `length` values side by side, one in each
 * lane of AVX2's float vectors: the same float operations, value after
 * value, so the same levels. Each segment's steps depend on the one before,
 * so one segment keeps a core waiting; eight in step keep it busy. */
__attribute__((target("avx2"))) static void
search_group(const float *y, Py_ssize_t length, int16_t *out, uint8_t *grid, Work *w)
{
    float *lanes = w->lanes, *levels_at = w->lane_levels;
    uint8_t *turns = w->lane_turns;
    for (Py_ssize_t j = 0; j < length; j++)
        for (int l = 0; l < GROUP; l++)
            lanes[GROUP * j + l] = y[l * length + j];
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    const __m256 zero = _mm256_setzero_ps(), inf = _mm256_set1_ps(INFINITY);
    const __m256i lsb = _mm256_set1_epi32(1);
    __m256 c0 = zero, c1 = inf, c2 = inf, c3 = inf;
#define ODD_PARITY(k) _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_cvttps_epi32(k), lsb), lsb))
#define SQUARE(x) _mm256_mul_ps((x), (x))
    for (Py_ssize_t j = 0; j < length; j++) {
        const __m256 v = _mm256_loadu_ps(lanes + GROUP * j);
        const __m256 fe = _mm256_floor_ps(_mm256_mul_ps(v, half));
        const __m256 even = _mm256_add_ps(fe, fe);
        const __m256 fo = _mm256_floor_ps(_mm256_mul_ps(_mm256_sub_ps(v, one), half));
        const __m256 odd = _mm256_add_ps(_mm256_add_ps(fo, fo), one);
        const __m256 d_e = SQUARE(_mm256_sub_ps(v, even));
        const __m256 d_e2 = SQUARE(_mm256_sub_ps(v, _mm256_add_ps(even, two)));
        const __m256 d_o = SQUARE(_mm256_sub_ps(v, odd));
        const __m256 d_o2 = SQUARE(_mm256_sub_ps(v, _mm256_add_ps(odd, two)));
        const __m256 d_z = _mm256_mul_ps(v, v);
        /* Q0: level fe (= even / 2) and fe + 1; the even one and the odd one. */
        const __m256 e_odd = ODD_PARITY(fe);
        const __m256 fe1 = _mm256_add_ps(fe, one);
        const __m256 q0k0 = _mm256_blendv_ps(fe, fe1, e_odd), q0k1 = _mm256_blendv_ps(fe1, fe, e_odd);
        const __m256 q0d0 = _mm256_blendv_ps(d_e, d_e2, e_odd), q0d1 = _mm256_blendv_ps(d_e2, d_e, e_odd);
        /* Q1: levels of odd (odd + sign(odd)) / 2, of odd + 2, and 0. */
        const __m256 odd2 = _mm256_add_ps(odd, two);
        const __m256 k_o = _mm256_mul_ps(_mm256_add_ps(odd, _mm256_blendv_ps(one, _mm256_sub_ps(zero, one),
                                                                            _mm256_cmp_ps(odd, zero, _CMP_LT_OQ))), half);
        const __m256 k_o2 = _mm256_mul_ps(_mm256_add_ps(odd2, _mm256_blendv_ps(one, _mm256_sub_ps(zero, one),
                                                                              _mm256_cmp_ps(odd2, zero, _CMP_LT_OQ))), half);
        const __m256 p_o = ODD_PARITY(k_o), p_o2 = ODD_PARITY(k_o2);
        __m256 q1k0 = k_o, q1k1 = k_o;
        __m256 q1d0 = _mm256_blendv_ps(d_o, inf, p_o), q1d1 = _mm256_blendv_ps(inf, d_o, p_o);
        const __m256 d_even2 = _mm256_blendv_ps(d_o2, inf, p_o2), d_odd2 = _mm256_blendv_ps(inf, d_o2, p_o2);
        __m256 take = _mm256_cmp_ps(d_even2, q1d0, _CMP_LT_OQ);
        q1d0 = _mm256_blendv_ps(q1d0, d_even2, take);
        q1k0 = _mm256_blendv_ps(q1k0, k_o2, take);
        take = _mm256_cmp_ps(d_odd2, q1d1, _CMP_LT_OQ);
        q1d1 = _mm256_blendv_ps(q1d1, d_odd2, take);
        q1k1 = _mm256_blendv_ps(q1k1, k_o2, take);
        take = _mm256_cmp_ps(d_z, q1d0, _CMP_LT_OQ);
        q1d0 = _mm256_blendv_ps(q1d0, d_z, take);
        q1k0 = _mm256_blendv_ps(q1k0, zero, take);
        /* The four states, each from the lower of its two unless the other is cheaper. */
        const __m256 a0 = _mm256_add_ps(c0, q0d0), b0 = _mm256_add_ps(c1, q0d1);
        const __m256 a2 = _mm256_add_ps(c0, q0d1), b2 = _mm256_add_ps(c1, q0d0);
        const __m256 a1 = _mm256_add_ps(c2, q1d0), b1 = _mm256_add_ps(c3, q1d1);
        const __m256 a3 = _mm256_add_ps(c2, q1d1), b3 = _mm256_add_ps(c3, q1d0);
        const __m256 t0 = _mm256_cmp_ps(b0, a0, _CMP_LT_OQ), t1 = _mm256_cmp_ps(b1, a1, _CMP_LT_OQ);
        const __m256 t2 = _mm256_cmp_ps(b2, a2, _CMP_LT_OQ), t3 = _mm256_cmp_ps(b3, a3, _CMP_LT_OQ);
        c0 = _mm256_blendv_ps(a0, b0, t0);
        c1 = _mm256_blendv_ps(a1, b1, t1);
        c2 = _mm256_blendv_ps(a2, b2, t2);
        c3 = _mm256_blendv_ps(a3, b3, t3);
        float *at = levels_at + 4 * GROUP * j;
        _mm256_storeu_ps(at, _mm256_blendv_ps(q0k0, q0k1, t0));
        _mm256_storeu_ps(at + GROUP, _mm256_blendv_ps(q1k0, q1k1, t1));
        _mm256_storeu_ps(at + 2 * GROUP, _mm256_blendv_ps(q0k1, q0k0, t2));
        _mm256_storeu_ps(at + 3 * GROUP, _mm256_blendv_ps(q1k1, q1k0, t3));
        turns[4 * j] = (uint8_t)_mm256_movemask_ps(t0);
        turns[4 * j + 1] = (uint8_t)_mm256_movemask_ps(t1);
        turns[4 * j + 2] = (uint8_t)_mm256_movemask_ps(t2);
        turns[4 * j + 3] = (uint8_t)_mm256_movemask_ps(t3);
    }
#undef ODD_PARITY
#undef SQUARE
    float ends[4][GROUP];
    _mm256_storeu_ps(ends[0], c0);
    _mm256_storeu_ps(ends[1], c1);
    _mm256_storeu_ps(ends[2], c2);
    _mm256_storeu_ps(ends[3], c3);
    /* The lanes' paths back, side by side: each step of one waits on the
     * load before it, so eight at once keep the core busy. */
    int state[GROUP];
    for (int l = 0; l < GROUP; l++) {
        const float cost[4] = {ends[0][l], ends[1][l], ends[2][l], ends[3][l]};
        state[l] = cheapest(cost);
    }
    for (Py_ssize_t j = length - 1; j >= 0; j--) {
        const float *at = levels_at + 4 * GROUP * j;
        const uint8_t *turn = turns + 4 * j;
        for (int l = 0; l < GROUP; l++) {
            const int s = state[l];
            out[l * length + j] = (int16_t)at[s * GROUP + l];
            if (grid)
                grid[l * length + j] = (uint8_t)(s & 1);
            /* states 0 and 2 come from 0 or 1; states 1 and 3 from 2 or 3 */
            state[l] = 2 * (s & 1) + ((turn[s] >> l) & 1);
        }
    }
}

static int groups_run = -1;  /* whether this processor has AVX2; -1: not asked yet */

static int
use_groups(void)
{
    if (groups_run < 0) {
        __builtin_cpu_init();
        groups_run = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return groups_run;
}
#endif

/* The levels of `n` values, segment by segment (`search` each; GROUP
 * segments at once where the processor can), and their grids if `grid`
 * is not NULL. */
static void
levels_of(const float *y, Py_ssize_t n, Py_ssize_t segment, int16_t *out, uint8_t *grid, Work *w)
{
    Py_ssize_t start = 0;
#ifdef HAVE_GROUPS
    if (use_groups())
        for (; n - start >= GROUP * segment; start += GROUP * segment)
            search_group(y + start, segment, out + start, grid ? grid + start : NULL, w);
#endif
    for (; start < n; start += segment)
        search(y + start, start + segment < n ? segment : n - start, out + start, grid ? grid + start : NULL, w);
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
    if (ok && n) {
        Work w;
        if (!work_init(&w, segment < n ? segment : n)) {
            work_free(&w);
            PyBuffer_Release(&y);
            PyBuffer_Release(&out);
            return PyErr_NoMemory();
        }
        Py_BEGIN_ALLOW_THREADS
        levels_of((const float *)y.buf, n, segment, (int16_t *)out.buf, NULL, &w);
        Py_END_ALLOW_THREADS
        work_free(&w);
    } else if (!ok) {
        PyErr_SetString(PyExc_ValueError, "levels: bad sizes");
    }
    PyBuffer_Release(&y);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* search(y, segment, codes, counts, sums, level_counts): see
 * trellis._search_chunk. The levels of each segment (as `levels`), written
 * as codes `k + MAX_LEVEL` and counted in `level_counts[k + MAX_LEVEL]`;
 * each reconstruction level `m`'s count of values and float64 sum of them
 * added to `counts[m + 2 * MAX_LEVEL]` and `sums[...]`, in order. */
#define MAX_LEVEL 127
#define CELLS (4 * MAX_LEVEL + 1)
static PyObject *
search_codes(PyObject *self, PyObject *args)
{
    PyObject *yo, *co, *no, *so, *lo;
    Py_ssize_t segment;
    if (!PyArg_ParseTuple(args, "OnOOOO", &yo, &segment, &co, &no, &so, &lo))
        return NULL;
    Py_buffer y, c, counts, sums, level_counts;
    if (get_buffer(yo, &y, 0, 4, "f", "y") < 0)
        return NULL;
    if (get_buffer(co, &c, 1, 1, "B", "codes") < 0) {
        PyBuffer_Release(&y);
        return NULL;
    }
    if (get_buffer(no, &counts, 1, 8, "qlL", "counts") < 0) {
        PyBuffer_Release(&y);
        PyBuffer_Release(&c);
        return NULL;
    }
    if (get_buffer(so, &sums, 1, 8, "d", "sums") < 0) {
        PyBuffer_Release(&y);
        PyBuffer_Release(&c);
        PyBuffer_Release(&counts);
        return NULL;
    }
    if (get_buffer(lo, &level_counts, 1, 8, "qlL", "level_counts") < 0) {
        PyBuffer_Release(&y);
        PyBuffer_Release(&c);
        PyBuffer_Release(&counts);
        PyBuffer_Release(&sums);
        return NULL;
    }
    const Py_ssize_t n = y.len / 4;
    int ok = segment > 0 && c.len == n && counts.len == 8 * CELLS && sums.len == 8 * CELLS
             && level_counts.len == 8 * (2 * MAX_LEVEL + 1);
    Work w = {0};
    int16_t *k = NULL;
    if (ok && n) {
        const Py_ssize_t length = segment < n ? GROUP * segment : n;  /* the levels of a group at a time */
        k = malloc(3 * (size_t)length);  /* the levels (int16), then their grids */
        if (k == NULL || !work_init(&w, segment < n ? segment : n)) {
            free(k);
            work_free(&w);
            PyBuffer_Release(&y);
            PyBuffer_Release(&c);
            PyBuffer_Release(&counts);
            PyBuffer_Release(&sums);
            PyBuffer_Release(&level_counts);
            return PyErr_NoMemory();
        }
        const float *in = (const float *)y.buf;
        uint8_t *codes = (uint8_t *)c.buf;
        int64_t *count = (int64_t *)counts.buf;
        double *sum = (double *)sums.buf;
        int64_t *level_count = (int64_t *)level_counts.buf;
        /* A reconstruction level m is one level's alone (k = m / 2 for an
         * even m, (m + sign(m)) / 2 for an odd one): the levels' counts
         * follow from the cells'. */
        int64_t cell_count[CELLS] = {0};
        uint8_t *grids = (uint8_t *)(k + length);
        uint16_t *cells = (uint16_t *)k;  /* each level's cell, in its place */
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t group = 0; group < n && ok; group += GROUP * segment) {
            const Py_ssize_t group_stop = group + GROUP * segment < n ? group + GROUP * segment : n;
            levels_of(in + group, group_stop - group, segment, k, grids, &w);
            unsigned beyond = 0;
            for (Py_ssize_t j = 0; j < group_stop - group; j++) {  /* no dependence: vectorised */
                const int level = k[j], sign = (level > 0) - (level < 0);
                const int cell = 2 * level - grids[j] * sign + 2 * MAX_LEVEL;
                beyond |= (unsigned)cell >= CELLS;  /* |y| beyond LIMIT + 0.5: the caller's error */
                codes[group + j] = (uint8_t)(level + MAX_LEVEL);
                cells[j] = (uint16_t)cell;
            }
            if (beyond) {
                ok = 0;
                break;
            }
            for (Py_ssize_t j = 0; j < group_stop - group; j++) {
                cell_count[cells[j]]++;
                sum[cells[j]] += (double)in[group + j];
            }
        }
        for (int cell = 0; cell < CELLS; cell++) {
            const int m = cell - 2 * MAX_LEVEL;
            count[cell] += cell_count[cell];
            level_count[(m & 1 ? (m + (m > 0) - (m < 0)) / 2 : m / 2) + MAX_LEVEL] += cell_count[cell];
        }
        Py_END_ALLOW_THREADS
    }
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "search: bad arguments, or values beyond the levels");
    work_free(&w);
    free(k);
    PyBuffer_Release(&y);
    PyBuffer_Release(&c);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&sums);
    PyBuffer_Release(&level_counts);
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
    {"search", search_codes, METH_VARARGS, "Levels as codes, with each reconstruction level's count and sum."},
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
