/* Huffman-only deflate (RFC 1951) of the code image's scanlines, the hot loop
 * of writing a .wroll archive (see weightroll/_format/image.py, which falls
 * back to zlib-ng's Z_HUFFMAN_ONLY when this module is not built).
 *
 * A piece of the image (rows `first` to `stop`, each a filter byte 0 and
 * `width` codes, codes past the last one 0) becomes raw deflate blocks with
 * dynamic Huffman codes, one block per BLOCK bytes, each with its own code
 * lengths (as zlib starts a new block every 16-64k symbols). A piece that is
 * not the last ends with an empty stored block, byte-aligned, as zlib's
 * Z_FULL_FLUSH does, so that pieces concatenate into one stream. No LZ77
 * matches: the codes are close to independent, and literal coding is what
 * zlib's Huffman-only strategy does too, at about a third of its cost here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LITERALS 257 /* bytes 0..255 and end-of-block (256); no lengths, no distances */
#define END_OF_BLOCK 256
#define MAX_BITS 15
#define CODE_LENGTH_CODES 19
#define MAX_CODE_LENGTH_BITS 7
#define BLOCK 32768 /* bytes of scanlines per deflate block */

/* ---------------------------------------------------------------- bits out */

struct bits {
    uint8_t *out, *end;
    uint64_t buffer;
    int count;
    int overflow;
};

static inline void
put_bits(struct bits *b, uint32_t value, int length)
{
    b->buffer |= (uint64_t)value << b->count;
    b->count += length;
    if (b->count >= 32) {
        if (b->out + 4 <= b->end) {
            b->out[0] = (uint8_t)b->buffer;
            b->out[1] = (uint8_t)(b->buffer >> 8);
            b->out[2] = (uint8_t)(b->buffer >> 16);
            b->out[3] = (uint8_t)(b->buffer >> 24);
            b->out += 4;
        } else {
            b->overflow = 1;
        }
        b->buffer >>= 32;
        b->count -= 32;
    }
}

/* Flush whole bytes, then the last partial byte padded with zero bits. */
static void
align_bits(struct bits *b)
{
    while (b->count > 0) {
        if (b->out < b->end)
            *b->out++ = (uint8_t)b->buffer;
        else
            b->overflow = 1;
        b->buffer >>= 8;
        b->count = b->count > 8 ? b->count - 8 : 0;
    }
    b->buffer = 0;
}

/* ------------------------------------------------------- Huffman lengths */

/* Code lengths of at most `max_bits` for `n` symbols of frequencies `freq`
 * (symbols of frequency 0 get length 0). At least two symbols must be used.
 * Huffman's algorithm by the two-queue method on the sorted frequencies,
 * then lengths past `max_bits` folded back by the Kraft-sum method zlib and
 * miniz use, and assigned to the symbols, shortest to the most frequent. */
static void
huffman_lengths(const uint32_t *freq, int n, int max_bits, uint8_t *lengths)
{
    int order[LITERALS], used = 0;
    for (int i = 0; i < n; i++) {
        lengths[i] = 0;
        if (freq[i])
            order[used++] = i;
    }
    /* insertion sort by frequency, then symbol (n <= 257) */
    for (int i = 1; i < used; i++) {
        int s = order[i], j = i - 1;
        while (j >= 0 && (freq[order[j]] > freq[s] || (freq[order[j]] == freq[s] && order[j] > s))) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = s;
    }
    /* two queues: leaves (sorted), then internal nodes in creation order */
    uint64_t weight[2 * LITERALS];
    int parent[2 * LITERALS];
    for (int i = 0; i < used; i++)
        weight[i] = freq[order[i]];
    int leaf = 0, node = used, next = used;
    for (int k = 0; k < used - 1; k++) {
        int pick[2];
        for (int t = 0; t < 2; t++) {
            if (leaf < used && (node >= next || weight[leaf] <= weight[node]))
                pick[t] = leaf++;
            else
                pick[t] = node++;
        }
        weight[next] = weight[pick[0]] + weight[pick[1]];
        parent[pick[0]] = parent[pick[1]] = next;
        next++;
    }
    /* depths: the root is the last node */
    int depth[2 * LITERALS];
    int root = next - 1;
    depth[root] = 0;
    for (int i = root - 1; i >= 0; i--)
        depth[i] = depth[parent[i]] + 1;
    /* count codes per length, lengths past max_bits folded to max_bits */
    int count[64] = {0};
    for (int i = 0; i < used; i++)
        count[depth[i] < max_bits ? depth[i] : max_bits]++;
    uint32_t total = 0;
    for (int l = max_bits; l > 0; l--)
        total += (uint32_t)count[l] << (max_bits - l);
    while (total != (1u << max_bits)) { /* over-full: lengthen a shorter code */
        count[max_bits]--;
        for (int l = max_bits - 1; l > 0; l--)
            if (count[l]) {
                count[l]--;
                count[l + 1] += 2;
                break;
            }
        total--;
    }
    /* shortest codes to the most frequent symbols (order is ascending) */
    int i = used - 1;
    for (int l = 1; l <= max_bits; l++)
        for (int c = count[l]; c > 0; c--)
            lengths[order[i--]] = (uint8_t)l;
}

