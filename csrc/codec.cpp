// codec.cpp: the pipeline of one frame and the C API of redml.h.
//
//   mask (special values, user mask) -> background (tile model) -> spots (ROI)
//   -> quantize (quantize.h) -> entropy (entropy.cpp) -> container (container.cpp)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "background.h"
#include "container.h"
#include "entropy.h"
#include "error.h"
#include "pixels.h"
#include "quantize.h"
#include "redml.h"
#include "spots.h"
#include "threads.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the chunk format is little-endian");

namespace redml {

namespace {

const uint32_t kRowsPerBand = 64;

// Per-type storage: exact values and background codes are unsigned integers of the
// pixel's width (16 or 32 bits).
template <class T>
struct Storage {
    using Word = typename std::conditional<sizeof(T) == 2, uint16_t, uint32_t>::type;
    static constexpr bool is_float = std::is_floating_point<T>::value;
    static constexpr uint64_t sym_max = sizeof(T) == 2 ? 0xFFFFu : 0xFFFFFFFFu;

    static int64_t unzigzag(Word w) {
        if constexpr (sizeof(T) == 2) return redml_unzigzag16(w);
        else return redml_unzigzag32(w);
    }
    // Exact pixels: residual against the tile prediction, modulo 2^bits (always
    // invertible), or the raw bits of a float.
    static Word exact_word(T x, int64_t pred) {
        if constexpr (is_float) {
            uint32_t u;
            std::memcpy(&u, &x, 4);
            return u;
        } else {
            Word r = (Word)((Word)x - (Word)pred);
            if constexpr (sizeof(T) == 2) return redml_zigzag16((int16_t)r);
            else return redml_zigzag32((int32_t)r);
        }
    }
    static T from_exact_word(Word w, int64_t pred) {
        if constexpr (is_float) {
            T x;
            std::memcpy(&x, &w, 4);
            return x;
        } else {
            return (T)(Word)((Word)unzigzag(w) + (Word)pred);
        }
    }
    static int64_t lo() { return is_float ? 0 : (int64_t)std::numeric_limits<T>::lowest(); }
    static int64_t hi() { return is_float ? 0 : (int64_t)std::numeric_limits<T>::max(); }
};

// Integer prediction per tile (llround of the stored mean, clamped to the dtype),
// identical in encoder and decoder. Float frames do not use it (their means may be any
// finite float32, beyond the range of llround): 0.
template <class T>
std::vector<int64_t> tile_predictions(const BackgroundModel &m) {
    std::vector<int64_t> pred(m.mean.size(), 0);
    if constexpr (!std::is_floating_point<T>::value)
        for (size_t t = 0; t < pred.size(); t++)
            pred[t] = std::min(std::max((int64_t)llround((double)m.mean[t]), Storage<T>::lo()), Storage<T>::hi());
    return pred;
}

// Dither, code offset and phase of a background pixel (quantize.h), with the per-tile
// constants computed once per tile span.
template <class T>
struct TileCoder {
    double step, inv_step, mean;
    int64_t s_int;
    redml_offset_tile off;
    TileCoder(double step_, double mean_, int64_t pred)
        : step(step_), inv_step(1.0 / step_), mean(mean_), s_int(std::is_floating_point<T>::value ? 0 : (int64_t)step_) {
        if constexpr (!std::is_floating_point<T>::value) off = redml_offset_setup(pred, s_int);
    }
    struct Pixel {
        int64_t u_int = 0;
        double u_float = 0;
        int64_t base = 0;
        unsigned phase = 0;
    };
    Pixel at(uint32_t seed, size_t i) const {
        Pixel px;
        if constexpr (std::is_floating_point<T>::value) {
            if (step > 0) {
                px.u_float = redml_dither_float(seed, i, step);
                px.base = redml_offset_float(mean, px.u_float, step, &px.phase);
            }
        } else {
            px.u_int = s_int > 1 ? redml_dither_int(seed, i, s_int) : 0;
            px.base = redml_offset_int(&off, px.u_int, s_int, &px.phase);
        }
        return px;
    }
};

template <class Fn>
void for_bands(uint32_t height, int nthreads, Fn fn) {
    for_row_bands(height, kRowsPerBand, nthreads, fn);
}

// ---- exact-pixel map as LEB128 run lengths (first run: not exact) ----

void put_varint(std::vector<uint8_t> &out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back((uint8_t)(v | 0x80));
        v >>= 7;
    }
    out.push_back((uint8_t)v);
}

std::vector<uint8_t> encode_runs(const uint8_t *exact, size_t n) {
    std::vector<uint8_t> out;
    uint8_t cur = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (exact[j] != 0) == (cur != 0)) j++;
        put_varint(out, j - i);
        i = j;
        cur ^= 1;
    }
    return out;
}

