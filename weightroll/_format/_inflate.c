/* Inflate for the code image's own kind of deflate stream (see
 * weightroll/_format/image.py, `_inflate`, which falls back to zlib-ng for
 * anything this does not take): blocks stored, or Huffman-coded with
 * literals only (what zlib's Huffman-only strategy writes), inflated
 * straight into the pixel array, each row's filter byte checked to be 0
 * (type None) and dropped, the raw bytes' Adler-32 summed on the way.
 *
 * A block that uses a length code (a match), an incomplete Huffman code, or
 * anything else unexpected stops it with FALLBACK: the caller then inflates
 * the stream with zlib-ng, which decides whether it is valid. Every read is
 * bounded by the input and every write by the caller's limit, whatever the
 * bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OK 0
#define FALLBACK 1

#define FAST_BITS 12
#define MAX_BITS 15
#define LITERALS 288

/* The stream's bytes, a list of pieces (IDAT chunks), read a bit at a time
 * from the lowest bit of each byte, as deflate packs them. */
typedef struct {
    Py_buffer *pieces;
    Py_ssize_t count, piece;
    const uint8_t *at, *end;
    uint64_t bits;
    int have;  /* bits held in `bits` */
} Input;

/* At least 57 bits in `bits` where the input has them. The bits above
 * `have` are either 0 or the next input bits, so a word can be or-ed in. */