/* Canonical codes (RFC 1951 3.2.2), bit-reversed for LSB-first output. */
static void
canonical_codes(const uint8_t *lengths, int n, uint16_t *codes)
{
    int count[MAX_BITS + 1] = {0};
    for (int i = 0; i < n; i++)
        count[lengths[i]]++;
    count[0] = 0;
    uint32_t next[MAX_BITS + 2];
    uint32_t code = 0;
    for (int l = 1; l <= MAX_BITS; l++) {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    for (int i = 0; i < n; i++) {
        int l = lengths[i];
        if (!l)
            continue;
        uint32_t c = next[l]++, r = 0;
        for (int k = 0; k < l; k++)
            r |= ((c >> k) & 1u) << (l - 1 - k);
        codes[i] = (uint16_t)r;
    }
}

/* ------------------------------------------------------------ one block */

static const uint8_t CODE_LENGTH_ORDER[CODE_LENGTH_CODES] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5,
                                                              11, 4, 12, 3, 13, 2, 14, 1, 15};

/* The dynamic block header: HLIT = 257 literal/length codes, HDIST = one
 * distance code of length 0 (no distances are used), the code lengths run-
 * length coded with symbols 16-18, and their own code. */
static void
write_header(struct bits *b, int final, const uint8_t *lengths)
{
    uint8_t all[LITERALS + 1];
    memcpy(all, lengths, LITERALS);
    all[LITERALS] = 0; /* the one distance code */
    const int n = LITERALS + 1;
    /* run-length symbols: (symbol, extra bits value) */
    uint8_t sym[LITERALS + 1], extra[LITERALS + 1];
    int m = 0;
    for (int i = 0; i < n;) {
        int value = all[i], run = 1;
        while (i + run < n && all[i + run] == value)
            run++;
        int left = run;
        if (value == 0) {
            while (left >= 11) {
                int r = left < 138 ? left : 138;
                sym[m] = 18, extra[m++] = (uint8_t)(r - 11), left -= r;
            }
            if (left >= 3)
                sym[m] = 17, extra[m++] = (uint8_t)(left - 3), left = 0;
        } else {
            sym[m] = (uint8_t)value, extra[m++] = 0, left--;
            while (left >= 3) {
                int r = left < 6 ? left : 6;
                sym[m] = 16, extra[m++] = (uint8_t)(r - 3), left -= r;
            }
        }
        while (left-- > 0)
            sym[m] = (uint8_t)value, extra[m++] = 0;
        i += run;
    }
    uint32_t freq[CODE_LENGTH_CODES] = {0};
    int distinct = 0;
    for (int i = 0; i < m; i++)
        distinct += freq[sym[i]]++ == 0;
    if (distinct < 2) /* a complete code needs two symbols (inflaters refuse an incomplete one) */
        freq[sym[0] == 0 ? 18 : 0] = 1;
    uint8_t cl_lengths[CODE_LENGTH_CODES];
    uint16_t cl_codes[CODE_LENGTH_CODES];
    huffman_lengths(freq, CODE_LENGTH_CODES, MAX_CODE_LENGTH_BITS, cl_lengths);
    canonical_codes(cl_lengths, CODE_LENGTH_CODES, cl_codes);
    int hclen = CODE_LENGTH_CODES;
    while (hclen > 4 && cl_lengths[CODE_LENGTH_ORDER[hclen - 1]] == 0)
        hclen--;
    put_bits(b, final ? 1 : 0, 1);
    put_bits(b, 2, 2); /* dynamic Huffman codes */
    put_bits(b, LITERALS - 257, 5);
    put_bits(b, 0, 5); /* HDIST: one distance code */
    put_bits(b, (uint32_t)(hclen - 4), 4);
    for (int i = 0; i < hclen; i++)
        put_bits(b, cl_lengths[CODE_LENGTH_ORDER[i]], 3);
    static const int EXTRA_BITS[3] = {2, 3, 7};
    for (int i = 0; i < m; i++) {
        put_bits(b, cl_codes[sym[i]], cl_lengths[sym[i]]);
        if (sym[i] >= 16)
            put_bits(b, extra[i], EXTRA_BITS[sym[i] - 16]);
    }
}