// Decodes the runs into `exact` (n bytes); returns the number of exact pixels.
uint64_t decode_runs(const uint8_t *p, size_t size, uint8_t *exact, size_t n) {
    size_t pos = 0, i = 0;
    uint8_t cur = 0;
    uint64_t n_exact = 0;
    bool first = true;
    while (pos < size) {
        uint64_t v = 0;
        int shift = 0;
        for (;;) {
            check(pos < size && shift <= 56, REDML_E_CORRUPT, "truncated run length in the exact mask");
            uint8_t b = p[pos++];
            v |= (uint64_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80)) break;
        }
        check(v > 0 || first, REDML_E_CORRUPT, "empty run in the exact mask");
        check(v <= n - i, REDML_E_CORRUPT, "exact mask runs exceed the frame");
        std::memset(exact + i, cur, v);
        if (cur) n_exact += v;
        i += v;
        cur ^= 1;
        first = false;
    }
    check(i == n, REDML_E_CORRUPT, "exact mask runs do not cover the frame");
    return n_exact;
}

// Concatenates vectors of words into one (little-endian) byte buffer, in one copy.
template <class W>
std::vector<uint8_t> concat_bytes(const std::vector<const std::vector<W> *> &parts) {
    size_t n = 0;
    for (const std::vector<W> *part : parts) n += part->size();
    std::vector<uint8_t> b(n * sizeof(W));
    size_t pos = 0;
    for (const std::vector<W> *part : parts) {
        if (!part->empty()) std::memcpy(b.data() + pos, part->data(), part->size() * sizeof(W));
        pos += part->size() * sizeof(W);
    }
    return b;
}

void validate_params(const redml_params &p) {
    check(p.mode == REDML_MODE_LOSSLESS || p.mode == REDML_MODE_QUANTIZED || p.mode == REDML_MODE_SPARSE,
          REDML_E_ARG, "mode must be lossless, quantized or sparse");
    check(std::isfinite(p.q) && p.q >= 0, REDML_E_ARG, "q must be a finite number >= 0");
    check(std::isfinite(p.gain) && p.gain > 0, REDML_E_ARG, "gain must be a finite number > 0");
    check(std::isfinite(p.mu_min) && p.mu_min >= 0, REDML_E_ARG, "mu_min must be a finite number >= 0");
    check(p.codec == REDML_CODEC_LZ4 || p.codec == REDML_CODEC_ZSTD || p.codec == REDML_CODEC_RANS, REDML_E_ARG,
          "codec must be rans, lz4 or zstd");
    check(p.codec != REDML_CODEC_RANS || p.shuffle != REDML_SHUFFLE_BIT, REDML_E_ARG,
          "rans codes byte planes: use the byte shuffle (or none)");
    check(p.shuffle >= REDML_SHUFFLE_NONE && p.shuffle <= REDML_SHUFFLE_BIT, REDML_E_ARG, "unknown shuffle");
    check(redml_recon_allowed(p.mode, p.recon, 0), REDML_E_ARG,
          "reconstruction not defined for this mode (Poisson: sparse only; mean and draw: quantized only)");
    check(!(p.recon == REDML_RECON_MEAN || p.recon == REDML_RECON_DRAW) || p.gain == 1.0f, REDML_E_ARG,
          "the mean and draw reconstructions model photon counts: gain must be 1");
    check(p.tile >= 1 && p.tile <= kMaxTile, REDML_E_ARG, "tile must be in [1, 1024]");
    check(p.block_elems >= 256 && p.block_elems <= (1u << 24) && p.block_elems % 8 == 0, REDML_E_ARG,
          "block_elems must be a multiple of 8 in [256, 2^24]");
    check(std::isfinite(p.roi_snr) && p.roi_snr > 0, REDML_E_ARG, "roi_snr must be a finite number > 0");
    check(p.level >= -7 && p.level <= 22, REDML_E_ARG, "zstd level must be in [-7, 22]");
}