static void
refill(Input *in)
{
    while (in->have <= 56) {
        if (in->end - in->at >= 8) {
            uint64_t word;
            memcpy(&word, in->at, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            word = __builtin_bswap64(word);
#endif
            in->bits |= word << in->have;
            in->at += (63 - in->have) >> 3;
            in->have |= 56;
            return;
        }
        if (in->at == in->end) {
            if (in->piece + 1 >= in->count)
                return;  /* no more input: `have` stays short */
            in->piece++;
            in->at = (const uint8_t *)in->pieces[in->piece].buf;
            in->end = in->at + in->pieces[in->piece].len;
            continue;
        }
        in->bits |= (uint64_t)*in->at++ << in->have;
        in->have += 8;
    }
}

/* The next `n` bits (n <= 32), or -1 past the end of the input. */
static inline long
take(Input *in, int n)
{
    if (in->have < n) {
        refill(in);
        if (in->have < n)
            return -1;
    }
    const long v = (long)(in->bits & ((1ull << n) - 1));
    in->bits >>= n;
    in->have -= n;
    return v;
}

/* A canonical Huffman code: a table of the codes up to FAST_BITS long,
 * indexed by the next FAST_BITS bits (entry: length << 9 | symbol, 0 for a
 * longer code), and, for those, the counts and symbols of each length. For
 * a literal/length code, `pair` gives the literals those bits start with,
 * one or two (see `pair_entry`), so that the hot loop takes two at once. */
typedef struct {
    uint16_t fast[1 << FAST_BITS];
    uint32_t pair[1 << FAST_BITS];
    uint16_t count[MAX_BITS + 1];
    uint16_t symbol[LITERALS];
} Code;

/* Build `code` from `n` code lengths; FALLBACK for an over-subscribed or
 * incomplete code (zlib decides those), or one without any symbol. */
static int
build(Code *code, const uint8_t *lengths, int n, int pairs)
{
    uint16_t offsets[MAX_BITS + 2];
    memset(code->count, 0, sizeof(code->count));
    for (int s = 0; s < n; s++)
        code->count[lengths[s]]++;
    if (code->count[0] == n)
        return FALLBACK;
    int left = 1;
    for (int len = 1; len <= MAX_BITS; len++) {
        left = 2 * left - code->count[len];
        if (left < 0)
            return FALLBACK;
    }
    if (left != 0)
        return FALLBACK;
    offsets[1] = 0;
    for (int len = 1; len <= MAX_BITS; len++)
        offsets[len + 1] = offsets[len] + code->count[len];
    for (int s = 0; s < n; s++)
        if (lengths[s])
            code->symbol[offsets[lengths[s]]++] = (uint16_t)s;
    memset(code->fast, 0, sizeof(code->fast));
    /* Canonical codes in order of length then symbol; each short one fills
     * every table entry whose low bits are its code, bit-reversed. */
    unsigned next = 0;
    int i = 0;
    for (int len = 1; len <= MAX_BITS; len++, next <<= 1)
        for (int c = 0; c < code->count[len]; c++, next++, i++) {
            if (len > FAST_BITS)
                continue;
            unsigned reversed = 0;
            for (int b = 0; b < len; b++)
                reversed |= ((next >> b) & 1u) << (len - 1 - b);
            for (unsigned e = reversed; e < (1u << FAST_BITS); e += 1u << len)
                code->fast[e] = (uint16_t)(len << 9 | code->symbol[i]);
        }
    /* pair[e]: bits 0-1 how many literals the bits e begin with (0: none, a
     * longer code or another symbol: the slow way), 2-5 the first one's
     * length, 8-12 both lengths, 16-23 and 24-31 the literals. */
    for (unsigned e = 0; pairs && e < (1u << FAST_BITS); e++) {
        const unsigned first = code->fast[e];
        uint32_t entry = 0;
        if (first && (first & 511) < 256) {
            const unsigned len = first >> 9, second = code->fast[e >> len];
            entry = 1u | len << 2 | len << 8 | (first & 255) << 16;
            if (second && (second & 511) < 256 && len + (second >> 9) <= FAST_BITS)
                entry = 2u | len << 2 | (len + (second >> 9)) << 8 | (first & 255) << 16 | (second & 255) << 24;
        }
        code->pair[e] = entry;
    }
    return OK;
}

/* The next symbol of `code`, or -1 past the end of the input. */
static inline int
decode(Input *in, const Code *code)
{
    if (in->have < MAX_BITS)
        refill(in);
    const unsigned entry = code->fast[in->bits & ((1u << FAST_BITS) - 1)];
    if (entry) {
        const int len = (int)(entry >> 9);
        if (len > in->have)
            return -1;
        in->bits >>= len;
        in->have -= len;
        return (int)(entry & 511);
    }
    /* A code longer than FAST_BITS: bit by bit, as canonical codes go. */
    int first = 0, index = 0, value = 0;
    for (int len = 1; len <= MAX_BITS; len++) {
        if (len > in->have)
            return -1;
        value |= (int)((in->bits >> (len - 1)) & 1u);
        const int count = code->count[len];
        if (value - first < count) {
            in->bits >>= len;
            in->have -= len;
            return code->symbol[index + value - first];
        }
        index += count;
        first = (first + count) << 1;
        value <<= 1;
    }
    return -1;
}

/* Where the raw bytes go: pixels, a row's filter byte (which must be 0)
 * dropped; `left` raw bytes may still come. */
typedef struct {
    uint8_t *pixel;
    Py_ssize_t column, stride, left;
    uint32_t a, b;
    int since;  /* bytes since the Adler sums were last reduced */
} Output;

#define ADLER_BASE 65521u
#define ADLER_RUN 5552

/* One raw byte; FALLBACK for a filter byte other than 0 or a byte beyond the limit. */
static inline int
put(Output *out, unsigned byte)
{
    if (out->left-- <= 0)
        return FALLBACK;
    if (out->column == 0) {
        if (byte)
            return FALLBACK;
    } else {
        *out->pixel++ = (uint8_t)byte;
    }
    if (++out->column == out->stride)
        out->column = 0;
    out->a += byte;
    out->b += out->a;
    if (++out->since == ADLER_RUN) {
        out->a %= ADLER_BASE;
        out->b %= ADLER_BASE;
        out->since = 0;
    }
    return OK;
}

static inline void
reduce(Output *out)
{
    out->a %= ADLER_BASE;
    out->b %= ADLER_BASE;
    out->since = 0;
}

/* The symbols of one Huffman-coded block of literals, up to its end of
 * block, into `out`. The hot loop runs along a row's pixels (to the row's
 * end, the limit, or the point where the Adler sums must be reduced), with
 * the bit buffer in registers; anything else (a filter byte, a code longer
 * than FAST_BITS, the end of the block or of the input) goes through
 * `decode` and `put`, one symbol at a time. */
static int
literals(Input *in, const Code *code, Output *out)
{
    const uint32_t *pair = code->pair;
    for (;;) {
        Py_ssize_t run = out->stride - out->column;
        if (out->column == 0 || run > out->left || run > ADLER_RUN - out->since)
            run = 0;  /* a filter byte, or near the limit or a reduction: one symbol the slow way */
        uint8_t *p = out->pixel;
        uint8_t *const stop = p + run;
        uint32_t a = out->a, b = out->b;
        uint64_t bits = in->bits;
        int have = in->have;
        const uint8_t *at = in->at;
        while (stop - p >= 2) {  /* the row's last pixel, if it comes alone, the slow way */
            if (have < FAST_BITS) {
                if (in->end - at < 8)
                    break;
                uint64_t word;
                memcpy(&word, at, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
                word = __builtin_bswap64(word);
#endif
                bits |= word << have;
                at += (63 - have) >> 3;
                have |= 56;
            }
            const uint32_t entry = pair[bits & ((1u << FAST_BITS) - 1)];
            if (!(entry & 3))
                break;
            /* One literal or two, without a branch on which (a coin toss):
             * both bytes written, the second overwritten later if not one. */
            const unsigned two = (entry & 3) >> 1, first = (entry >> 16) & 255, second = entry >> 24;
            const unsigned len = (entry >> 8) & 31;
            bits >>= len;
            have -= (int)len;
            p[0] = (uint8_t)first;
            p[1] = (uint8_t)second;
            p += 1 + two;
            a += first;
            b += a;
            a += second;  /* 0 for one literal */
            b += a & (0u - two);
        }
        const Py_ssize_t done = p - out->pixel;
        in->bits = bits;
        in->have = have;
        in->at = at;
        out->pixel = p;
        out->a = a;
        out->b = b;
        out->left -= done;
        out->since += (int)done;
        out->column += done;
        if (out->column == out->stride)
            out->column = 0;
        if (out->since >= ADLER_RUN - out->stride - 1)
            reduce(out);
        if (p < stop || run == 0) {
            const int symbol = decode(in, code);
            if (symbol == 256)
                return OK;
            if (symbol < 0 || symbol > 256 || put(out, (unsigned)symbol) != OK)
                return FALLBACK;  /* a length code (a match), or the end of the input */
        }
    }
}

static const uint8_t LENGTH_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* A dynamic block's header: its literal/length code into `literals`. */
static int
dynamic_header(Input *in, Code *literals, Code *scratch)
{
    const long hlit = take(in, 5), hdist = take(in, 5), hclen = take(in, 4);
    if (hlit < 0 || hdist < 0 || hclen < 0 || hlit + 257 > 286 || hdist + 1 > 30)
        return FALLBACK;
    uint8_t lengths[LITERALS + 32] = {0};
    for (int i = 0; i < hclen + 4; i++) {
        const long v = take(in, 3);
        if (v < 0)
            return FALLBACK;
        lengths[LENGTH_ORDER[i]] = (uint8_t)v;
    }
    if (build(scratch, lengths, 19, 0) != OK)
        return FALLBACK;
    const int n = (int)(hlit + 257 + hdist + 1);
    memset(lengths, 0, sizeof(lengths));
    for (int i = 0; i < n;) {
        const int symbol = decode(in, scratch);
        if (symbol < 0)
            return FALLBACK;
        if (symbol < 16) {
            lengths[i++] = (uint8_t)symbol;
            continue;
        }
        int value = 0;
        long extra;
        if (symbol == 16) {
            if (i == 0)
                return FALLBACK;
            value = lengths[i - 1];
            extra = take(in, 2) + 3;
        } else if (symbol == 17) {
            extra = take(in, 3) + 3;
        } else {
            extra = take(in, 7) + 11;
        }
        int repeat = (int)extra;
        if (extra < 3 || (symbol == 18 && extra < 11) || i + repeat > n)  /* past the input, or too many */
            return FALLBACK;
        while (repeat--)
            lengths[i++] = (uint8_t)value;
    }
    if (lengths[256] == 0)
        return FALLBACK;
    /* The distance code goes unused, but zlib refuses a block whose code is
     * over-subscribed or incomplete (bar one code of one bit): so must this,
     * or leave it to zlib. Zero codes are fine. */
    int left = 1, used = 0;
    uint16_t counts[MAX_BITS + 1] = {0};
    for (int i = 0; i <= hdist; i++)
        counts[lengths[hlit + 257 + i]]++;
    for (int len = 1; len <= MAX_BITS; len++) {
        left = 2 * left - counts[len];
        used += counts[len];
        if (left < 0)
            return FALLBACK;
    }
    if (used && left)
        return FALLBACK;
    return build(literals, lengths, (int)(hlit + 257), 1);
}

/* The fixed literal/length code (RFC 1951, 3.2.6), built when the module is. */
static Code fixed;

static int
inflate_part(Input *in, Output *out, int last, int *final)
{
    Code *literal_code = PyMem_RawMalloc(2 * sizeof(Code));
    if (literal_code == NULL)
        return -1;
    Code *scratch = literal_code + 1;
    int status = OK;
    *final = 0;
    for (;;) {
        refill(in);
        if (!last && in->have == 0)
            break;  /* the part ends between two blocks */
        const long header = take(in, 3);
        if (header < 0) {
            status = FALLBACK;
            break;
        }
        const int type = (int)(header >> 1);
        if (type == 0) {  /* stored: to the byte boundary, then LEN, NLEN and the bytes */
            take(in, in->have & 7);
            const long len = take(in, 16), nlen = take(in, 16);
            if (len < 0 || nlen < 0 || (len ^ 0xFFFF) != nlen) {
                status = FALLBACK;
                break;
            }
            for (long i = 0; i < len && status == OK; i++) {
                const long byte = take(in, 8);
                status = byte < 0 ? FALLBACK : put(out, (unsigned)byte);
            }
        } else if (type == 1 || type == 2) {
            const Code *code = &fixed;
            if (type == 2) {
                status = dynamic_header(in, literal_code, scratch);
                code = literal_code;
            }
            if (status == OK)
                status = literals(in, code, out);
        } else {
            status = FALLBACK;
        }
        if (status != OK)
            break;
        if (header & 1) {  /* the final block */
            *final = 1;
            take(in, in->have & 7);
            break;
        }
    }
    PyMem_RawFree(literal_code);
    return status;
}

/* rows(pieces, out, width, start, limit, last) -> (length, adler32, trailer)
 * or None: inflate the raw deflate data in `pieces` (a list of buffers)
 * into the pixels `out` (width `width`), its first raw byte being raw byte
 * `start` of the image, at most `limit - start` raw bytes. With `last`, the
 * data must end the stream (its final block), and `trailer` is the bytes
 * after it; else the data must end between two blocks, and `trailer` is
 * None. None: not inflated here (the caller uses zlib-ng). */
static PyObject *
rows(PyObject *self, PyObject *args)
{
    PyObject *list, *outo;
    Py_ssize_t width, start, limit;
    int last;
    if (!PyArg_ParseTuple(args, "O!Onnnp", &PyList_Type, &list, &outo, &width, &start, &limit, &last))
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(outo, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    const Py_ssize_t count = PyList_GET_SIZE(list);
    const Py_ssize_t stride = width + 1;
    if (width <= 0 || start < 0 || limit < start || count == 0 || limit / stride * width > out.len) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "rows: bad arguments");
        return NULL;
    }
    Py_buffer *pieces = PyMem_Calloc((size_t)count, sizeof(Py_buffer));
    if (pieces == NULL) {
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    Py_ssize_t got = 0;
    for (; got < count; got++)
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, got), &pieces[got], PyBUF_SIMPLE) < 0)
            break;
    PyObject *result = NULL;
    if (got == count) {
        Input in = {pieces, count, 0, (const uint8_t *)pieces[0].buf,
                    (const uint8_t *)pieces[0].buf + pieces[0].len, 0, 0};
        const Py_ssize_t row = start / stride, column = start % stride;
        Output o = {(uint8_t *)out.buf + row * width + (column ? column - 1 : 0), column, stride, limit - start,
                    1, 0, 0};
        int status, final;
        Py_BEGIN_ALLOW_THREADS
        status = inflate_part(&in, &o, last, &final);
        Py_END_ALLOW_THREADS
        if (status < 0) {
            PyErr_NoMemory();
        } else if (status != OK || final != last) {
            result = Py_NewRef(Py_None);
        } else {
            const uint32_t adler = (o.b % ADLER_BASE) << 16 | (o.a % ADLER_BASE);
            const Py_ssize_t length = limit - start - o.left;
            if (last) {  /* the bytes after the final block: what is left in `bits`, then the input */
                PyObject *trailer = PyBytes_FromStringAndSize(NULL, 0);
                uint8_t held[8];
                int n = 0;
                while (in.have >= 8 && n < 8) {
                    held[n++] = (uint8_t)in.bits;
                    in.bits >>= 8;
                    in.have -= 8;
                }
                PyObject *head = PyBytes_FromStringAndSize((const char *)held, n);
                if (trailer != NULL && head != NULL) {
                    PyBytes_Concat(&trailer, head);
                    for (Py_ssize_t p = in.piece; trailer != NULL && p < count; p++) {
                        const uint8_t *from = p == in.piece ? in.at : (const uint8_t *)pieces[p].buf;
                        const uint8_t *to = (const uint8_t *)pieces[p].buf + pieces[p].len;
                        PyObject *rest = PyBytes_FromStringAndSize((const char *)from, to - from);
                        PyBytes_ConcatAndDel(&trailer, rest);
                    }
                }
                Py_XDECREF(head);
                if (trailer != NULL)
                    result = Py_BuildValue("nkN", length, (unsigned long)adler, trailer);
            } else {
                result = Py_BuildValue("nkO", length, (unsigned long)adler, Py_None);
            }
        }
    }
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&pieces[i]);
    PyMem_Free(pieces);
    PyBuffer_Release(&out);
    return result;
}