/* The image's codes: row r holds codes [r * width, (r + 1) * width), zeros
 * past the last of the `n` codes; its scanline is a filter byte 0 and them. */
struct image {
    const uint8_t *codes;
    Py_ssize_t n, width;
};

/* Writes the bytes' codes and keeps the Adler-32 sums of the scanlines. */
struct emitter {
    struct bits b;
    const uint16_t *huff;
    const uint8_t *lengths;
    uint32_t a, s2;
    int pending; /* bytes since the sums were last reduced */
};

/* Calls `visit(state, bytes, length)` for the raw scanline bytes [begin, end)
 * of the piece that starts at row `first`, in runs: a row's filter byte, its
 * codes, its padding zeros. */
static const uint8_t ZEROS[4096];

typedef void (*run_visitor)(void *state, const uint8_t *bytes, Py_ssize_t length);

static void
for_runs(const struct image *im, Py_ssize_t first, Py_ssize_t begin, Py_ssize_t end, run_visitor visit,
         void *state)
{
    const Py_ssize_t stride = im->width + 1;
    Py_ssize_t i = begin;
    while (i < end) {
        Py_ssize_t column = i % stride;
        if (column == 0) { /* the filter byte */
            visit(state, ZEROS, 1);
            i++;
            continue;
        }
        Py_ssize_t run = stride - column < end - i ? stride - column : end - i;
        Py_ssize_t at = (first + i / stride) * im->width + column - 1;
        Py_ssize_t real = at >= im->n ? 0 : (im->n - at < run ? im->n - at : run);
        if (real)
            visit(state, im->codes + at, real);
        for (Py_ssize_t pad = run - real; pad > 0;) { /* padding after the last code */
            Py_ssize_t k = pad < (Py_ssize_t)sizeof(ZEROS) ? pad : (Py_ssize_t)sizeof(ZEROS);
            visit(state, ZEROS, k);
            pad -= k;
        }
        i += run;
    }
}

/* Four histograms, summed at the end: a byte that repeats does not wait on
 * its own previous increment. */
static void
count_run(void *state, const uint8_t *p, Py_ssize_t length)
{
    uint32_t (*h)[256] = (uint32_t(*)[256])state;
    Py_ssize_t k = 0;
    for (; k + 4 <= length; k += 4) {
        h[0][p[k]]++;
        h[1][p[k + 1]]++;
        h[2][p[k + 2]]++;
        h[3][p[k + 3]]++;
    }
    for (; k < length; k++)
        h[0][p[k]]++;
}

/* Adler-32 sums over a run, 16 bytes at a time in a form the compiler
 * vectorises: b += 16 a + sum((16 - k) x_k), a += sum(x_k). */
static inline void
adler_run(struct emitter *e, const uint8_t *p, Py_ssize_t length)
{
    uint32_t a = e->a, s2 = e->s2;
    int pending = e->pending;
    Py_ssize_t k = 0;
    while (k < length) {
        Py_ssize_t n = length - k;
        if (n > 5552 - pending)
            n = 5552 - pending;
        Py_ssize_t j = 0;
        for (; j + 16 <= n; j += 16) {
            uint32_t sum = 0, weighted = 0;
            for (int t = 0; t < 16; t++) {
                sum += p[k + j + t];
                weighted += (uint32_t)(16 - t) * p[k + j + t];
            }
            s2 += 16 * a + weighted;
            a += sum;
        }
        for (; j < n; j++) {
            a += p[k + j];
            s2 += a;
        }
        k += n;
        pending += (int)n;
        if (pending == 5552) { /* NMAX: the sums cannot overflow 32 bits before */
            a %= 65521;
            s2 %= 65521;
            pending = 0;
        }
    }
    e->a = a;
    e->s2 = s2;
    e->pending = pending;
}

static void
emit_run(void *state, const uint8_t *p, Py_ssize_t length)
{
    struct emitter *e = (struct emitter *)state;
    if (e->b.end - e->b.out < length * 2 + 8) { /* near the end of the buffer: checked writes */
        for (Py_ssize_t k = 0; k < length; k++)
            put_bits(&e->b, e->huff[p[k]], e->lengths[p[k]]);
    } else { /* room for 15 bits a byte: the bit buffer in registers, no checks */
        uint64_t buffer = e->b.buffer;
        int count = e->b.count;
        uint8_t *out = e->b.out;
        const uint16_t *huff = e->huff;
        const uint8_t *lengths = e->lengths;
        /* Two codes joined first (at most 30 bits): the chain of shifts by
         * `count`, which waits on the previous length, is half as long. */
        for (Py_ssize_t k = 0; k < length; k += 2) {
            uint64_t pair = huff[p[k]];
            int pair_length = lengths[p[k]];
            if (k + 1 < length) {
                pair |= (uint64_t)huff[p[k + 1]] << pair_length;
                pair_length += lengths[p[k + 1]];
            }
            buffer |= pair << count;
            count += pair_length;
            if (count >= 32) {
                out[0] = (uint8_t)buffer;
                out[1] = (uint8_t)(buffer >> 8);
                out[2] = (uint8_t)(buffer >> 16);
                out[3] = (uint8_t)(buffer >> 24);
                out += 4;
                buffer >>= 32;
                count -= 32;
            }
        }
        e->b.buffer = buffer;
        e->b.count = count;
        e->b.out = out;
    }
    adler_run(e, p, length);
}