StreamSpec spec_for(const ChunkHeader &h, const Section &s) {
    return StreamSpec{s.elem, s.shuffle, h.codec, 0, h.block_elems};
}

// ---------------------------------------------------------------- encoder

// The model the conditional reconstructions decode from: tile means of the background
// pixels only (ROI pixels left out: spot signal in a tile would raise its mean, and every
// background pixel decoded from it, so integrated intensities would come out low), and a
// tile without background pixels (ROI, gaps) takes its neighbours' mean, so interpolation
// near it does not pull towards 0.
template <class T>
BackgroundModel fit_background_model_outside_roi(const T *f, const std::vector<uint8_t> &usable,
                                                 const std::vector<uint8_t> &exact, uint32_t H, uint32_t W,
                                                 const redml_params &p, int nt) {
    const size_t N = (size_t)H * W;
    std::vector<uint8_t> background(N);
    for (size_t i = 0; i < N; i++) background[i] = usable[i] && !exact[i];
    TileGrid g(H, W, p.tile);
    BackgroundModel m = fit_background(f, background.data(), g, p, nt);
    std::vector<uint8_t> known(g.count(), 0);
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++)
            if (background[(size_t)y * W + x]) known[(size_t)(y / g.tile) * g.cols + x / g.tile] = 1;
    for (bool changed = true; changed;) {  // grow the known tiles into the empty ones
        changed = false;
        std::vector<uint8_t> next = known;
        for (uint32_t ty = 0; ty < g.rows; ty++)
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                size_t t = (size_t)ty * g.cols + tx;
                if (known[t]) continue;
                double sum = 0;
                int n = 0;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int64_t yy = (int64_t)ty + dy, xx = (int64_t)tx + dx;
                        if (yy < 0 || xx < 0 || yy >= g.rows || xx >= g.cols) continue;
                        size_t u = (size_t)yy * g.cols + (size_t)xx;
                        if (known[u]) sum += m.mean[u], n++;
                    }
                if (n) {
                    m.mean[t] = (float)(sum / n);
                    m.step[t] = (float)redml_step_int_bin(m.mean[t], p.q, p.gain, p.mu_min);
                    next[t] = 1;
                    changed = true;
                }
            }
        known.swap(next);
    }
    return m;
}