/* marks(data, start, end) -> how many times the four bytes 00 00 ff ff (the
 * empty stored block that ends a full flush) occur in data[start:end]:
 * memchr to each 0xff, which compressed bytes hold one in 256 of. */
static PyObject *
marks(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t start, end, found = 0;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &start, &end))
        return NULL;
    if (start < 0 || end > data.len || start > end) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "marks: bad range");
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)data.buf, *at = base + start + 2, *stop = base + end - 1;
    Py_BEGIN_ALLOW_THREADS
    while (at < stop) {  /* `at`: where the first 0xff of a mark would be */
        const uint8_t *ff = memchr(at, 0xff, (size_t)(stop - at));
        if (ff == NULL)
            break;
        found += ff[1] == 0xff && ff[-1] == 0 && ff[-2] == 0;
        at = ff + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, "Inflate literal-only deflate data into an image's pixels (see image._inflate)."},
    {"marks", marks, METH_VARARGS, "How many full-flush marks (00 00 ff ff) lie in a range of bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_inflate", "The code image's inflater (optional; zlib-ng is the fallback).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__inflate(void)
{
    uint8_t lengths[LITERALS];
    memset(lengths, 8, 144);
    memset(lengths + 144, 9, 112);
    memset(lengths + 256, 7, 24);
    memset(lengths + 280, 8, 8);
    if (build(&fixed, lengths, LITERALS, 1) != OK) {
        PyErr_SetString(PyExc_RuntimeError, "_inflate: the fixed Huffman code did not build");
        return NULL;
    }
    return PyModule_Create(&module);
}