/* A C-contiguous buffer of bytes (uint8 items), writable if asked. */
static int
get_bytes(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *format = view->format ? view->format : "B";
    if (*format == '@' || *format == '=' || *format == '<' || *format == '>' || *format == '!')
        format++;
    if (view->itemsize != 1 || strcmp(format, "B") != 0) {
        PyErr_Format(PyExc_ValueError, "huffman_rows: %s must hold uint8 items, got format '%s'", name,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* huffman_rows(codes, width, first, stop, final, out) -> (length, adler32)
 *
 * Writes the raw deflate blocks of scanlines [first, stop) into `out` (a
 * writable uint8 buffer of at least `bound(...)` bytes) and returns how many
 * bytes were written and the Adler-32 of the scanlines. */
static PyObject *
huffman_rows(PyObject *self, PyObject *args)
{
    PyObject *codeso, *outo;
    Py_ssize_t width, first, stop;
    int final;
    if (!PyArg_ParseTuple(args, "OnnnpO", &codeso, &width, &first, &stop, &final, &outo))
        return NULL;
    Py_buffer codes, out;
    if (get_bytes(codeso, &codes, 0, "codes") < 0)
        return NULL;
    if (get_bytes(outo, &out, 1, "out") < 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    int ok = width > 0 && width < PY_SSIZE_T_MAX && first >= 0 && stop > first &&
             stop <= PY_SSIZE_T_MAX / (width + 1);
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "huffman_rows: bad rows or width");
    else if ((stop - first) * (width + 1) / 8 > out.len) { /* a byte costs at least one bit */
        PyErr_SetString(PyExc_ValueError, "huffman_rows: output buffer too small");
        ok = 0;
    }
    Py_ssize_t written = 0;
    uint32_t adler = 1;
    if (ok) {
        struct image im = {(const uint8_t *)codes.buf, codes.len, width};
        const Py_ssize_t total = (stop - first) * (width + 1);
        uint8_t lengths[LITERALS];
        uint16_t huff[LITERALS];
        struct emitter e = {{(uint8_t *)out.buf, (uint8_t *)out.buf + out.len, 0, 0, 0}, huff, lengths, 1, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t begin = 0; begin < total && !e.b.overflow; begin += BLOCK) {
            Py_ssize_t end = begin + BLOCK < total ? begin + BLOCK : total;
            uint32_t histograms[4][256] = {{0}}, freq[LITERALS];
            for_runs(&im, first, begin, end, count_run, histograms);
            for (int v = 0; v < 256; v++)
                freq[v] = histograms[0][v] + histograms[1][v] + histograms[2][v] + histograms[3][v];
            freq[END_OF_BLOCK] = 1;
            huffman_lengths(freq, LITERALS, MAX_BITS, lengths);
            canonical_codes(lengths, LITERALS, huff);
            write_header(&e.b, final && end == total, lengths);
            for_runs(&im, first, begin, end, emit_run, &e);
            put_bits(&e.b, huff[END_OF_BLOCK], lengths[END_OF_BLOCK]);
        }
        if (!final) { /* an empty stored block: byte-aligned, as Z_FULL_FLUSH ends */
            put_bits(&e.b, 0, 3);
            align_bits(&e.b);
            put_bits(&e.b, 0x0000, 16);
            put_bits(&e.b, 0xFFFF, 16);
        }
        align_bits(&e.b);
        Py_END_ALLOW_THREADS
        adler = ((e.s2 % 65521) << 16) | (e.a % 65521);
        written = e.b.out - (uint8_t *)out.buf;
        if (e.b.overflow) {
            PyErr_SetString(PyExc_ValueError, "huffman_rows: output buffer too small");
            ok = 0;
        }
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    return Py_BuildValue("nk", written, (unsigned long)adler);
}

static PyMethodDef methods[] = {
    {"huffman_rows", huffman_rows, METH_VARARGS, "Huffman-only raw deflate of image rows (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_deflate", "Huffman-only deflate of the code image (optional; zlib-ng is the fallback).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__deflate(void)
{
    return PyModule_Create(&module);
}