template <class T>
void encode_frame(const T *f, uint32_t H, uint32_t W, const uint8_t *roi_in, const uint8_t *mask_in,
                  const redml_params &p, void **out, size_t *out_size) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const int nt = resolve_threads(p.nthreads);
    const size_t N = (size_t)H * W;

    // mask: pixels the model must ignore and that are always stored exactly
    std::vector<uint8_t> usable(N);
    for_bands(H, nt, [&](size_t, uint32_t y0, uint32_t y1) {
        for (size_t i = (size_t)y0 * W; i < (size_t)y1 * W; i++)
            usable[i] = !(mask_in && mask_in[i]) && !is_special_value(f[i]);
    });
    const bool conditional = p.recon == REDML_RECON_MEAN || p.recon == REDML_RECON_DRAW;
    check(!conditional || !S::is_float, REDML_E_ARG, "the mean and draw reconstructions need integer data");
    // spots
    // Lossless mode is the quantized path with every step 1: keeping spots and special
    // pixels (gaps, saturation) apart from the background still pays (at 0.05 photons/px
    // the background stream alone is 15% smaller than one stream with the spots in it).
    std::vector<uint8_t> exact(N);
    if (roi_in) std::memcpy(exact.data(), roi_in, N);
    else {
        FinderParams fp;
        fp.gain = p.gain;
        fp.sigma_s = p.roi_snr;
        fp.mask_all_strong = true;
        fp.masked_pixels_neutral = true;
        find_spots(f, usable.data(), H, W, fp, exact.data(), nt);
        dilate(exact.data(), H, W, p.roi_margin, nt);
    }
    // background
    BackgroundModel model = conditional ? fit_background_model_outside_roi(f, usable, exact, H, W, p, nt)
                                        : fit_background(f, usable.data(), TileGrid(H, W, p.tile), p, nt);
    const std::vector<int64_t> preds = tile_predictions<T>(model);
    const TileGrid &g = model.grid;
    // quantize, band by band and tile span by tile span (per-tile constants hoisted)
    size_t nbands = (H + kRowsPerBand - 1) / kRowsPerBand;
    std::vector<std::vector<Word>> values(nbands);
    std::vector<std::vector<std::vector<Word>>> codes(nbands, std::vector<std::vector<Word>>(REDML_PHASES));
    const bool coded = p.mode != REDML_MODE_SPARSE;  // background goes to the code stream
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        size_t band_px = (size_t)(y1 - y0) * W, nv = 0;
        std::vector<Word> &vals = values[b];
        std::vector<std::vector<Word>> &cods = codes[b];
        std::vector<size_t> nc(REDML_PHASES, 0);
        vals.resize(band_px);
        if (coded)
            for (auto &c : cods) c.resize(band_px);
        for (uint32_t y = y0; y < y1; y++) {
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                size_t t = (size_t)(y / g.tile) * g.cols + tx;
                const int64_t pred = preds[t];
                size_t i0 = (size_t)y * W + (size_t)tx * g.tile;
                size_t i1 = (size_t)y * W + std::min<size_t>(W, (size_t)(tx + 1) * g.tile);
                const TileCoder<T> tc(model.step[t], model.mean[t], pred);
                for (size_t i = i0; i < i1; i++) {
                    bool keep = exact[i] || !usable[i];
                    if (!keep && coded) {
                        auto px = tc.at(p.seed, i);
                        if constexpr (S::is_float) {
                            uint32_t sym = 0;
                            keep = !(tc.step > 0 && redml_quantize_float(f[i], tc.step, px.u_float, px.base, &sym));
                            if (!keep) cods[px.phase][nc[px.phase]++] = sym;
                        } else {
                            uint64_t sym = 0;
                            keep = conditional ? !redml_quantize_bin((int64_t)f[i], tc.s_int, tc.inv_step, px.u_int,
                                                                     px.base, S::hi(), S::sym_max, &sym)
                                               : !redml_quantize_int((int64_t)f[i], tc.s_int, tc.inv_step, px.u_int,
                                                                     px.base, S::lo(), S::hi(), S::sym_max, &sym);
                            if (!keep) cods[px.phase][nc[px.phase]++] = (Word)sym;
                        }
                    }
                    if (keep) {
                        vals[nv++] = S::exact_word(f[i], pred);
                        exact[i] = 1;
                    }
                }
            }
        }
        vals.resize(nv);
        if (coded)
            for (int ph = 0; ph < REDML_PHASES; ph++) cods[ph].resize(nc[ph]);
    });
    // band results in raster order: the exact values, and each phase's codes
    std::vector<const std::vector<Word> *> value_parts;
    std::vector<std::vector<const std::vector<Word> *>> code_parts(REDML_PHASES);
    size_t n_exact = 0;
    for (size_t b = 0; b < nbands; b++) {
        value_parts.push_back(&values[b]);
        n_exact += values[b].size();
        for (int ph = 0; ph < REDML_PHASES; ph++) code_parts[ph].push_back(&codes[b][ph]);
    }

    // entropy + container
    ChunkHeader h;
    h.dtype = dtype_of<T>();
    h.mode = p.mode;
    h.codec = p.codec;
    h.recon = p.recon;
    h.tile = p.tile;
    h.height = H;
    h.width = W;
    h.q = p.mode == REDML_MODE_QUANTIZED ? p.q : 0.0f;
    h.gain = p.gain;
    h.mu_min = p.mu_min;
    h.seed = p.seed;
    h.block_elems = p.block_elems;
    h.n_exact = n_exact;

    struct Pending {
        uint16_t type;
        redml_shuffle shuffle;
        uint8_t elem;
        std::vector<uint8_t> raw;
    };
    std::vector<Pending> pending;
    pending.push_back({SECTION_MODEL, REDML_SHUFFLE_BYTE, 4, concat_bytes<float>({&model.mean, &model.step})});
    pending.push_back({SECTION_EXACT_MASK, REDML_SHUFFLE_NONE, 1, encode_runs(exact.data(), N)});
    pending.push_back({SECTION_EXACT_VALUES, p.shuffle, (uint8_t)sizeof(Word), concat_bytes(value_parts)});
    if (coded)
        for (int ph = 0; ph < REDML_PHASES; ph++)
            pending.push_back({SECTION_BACKGROUND_CODES, p.shuffle, (uint8_t)sizeof(Word), concat_bytes(code_parts[ph])});

    std::vector<std::vector<uint8_t>> stored(pending.size());
    std::vector<Section> sections(pending.size());
    for (size_t k = 0; k < pending.size(); k++) {
        StreamSpec spec{pending[k].elem, pending[k].shuffle, p.codec, p.level, p.block_elems};
        stored[k] = encode_stream(pending[k].raw.data(), pending[k].raw.size(), spec, nt);
        Section &s = sections[k];
        s.type = pending[k].type;
        s.shuffle = pending[k].shuffle;
        s.elem = pending[k].elem;
        s.raw_size = pending[k].raw.size();
        s.data = stored[k].data();
        s.stored_size = stored[k].size();
    }
    write_chunk(h, sections, out, out_size);
}

// ---------------------------------------------------------------- decoder

template <class T>
BackgroundModel read_model(const ParsedChunk &pc, int nt) {
    const ChunkHeader &h = pc.header;
    const Section *s = pc.find(SECTION_MODEL);  // its size checked by parse_chunk
    TileGrid g(h.height, h.width, h.tile);
    std::vector<float> raw(2 * g.count());
    decode_stream(s->data, s->stored_size, (uint8_t *)raw.data(), s->raw_size, spec_for(h, *s), nt);
    BackgroundModel m;
    m.grid = g;
    m.mean.assign(raw.begin(), raw.begin() + g.count());
    m.step.assign(raw.begin() + g.count(), raw.end());
    for (size_t t = 0; t < g.count(); t++) {
        float mean = m.mean[t], step = m.step[t];
        // Float frames: the mean of finite float32 pixels is any finite float32.
        check(std::isfinite(mean) && (std::is_floating_point<T>::value || std::fabs(mean) < 1e10f), REDML_E_CORRUPT,
              "invalid model mean");
        if constexpr (std::is_floating_point<T>::value) {
            check(std::isfinite(step) && step >= 0 && step < 1e30f, REDML_E_CORRUPT, "invalid model step");
        } else {
            const bool conditional = h.recon == REDML_RECON_MEAN || h.recon == REDML_RECON_DRAW;
            check(step >= 1 && step <= 2097153.0f && std::floor(step) == step && (conditional || ((int64_t)step & 1)),
                  REDML_E_CORRUPT, "invalid model step");
        }
    }
    return m;
}

template <class T>
void decode_frame(const ParsedChunk &pc, T *out, int recon, int nt) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const ChunkHeader &h = pc.header;
    const uint32_t H = h.height, W = h.width;
    const size_t N = (size_t)H * W;

    // Sections and block tables were checked against the header by parse_chunk.
    const Section *mask_s = pc.find(SECTION_EXACT_MASK);
    const Section *vals_s = pc.find(SECTION_EXACT_VALUES);
    std::vector<const Section *> codes_s = pc.find_all(SECTION_BACKGROUND_CODES);
    const uint64_t n_exact = h.n_exact;

    BackgroundModel model = read_model<T>(pc, nt);
    const std::vector<int64_t> preds = tile_predictions<T>(model);
    const TileGrid &g = model.grid;
    if (h.mode == REDML_MODE_LOSSLESS) {  // a lossless chunk must not carry a lossy step
        float lossless_step = std::is_floating_point<T>::value ? 0.0f : 1.0f;
        for (float st : model.step) check(st == lossless_step, REDML_E_CORRUPT, "lossy step in a lossless chunk");
    }

    std::vector<uint8_t> exact(N);
    {
        std::vector<uint8_t> runs(mask_s->raw_size);
        decode_stream(mask_s->data, mask_s->stored_size, runs.data(), runs.size(), spec_for(h, *mask_s), nt);
        check(decode_runs(runs.data(), runs.size(), exact.data(), N) == n_exact, REDML_E_CORRUPT,
              "exact mask does not match the exact pixel count");
    }
    std::vector<Word> values(n_exact);
    decode_stream(vals_s->data, vals_s->stored_size, (uint8_t *)values.data(), vals_s->raw_size,
                  spec_for(h, *vals_s), nt);
    std::vector<std::vector<Word>> codes(codes_s.size());
    for (size_t ph = 0; ph < codes_s.size(); ph++) {
        const Section *cs = codes_s[ph];
        codes[ph].resize(cs->raw_size / sizeof(Word));
        decode_stream(cs->data, cs->stored_size, (uint8_t *)codes[ph].data(), cs->raw_size, spec_for(h, *cs), nt);
    }

    // Where each band starts in the value stream and in each code stream.
    const size_t nbands = (H + kRowsPerBand - 1) / kRowsPerBand, nph = codes.size();
    std::vector<size_t> band_exact(nbands + 1, 0), band_codes((nbands + 1) * std::max<size_t>(nph, 1), 0);
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        size_t c = 0;
        for (uint32_t y = y0; y < y1; y++) {
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                const size_t t = (size_t)(y / g.tile) * g.cols + tx;
                const TileCoder<T> tc(model.step[t], model.mean[t], preds[t]);
                size_t i0 = (size_t)y * W + (size_t)tx * g.tile;
                size_t i1 = (size_t)y * W + std::min<size_t>(W, (size_t)(tx + 1) * g.tile);
                for (size_t i = i0; i < i1; i++) {
                    if (exact[i]) c++;
                    else if (nph) band_codes[(b + 1) * nph + tc.at(h.seed, i).phase]++;
                }
            }
        }
        band_exact[b + 1] = c;
    });
    for (size_t b = 0; b < nbands; b++) {
        band_exact[b + 1] += band_exact[b];
        for (size_t ph = 0; ph < nph; ph++) band_codes[(b + 1) * nph + ph] += band_codes[b * nph + ph];
    }
    for (size_t ph = 0; ph < nph; ph++)
        check(band_codes[nbands * nph + ph] == codes[ph].size(), REDML_E_CORRUPT,
              "background code stream length does not match its phase");
    const bool poisson = recon == REDML_RECON_POISSON;
    const bool conditional = recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW;
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        size_t vi = band_exact[b];
        std::vector<size_t> ci(nph);
        for (size_t ph = 0; ph < nph; ph++) ci[ph] = band_codes[b * nph + ph];
        for (uint32_t y = y0; y < y1; y++) {
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                size_t t = (size_t)(y / g.tile) * g.cols + tx;
                const int64_t pred = preds[t];
                const double step = model.step[t];
                const TileCoder<T> tc(step, model.mean[t], pred);
                uint32_t x0 = tx * g.tile, x1 = std::min<uint32_t>(W, x0 + g.tile);
                size_t row = (size_t)y * W;
                for (uint32_t x = x0; x < x1; x++) {
                    size_t i = row + x;
                    if (exact[i]) {
                        out[i] = S::from_exact_word(values[vi++], pred);
                    } else if (h.mode != REDML_MODE_SPARSE) {
                        auto px = tc.at(h.seed, i);
                        Word sym = codes[px.phase][ci[px.phase]++];
                        if constexpr (S::is_float) {
                            check(step > 0, REDML_E_CORRUPT, "background pixel in a lossless float tile");
                            out[i] = redml_recon_float(sym, step, px.u_float, px.base);
                        } else if (conditional) {
                            int64_t a, b;
                            redml_bin_int(sym, tc.s_int, px.u_int, px.base, &a, &b);
                            check(b >= 0 && b <= S::hi(), REDML_E_CORRUPT, "decoded value out of range");
                            double lambda = interpolate_mean(model, y, x);
                            out[i] = (T)redml_recon_conditional(a, b, lambda, recon == REDML_RECON_DRAW, h.seed, i);
                        } else {
                            int64_t r = redml_recon_int(sym, tc.s_int, px.u_int, px.base);
                            check(r >= S::lo() && r <= S::hi(), REDML_E_CORRUPT, "decoded value out of range");
                            out[i] = (T)r;
                        }
                    } else {  // sparse: the model, made unbiased (dither) or noisy (Poisson)
                        double v = std::max(0.0, interpolate_mean(model, y, x));
                        double r = poisson ? (double)h.gain * (double)redml_poisson(v / h.gain, h.seed, i)
                                           : (S::is_float ? v : (double)redml_dithered_round(v, h.seed, i));
                        if constexpr (S::is_float) out[i] = (T)r;
                        else out[i] = (T)std::min((double)S::hi(), std::floor(r + 0.5));
                    }
                }
            }
        }
    });
}

}  // namespace

std::string &last_error() {
    thread_local std::string message;
    return message;
}

}  // namespace redml

using namespace redml;

extern "C" {

void redml_default_params(redml_params *p) {
    p->mode = REDML_MODE_LOSSLESS;
    p->q = 0.0f;
    p->gain = 1.0f;
    p->mu_min = 1.0f;
    p->codec = REDML_CODEC_RANS;
    p->level = 1;
    p->shuffle = REDML_SHUFFLE_BYTE;
    p->recon = REDML_RECON_DITHER;
    p->tile = 32;
    p->roi_snr = 3.0f;
    p->roi_margin = 2;
    p->seed = 0x5eed1234u;
    p->block_elems = 1u << 18;
    p->nthreads = 0;
}

redml_status redml_check_params(const redml_params *p) {
    return guarded([&] {
        check(p != nullptr, REDML_E_ARG, "null argument");
        validate_params(*p);
    });
}

size_t redml_dtype_size(redml_dtype dtype) {
    switch (dtype) {
        case REDML_UINT16:
        case REDML_INT16: return 2;
        case REDML_INT32:
        case REDML_UINT32:
        case REDML_FLOAT32: return 4;
    }
    return 0;
}

redml_status redml_encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                          const uint8_t *roi, const uint8_t *mask, const redml_params *p, void **out,
                          size_t *out_size) {
    return guarded([&] {
        check(frame && p && out && out_size, REDML_E_ARG, "null argument");
        check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
        check(height >= 1 && width >= 1 && height <= kMaxSide && width <= kMaxSide &&
                  (uint64_t)height * width <= kMaxPixels,
              REDML_E_ARG, "frame shape out of range (1..2^20 per side, at most 2^27 pixels)");
        validate_params(*p);
        dispatch_dtype(dtype, [&](auto tag) {
            using T = decltype(tag);
            encode_frame<T>((const T *)frame, height, width, roi, mask, *p, out, out_size);
        });
    });
}

redml_status redml_inspect(const void *chunk, size_t size, redml_info *info) {
    return guarded([&] {
        check(info != nullptr, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        info->version = h.version;
        info->dtype = h.dtype;
        info->mode = h.mode;
        info->codec = h.codec;
        info->recon = h.recon;
        info->height = h.height;
        info->width = h.width;
        info->tile = h.tile;
        info->q = h.q;
        info->gain = h.gain;
        info->mu_min = h.mu_min;
        info->seed = h.seed;
        info->n_exact = h.n_exact;
    });
}

redml_status redml_decode(const void *chunk, size_t size, void *out, size_t out_capacity, int recon_override,
                          int nthreads) {
    return guarded([&] {
        check(out != nullptr, REDML_E_ARG, "null output buffer");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        check(out_capacity >= (size_t)h.height * h.width * redml_dtype_size(h.dtype), REDML_E_ARG,
              "output buffer too small for the decoded frame");
        int recon = (int)h.recon;
        if (recon_override >= 0) {
            // mean <-> draw read the same bins; dither <-> Poisson apply to sparse chunks
            // and are ignored by others (as they always were).
            check(recon_override <= REDML_RECON_DRAW, REDML_E_ARG, "unknown reconstruction");
            const bool cond_override = recon_override == REDML_RECON_MEAN || recon_override == REDML_RECON_DRAW;
            const bool cond_chunk = h.recon == REDML_RECON_MEAN || h.recon == REDML_RECON_DRAW;
            check(!cond_override || cond_chunk, REDML_E_ARG,
                  "the mean and draw reconstructions decode only chunks written with one of them");
            if (cond_override || h.mode == REDML_MODE_SPARSE) recon = recon_override;
        }
        int nt = resolve_threads(nthreads);
        dispatch_dtype(h.dtype, [&](auto tag) {
            using T = decltype(tag);
            decode_frame<T>(pc, (T *)out, recon, nt);
        });
    });
}

redml_status redml_exact_mask(const void *chunk, size_t size, uint8_t *out, size_t out_capacity) {
    return guarded([&] {
        check(out != nullptr, REDML_E_ARG, "null output buffer");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        size_t N = (size_t)h.height * h.width;
        check(out_capacity >= N, REDML_E_ARG, "output buffer too small for the mask");
        const Section *s = pc.find(SECTION_EXACT_MASK);  // its size checked by parse_chunk
        std::vector<uint8_t> runs(s->raw_size);
        decode_stream(s->data, s->stored_size, runs.data(), runs.size(), spec_for(h, *s), 1);
        decode_runs(runs.data(), runs.size(), out, N);
    });
}

redml_status redml_model_shape(const void *chunk, size_t size, uint32_t *tile_rows, uint32_t *tile_cols) {
    return guarded([&] {
        check(tile_rows && tile_cols, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        TileGrid g(pc.header.height, pc.header.width, pc.header.tile);
        *tile_rows = g.rows;
        *tile_cols = g.cols;
    });
}

redml_status redml_model(const void *chunk, size_t size, float *mean, float *step, size_t capacity) {
    return guarded([&] {
        check(mean && step, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        dispatch_dtype(pc.header.dtype, [&](auto tag) {
            BackgroundModel m = read_model<decltype(tag)>(pc, 1);
            check(capacity >= m.mean.size(), REDML_E_ARG, "output buffers too small for the model");
            std::copy(m.mean.begin(), m.mean.end(), mean);
            std::copy(m.step.begin(), m.step.end(), step);
        });
    });
}

void redml_free(void *p) { std::free(p); }

unsigned redml_version_number(void) { return REDML_VERSION_NUMBER; }

const char *redml_strerror(redml_status s) {
    switch (s) {
        case REDML_OK: return "ok";
        case REDML_E_ARG: return "invalid argument";
        case REDML_E_CORRUPT: return "corrupt chunk";
        case REDML_E_VERSION: return "unsupported format version";
        case REDML_E_NOMEM: return "out of memory";
        case REDML_E_ENTROPY: return "entropy coder error";
        case REDML_E_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *redml_last_error(void) { return last_error().c_str(); }

}  // extern "C"
