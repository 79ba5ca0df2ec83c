// index.cpp: the known-cell still indexer (index.h explains the method).
#include "index.h"
#include "lattice.h"  // centring_allows, lattice_centring_valid

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace redml {
namespace {

struct V3 {
    double x, y, z;
};
V3 operator+(V3 a, V3 b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
V3 operator-(V3 a, V3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
V3 operator*(double s, V3 a) { return {s * a.x, s * a.y, s * a.z}; }
double dot(V3 a, V3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
V3 cross(V3 a, V3 b) { return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x}; }
double norm(V3 a) { return std::sqrt(dot(a, a)); }
V3 unit(V3 a) { return (1.0 / norm(a)) * a; }

// 3x3 matrices, row-major.
struct M3 {
    double m[9];
};
V3 mul(const M3 &a, V3 v) {
    return {a.m[0] * v.x + a.m[1] * v.y + a.m[2] * v.z, a.m[3] * v.x + a.m[4] * v.y + a.m[5] * v.z,
            a.m[6] * v.x + a.m[7] * v.y + a.m[8] * v.z};
}
M3 mul(const M3 &a, const M3 &b) {
    M3 c{};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            for (int k = 0; k < 3; ++k) c.m[3 * i + j] += a.m[3 * i + k] * b.m[3 * k + j];
    return c;
}
M3 transpose(const M3 &a) { return {{a.m[0], a.m[3], a.m[6], a.m[1], a.m[4], a.m[7], a.m[2], a.m[5], a.m[8]}}; }
// The matrix whose columns are a, b, c.
M3 columns(V3 a, V3 b, V3 c) { return {{a.x, b.x, c.x, a.y, b.y, c.y, a.z, b.z, c.z}}; }

bool invert(const M3 &a, M3 &out) {
    const double *m = a.m;
    double c0 = m[4] * m[8] - m[5] * m[7], c1 = m[5] * m[6] - m[3] * m[8], c2 = m[3] * m[7] - m[4] * m[6];
    double det = m[0] * c0 + m[1] * c1 + m[2] * c2;
    if (!(std::fabs(det) > 0) || !std::isfinite(det)) return false;
    double s = 1.0 / det;
    out = {{c0 * s, (m[2] * m[7] - m[1] * m[8]) * s, (m[1] * m[5] - m[2] * m[4]) * s, c1 * s,
            (m[0] * m[8] - m[2] * m[6]) * s, (m[2] * m[3] - m[0] * m[5]) * s, c2 * s,
            (m[1] * m[6] - m[0] * m[7]) * s, (m[0] * m[4] - m[1] * m[3]) * s}};
    return true;
}

// How far the refined scale of the cell may stray from the given one.
constexpr double kMaxScaleError = 0.05;

// The size of a pivot's neighbourhood (Indexer::local_), the pivot included.
constexpr size_t kLocalSpots = 25;

// The largest chance that a random spot indexes (see cap_tolerance).
constexpr double kMaxChance = 0.05;

// The rotation by angle |w| about w (Rodrigues).
M3 rotation(V3 w) {
    double t = norm(w);
    if (t == 0) return {{1, 0, 0, 0, 1, 0, 0, 0, 1}};
    V3 a = (1 / t) * w;
    double c = std::cos(t), s = std::sin(t), C = 1 - c;
    return {{c + a.x * a.x * C, a.x * a.y * C - a.z * s, a.x * a.z * C + a.y * s,
             a.y * a.x * C + a.z * s, c + a.y * a.y * C, a.y * a.z * C - a.x * s,
             a.z * a.x * C - a.y * s, a.z * a.y * C + a.x * s, c + a.z * a.z * C}};
}

struct H3 {
    int h, k, l;
};

// An orientation with an isotropic scale: A = s R B. The scale absorbs a cell (or distance,
// or wavelength) a percent or two off the true one, which would otherwise push the outer
// spots out of tolerance.
// The final polish (Indexer::polish) scales a*, b*, c* separately, tied where the given cell
// has them equal (a = b of a tetragonal or hexagonal cell), so A = R B diag(s).
struct Pose {
    M3 R;
    double s[3] = {1, 1, 1};
    void scale(double f) { s[0] *= f, s[1] *= f, s[2] *= f; }
};

bool scale_ok(const Pose &p) {
    for (double v : p.s)
        if (!(std::fabs(v - 1) <= kMaxScaleError)) return false;
    return true;
}

// Solves the k x k system N x = g (k <= kMaxParams; Gaussian elimination, partial pivoting);
// false if singular.
constexpr int kMaxParams = 6;
bool solve(int k, double N[kMaxParams][kMaxParams], double g[kMaxParams], double x[kMaxParams]) {
    for (int c = 0; c < k; ++c) {
        int p = c;
        for (int r = c + 1; r < k; ++r)
            if (std::fabs(N[r][c]) > std::fabs(N[p][c])) p = r;
        if (!(std::fabs(N[p][c]) > 0)) return false;
        std::swap(N[p], N[c]);
        std::swap(g[p], g[c]);
        for (int r = c + 1; r < k; ++r) {
            double f = N[r][c] / N[c][c];
            for (int j = c; j < k; ++j) N[r][j] -= f * N[c][j];
            g[r] -= f * g[c];
        }
    }
    for (int c = k - 1; c >= 0; --c) {
        double v = g[c];
        for (int j = c + 1; j < k; ++j) v -= N[c][j] * x[j];
        x[c] = v / N[c][c];
        if (!std::isfinite(x[c])) return false;
    }
    return true;
}

// A lattice vector of the search: hkl, B hkl, its length.
struct LatticeVector {
    H3 hkl;
    V3 r;
    double length;
};

// How well a pose indexes a set of spots: how many index, and the sum of their fits (index_of),
// which prefers the pose that puts them closer to their lattice points.
struct Tally {
    int n = 0;
    double score = 0;
};

// One search task: a pivot spot and two of its neighbours, with the size of the match.
struct Task {
    size_t i, j, k;
    size_t cost;
    size_t local;  // index of the pivot's neighbourhood (Indexer::local_)
};

class Indexer {
  public:
    Indexer(const double *x, const double *y, const double *weight, size_t n, const IndexGeometry &g, const M3 &B,
            const IndexSettings &s)
        : g_(g), B_(B), s_(s), n_(n) {
        if (!invert(B_, B_inv_)) throw std::invalid_argument("B is singular");
        pixel_r_ = g.pixel_size_mm / (g.wavelength_a * g.distance_mm);
        const double spread = s.spread_deg * M_PI / 180;
        r_.resize(n);
        ray_.resize(n);
        tol_.resize(n);
        tol_ewald_.resize(n);
        for (size_t i = 0; i < n; ++i) {
            V3 p{(x[i] - g.beam_x) * g.pixel_size_mm, (y[i] - g.beam_y) * g.pixel_size_mm, g.distance_mm};
            ray_[i] = unit(p);
            r_[i] = (1.0 / g.wavelength_a) * ray_[i] - V3{0, 0, 1.0 / g.wavelength_a};
            // A pixel seen from the sample at this angle: the flat detector's obliquity shrinks it.
            tol_[i] = s.tolerance_px * pixel_r_ * ray_[i].z * ray_[i].z;
            tol_ewald_[i] = tol_[i] + spread * norm(r_[i]);
            cap_tolerance(i);
        }
        px_.assign(x, x + n);
        py_.assign(y, y + n);
        all_.resize(n);
        std::iota(all_.begin(), all_.end(), 0);
        order_ = all_;
        if (weight)
            std::stable_sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return weight[a] > weight[b]; });
        order_.resize(std::min(n, (size_t)s.max_spots));
        build_lattice_vectors();
        group_scales();
    }

    IndexResult run();

  private:
    const IndexGeometry g_;
    const M3 B_;
    M3 B_inv_;
    const IndexSettings s_;
    const size_t n_;
    double pixel_r_;               // one pixel at the detector's centre, in 1/Angstrom
    std::vector<V3> r_;            // the spots' reciprocal vectors
    std::vector<V3> ray_;          // unit vectors from the sample to the spots
    // How close a spot's lattice point must lie to index it: across the diffracted ray (the
    // spot's position on the detector) and along it (the lattice point's distance from the
    // Ewald sphere, which mosaicity and bandwidth allow in stills).
    std::vector<double> tol_, tol_ewald_;
    std::vector<size_t> order_;    // the search's spots, strongest first
    std::vector<LatticeVector> lattice_;  // short vectors (one of each +- pair), by length
    double max_length_ = 0;
    double min_length_ = 0;  // neighbours closer than this: their difference points too roughly

    std::vector<double> px_, py_;  // the spots' positions (pixels)
    std::vector<size_t> all_;      // 0 .. n-1
    // Per search spot, it and its nearest spots in reciprocal space: a trial rotation, only
    // roughly right, indexes these first (the farther spots drift out of tolerance).
    std::vector<std::vector<size_t>> local_;

    // The polish's free scales: column c of B scales by the group_[c]-th of n_groups_.
    int group_[3] = {0, 0, 0};
    int n_groups_ = 1;

    void build_lattice_vectors();
    void group_scales();
    bool project(V3 q, double &x, double &y) const;
    Pose moved(const Pose &p, const double *x) const;
    bool residuals(const Pose &p, const std::vector<size_t> &spots, const std::vector<H3> &hkl,
                   std::vector<double> &out) const;
    void trim(const Pose &p, const std::vector<size_t> &cand, const std::vector<H3> &cand_hkl,
              std::vector<size_t> &spots, std::vector<H3> &hkl) const;
    void select_near(const Pose &p, double max_px, std::vector<size_t> &spots, std::vector<H3> &hkl) const;
    bool polish_step(Pose &p, const std::vector<size_t> &spots, const std::vector<H3> &hkl) const;
    Pose polish(Pose p) const;
    void cap_tolerance(size_t i);
    double index_of(const M3 &A, const M3 &M, size_t i, H3 &hkl) const;
    M3 A_of(const Pose &p) const;
    M3 M_of(const Pose &p) const;
    Tally count(const Pose &p, const std::vector<size_t> &spots) const;
    std::vector<uint8_t> indexed_set(const Pose &p, const std::vector<size_t> &spots) const;
    bool novel(const Pose &p, const std::vector<std::vector<uint8_t>> &scored) const;
    bool refine_step(Pose &p, const std::vector<size_t> &spots) const;
    Tally refine(Pose &p, const std::vector<size_t> &spots, int steps) const;
    void candidates(double length, double tol, std::vector<const LatticeVector *> &out) const;
    std::vector<Task> tasks();
    double match_err(size_t i, size_t j) const;
    double length_tolerance(size_t i, size_t j) const;
    void fill(const Pose &p, IndexResult &res) const;
};

// All centring-allowed lattice vectors up to 3.5 times the longest of a*, b*, c*. The search
// matches differences of spots 0.4 to 1 times that far apart (closer ones point too roughly).
void Indexer::build_lattice_vectors() {
    const V3 axes[3] = {{B_.m[0], B_.m[3], B_.m[6]}, {B_.m[1], B_.m[4], B_.m[7]}, {B_.m[2], B_.m[5], B_.m[8]}};
    max_length_ = 3.5 * std::max({norm(axes[0]), norm(axes[1]), norm(axes[2])});
    min_length_ = 0.4 * max_length_;
    int lim[3];
    for (int i = 0; i < 3; ++i) {  // |h_i| <= |row i of B^-1| * |r|
        V3 row{B_inv_.m[3 * i], B_inv_.m[3 * i + 1], B_inv_.m[3 * i + 2]};
        lim[i] = std::min(64, (int)std::floor(norm(row) * max_length_));
    }
    for (int h = -lim[0]; h <= lim[0]; ++h)
        for (int k = -lim[1]; k <= lim[1]; ++k)
            for (int l = -lim[2]; l <= lim[2]; ++l) {
                bool positive = h > 0 || (h == 0 && (k > 0 || (k == 0 && l > 0)));
                if (!positive || !centring_allows(s_.centring, h, k, l)) continue;
                V3 r = mul(B_, V3{(double)h, (double)k, (double)l});
                double len = norm(r);
                if (len <= max_length_) lattice_.push_back({{h, k, l}, r, len});
            }
    std::sort(lattice_.begin(), lattice_.end(),
              [](const LatticeVector &a, const LatticeVector &b) { return a.length < b.length; });
}

// Columns of B of equal length (a* = b* of a tetragonal or hexagonal cell, all three of a cubic
// one) share a scale, so the polish keeps the cell's symmetry; the others scale freely.
void Indexer::group_scales() {
    double len[3];
    for (int c = 0; c < 3; ++c) len[c] = norm(V3{B_.m[c], B_.m[3 + c], B_.m[6 + c]});
    n_groups_ = 0;
    for (int c = 0; c < 3; ++c) {
        group_[c] = -1;
        for (int d = 0; d < c && group_[c] < 0; ++d)
            if (std::fabs(len[c] - len[d]) <= 1e-9 * len[c]) group_[c] = group_[d];
        if (group_[c] < 0) group_[c] = n_groups_++;
    }
}

// A random spot lies within a spot's tolerance region (a cylinder around the ray) of some
// lattice point with the chance volume / V*. Large cells have dense reciprocal lattices: the
// region shrinks so that this chance stays under kMaxChance, or random spots would index.
void Indexer::cap_tolerance(size_t i) {
    const double v_star = std::fabs(B_.m[0] * (B_.m[4] * B_.m[8] - B_.m[5] * B_.m[7]) -
                                    B_.m[1] * (B_.m[3] * B_.m[8] - B_.m[5] * B_.m[6]) +
                                    B_.m[2] * (B_.m[3] * B_.m[7] - B_.m[4] * B_.m[6]));
    double volume = 2 * M_PI * tol_[i] * tol_[i] * tol_ewald_[i];
    if (volume > kMaxChance * v_star) {
        double f = std::cbrt(kMaxChance * v_star / volume);
        tol_[i] *= f;
        tol_ewald_[i] *= f;
    }
}

void Indexer::candidates(double length, double tol, std::vector<const LatticeVector *> &out) const {
    out.clear();
    auto lo = std::lower_bound(lattice_.begin(), lattice_.end(), length - tol,
                               [](const LatticeVector &v, double L) { return v.length < L; });
    for (auto it = lo; it != lattice_.end() && it->length <= length + tol; ++it) out.push_back(&*it);
}

// Whether spot i indexes with A (M = A^-1): its nearest lattice point is allowed by the
// centring and within the spot's tolerances. If so (hkl set), how well: 1 - half the sum of
// the squared residuals in units of their tolerances, in (0, 1]; 0 if not.
double Indexer::index_of(const M3 &A, const M3 &M, size_t i, H3 &hkl) const {
    V3 f = mul(M, r_[i]);
    double h = std::nearbyint(f.x), k = std::nearbyint(f.y), l = std::nearbyint(f.z);
    if (h == 0 && k == 0 && l == 0) return 0;
    if (std::fabs(h) > 1e6 || std::fabs(k) > 1e6 || std::fabs(l) > 1e6) return 0;
    hkl = {(int)h, (int)k, (int)l};
    if (!centring_allows(s_.centring, hkl.h, hkl.k, hkl.l)) return 0;
    V3 d = mul(A, V3{h, k, l}) - r_[i];
    double along = dot(d, ray_[i]);
    double a = along / tol_ewald_[i], c = (dot(d, d) - along * along) / (tol_[i] * tol_[i]);
    return a * a <= 1 && c <= 1 ? 1 - 0.5 * (a * a + c) : 0;  // in (0, 1] when it indexes
}

// R B diag(s).
M3 Indexer::A_of(const Pose &p) const {
    M3 A = mul(p.R, B_);
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) A.m[3 * r + c] *= p.s[c];
    return A;
}

// diag(1/s) B^-1 R^T: a spot's fractional hkl.
M3 Indexer::M_of(const Pose &p) const {
    M3 M = mul(B_inv_, transpose(p.R));
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) M.m[3 * r + c] /= p.s[r];
    return M;
}

Tally Indexer::count(const Pose &p, const std::vector<size_t> &spots) const {
    M3 A = A_of(p), M = M_of(p);
    H3 hkl;
    Tally t;
    for (size_t i : spots) {
        double fit = index_of(A, M, i, hkl);
        t.n += fit > 0;
        t.score += fit;
    }
    return t;
}

// Per spot of `spots`, whether it indexes with pose p.
std::vector<uint8_t> Indexer::indexed_set(const Pose &p, const std::vector<size_t> &spots) const {
    M3 A = A_of(p), M = M_of(p);
    H3 hkl;
    std::vector<uint8_t> out(spots.size());
    for (size_t j = 0; j < spots.size(); ++j) out[j] = index_of(A, M, spots[j], hkl) > 0;
    return out;
}

// Whether pose p is another lattice than each already scored: it indexes mostly other spots
// among the strongest (a symmetry-equivalent setting of the same lattice indexes the same ones).
bool Indexer::novel(const Pose &p, const std::vector<std::vector<uint8_t>> &scored) const {
    const std::vector<uint8_t> mine = indexed_set(p, order_);
    const int n = (int)std::count(mine.begin(), mine.end(), 1);
    for (const auto &other : scored) {
        int shared = 0;
        for (size_t j = 0; j < mine.size(); ++j) shared += mine[j] && other[j];
        if (2 * shared > n) return false;
    }
    return true;
}

// One Gauss-Newton step of least squares on the spots that index with pose p: the small
// rotation w (R <- exp(w) R) and relative scale change that best move each lattice point
// q = s R B hkl onto its spot, residuals across the diffracted ray weighted by 1 / tol^2 and
// along it by 1 / tol_ewald^2. False if fewer than four spots index.
bool Indexer::refine_step(Pose &p, const std::vector<size_t> &spots) const {
    M3 A = A_of(p), M = M_of(p);
    double N[kMaxParams][kMaxParams] = {{0}}, g[kMaxParams] = {0};
    int c = 0;
    H3 hkl;
    for (size_t i : spots) {
        if (!index_of(A, M, i, hkl)) continue;
        ++c;
        V3 q = mul(A, V3{(double)hkl.h, (double)hkl.k, (double)hkl.l}), e = q - r_[i], u = ray_[i];
        // W = P / tol^2 + u u^T / tol_ewald^2 with P = I - u u^T; dq = w x q + ds q = J (w, ds).
        double wp = 1 / (tol_[i] * tol_[i]), wu = 1 / (tol_ewald_[i] * tol_ewald_[i]);
        const double uv[3] = {u.x, u.y, u.z}, ev[3] = {e.x, e.y, e.z};
        const double J[3][4] = {{0, q.z, -q.y, q.x}, {-q.z, 0, q.x, q.y}, {q.y, -q.x, 0, q.z}};
        double W[3][3];
        for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) W[a][b] = ((a == b) - uv[a] * uv[b]) * wp + uv[a] * uv[b] * wu;
        for (int a = 0; a < 3; ++a) {
            double We = W[a][0] * ev[0] + W[a][1] * ev[1] + W[a][2] * ev[2];
            for (int k = 0; k < 4; ++k) g[k] -= J[a][k] * We;
            for (int b = 0; b < 3; ++b)
                for (int k = 0; k < 4; ++k)
                    for (int l = 0; l < 4; ++l) N[k][l] += J[a][k] * W[a][b] * J[b][l];
        }
    }
    double x[kMaxParams];
    if (c < 4 || !solve(4, N, g, x)) return false;
    p.R = mul(rotation(V3{x[0], x[1], x[2]}), p.R);
    p.scale(1 + x[3]);
    return scale_ok(p);
}

// Gauss-Newton steps on these spots while they improve the fit. Returns the last tally.
Tally Indexer::refine(Pose &p, const std::vector<size_t> &spots, int steps) const {
    Tally best = count(p, spots);
    for (int it = 0; it < steps; ++it) {
        Pose next = p;
        if (!refine_step(next, spots)) break;
        Tally after = count(next, spots);
        if (after.score <= best.score) break;
        p = next;
        bool converged = after.score < best.score * 1.001;
        best = after;
        if (converged) break;
    }
    return best;
}

std::vector<Task> Indexer::tasks() {
    std::vector<Task> out;
    std::vector<std::pair<double, size_t>> near, all;
    std::vector<const LatticeVector *> c1, c2;
    for (size_t i : order_) {
        near.clear();
        all.clear();
        for (size_t j = 0; j < n_; ++j) {
            double d = norm(r_[j] - r_[i]);
            all.push_back({d, j});
            if (j != i && d > std::max(match_err(i, j) * 2, min_length_) && d <= max_length_) near.push_back({d, j});
        }
        size_t L = std::min(all.size(), kLocalSpots);
        std::partial_sort(all.begin(), all.begin() + L, all.end());
        local_.emplace_back();
        for (size_t a = 0; a < L; ++a) local_.back().push_back(all[a].second);
        size_t K = std::min(near.size(), (size_t)std::max(2, s_.neighbours));
        std::partial_sort(near.begin(), near.begin() + K, near.end());
        for (size_t a = 0; a < K; ++a)
            for (size_t b = a + 1; b < K; ++b) {
                size_t j = near[a].second, k = near[b].second;
                V3 d1 = r_[j] - r_[i], d2 = r_[k] - r_[i];
                double angle = std::acos(std::clamp(dot(d1, d2) / (norm(d1) * norm(d2)), -1.0, 1.0));
                if (angle < 20 * M_PI / 180 || angle > 160 * M_PI / 180) continue;
                candidates(norm(d1), length_tolerance(i, j), c1);
                candidates(norm(d2), length_tolerance(i, k), c2);
                if (!c1.empty() && !c2.empty()) out.push_back({i, j, k, c1.size() * c2.size(), local_.size() - 1});
            }
    }
    std::stable_sort(out.begin(), out.end(), [](const Task &a, const Task &b) { return a.cost < b.cost; });
    return out;
}

// The measurement error of the difference of spots i and j (1/Angstrom), half their tolerances.
double Indexer::match_err(size_t i, size_t j) const { return 0.5 * (tol_ewald_[i] + tol_ewald_[j]); }

double Indexer::length_tolerance(size_t i, size_t j) const {
    return std::max(s_.length_tolerance * norm(r_[j] - r_[i]), match_err(i, j));
}

// A rival lattice is scored on all spots when it does at least this well, relative to the best,
// on the strongest spots.
constexpr double kRivalScore = 0.5;

// The rotation taking the frame of lattice vectors (v1, v2) onto that of spot differences (d1, d2).
M3 rotation_onto(V3 v1, V3 v2, V3 d1, V3 d2) {
    V3 e1 = unit(v1), e3 = unit(cross(v1, v2)), f1 = unit(d1), f3 = unit(cross(d1, d2));
    M3 E = columns(e1, cross(e3, e1), e3), F = columns(f1, cross(f3, f1), f3);
    return mul(F, transpose(E));
}

IndexResult Indexer::run() {
    IndexResult res;
    res.hkl.assign(3 * n_, 0);
    res.is_indexed.assign(n_, 0);
    const size_t need = (size_t)std::max(3, s_.min_indexed);
    if (n_ < need || lattice_.empty()) return res;
    const int floor = std::max(3, (int)std::ceil(0.1 * order_.size()));
    const int patience = 1500;  // trials without improvement once a solution is acceptable
    Tally best_q, best_n;
    int since_best = 0;
    Pose best;
    bool done = false;
    std::vector<const LatticeVector *> c1, c2;
    std::vector<std::vector<uint8_t>> scored;  // the strongest spots each lattice scored on all spots indexes
    for (const Task &t : tasks()) {
        V3 d1 = r_[t.j] - r_[t.i], d2 = r_[t.k] - r_[t.i];
        double ld1 = norm(d1), ld2 = norm(d2);
        double angle = std::acos(std::clamp(dot(d1, d2) / (ld1 * ld2), -1.0, 1.0));
        double tol_angle = std::min(15 * M_PI / 180, s_.angle_tolerance_deg * M_PI / 180 +
                                                         match_err(t.i, t.j) / ld1 + match_err(t.i, t.k) / ld2);
        candidates(ld1, length_tolerance(t.i, t.j), c1);
        candidates(ld2, length_tolerance(t.i, t.k), c2);
        for (const LatticeVector *a : c1)
            for (const LatticeVector *b : c2)
                for (int sign = -1; sign <= 1 && !done; sign += 2) {
                    // (v1, v2) and (-v1, -v2) give different rotations; (v1, -v2) is the other sign.
                    for (int flip = -1; flip <= 1 && !done; flip += 2) {
                        V3 v1 = (double)flip * a->r, v2 = (double)(flip * sign) * b->r;
                        double av = std::acos(std::clamp(dot(v1, v2) / (a->length * b->length), -1.0, 1.0));
                        if (std::fabs(av - angle) > tol_angle) continue;
                        // The matched lengths also say how far the given cell is off.
                        double scale = std::clamp((ld1 + ld2) / (a->length + b->length), 1 - kMaxScaleError,
                                                  1 + kMaxScaleError);
                        Pose U{rotation_onto(v1, v2, d1, d2)};
                        U.scale(scale);
                        ++res.trials;
                        ++since_best;
                        // A trial is only roughly right: refined on the search's spots first, on
                        // all of them only when it beats the best so far there.
                        if (count(U, local_[t.local]).n >= 4) refine(U, local_[t.local], 4);
                        Tally q = count(U, order_);
                        if (q.n >= floor) q = refine(U, order_, 6);
                        // Scored on all spots: the best on the strongest spots so far, and any
                        // other lattice nearly as good there (the strongest spots of a still
                        // with two crystals may favour the one with fewer spots in all).
                        bool better = q.score > best_q.score;
                        bool rival = !better && q.n >= floor && q.score > kRivalScore * best_q.score &&
                                     novel(U, scored);
                        if (q.n >= floor && (better || rival)) {
                            if (better) best_q = q;
                            scored.push_back(indexed_set(U, order_));
                            Tally all = refine(U, all_, 3);
                            if (all.score > best_n.score) best_n = all, best = U, since_best = 0;
                        }
                        // The strongest spots are the likeliest to be the crystal's: a solution
                        // that indexes nearly all of them ends the search.
                        bool acceptable = best_n.n >= (int)need && best_n.n >= s_.min_fraction * n_;
                        bool convincing = best_n.n >= s_.accept_fraction * n_ ||
                                          (best_q.n >= s_.accept_fraction * order_.size() && best_n.n >= 0.5 * n_);
                        done = (acceptable && (convincing || since_best >= patience)) || res.trials >= s_.max_trials;
                    }
                }
        if (done) break;
    }
    if (best_n.n > 0) best_n = refine(best, all_, 8);
    if (best_n.n > 0) {
        Pose polished = polish(best);
        Tally t = count(polished, all_);
        if (t.n >= 0.9 * best_n.n) best = polished, best_n = t;
    }
    if (best_n.n < (int)need || best_n.n < s_.min_fraction * n_) return res;
    fill(best, res);
    return res;
}

// Where the lattice predictor (lattice.h, without parallax) places the reflection at q: q
// rotated onto the Ewald sphere keeping |q| and its azimuth. False if it misses the detector.
bool Indexer::project(V3 q, double &x, double &y) const {
    const double rho2 = q.x * q.x + q.y * q.y, qq = rho2 + q.z * q.z;
    EwaldPoint e;
    if (!onto_ewald(rho2, qq, 1.0 / g_.wavelength_a, e)) return false;
    const double t = e.t * g_.distance_mm / g_.pixel_size_mm;
    x = g_.beam_x + t * q.x;
    y = g_.beam_y + t * q.y;
    return true;
}

// Pose p moved by parameters x: a small rotation x[0..2] (R <- exp(x) R), then relative scale
// changes x[3 + group] of B's columns.
Pose Indexer::moved(const Pose &p, const double *x) const {
    Pose out = p;
    out.R = mul(rotation(V3{x[0], x[1], x[2]}), p.R);
    for (int c = 0; c < 3; ++c) out.s[c] *= 1 + x[3 + group_[c]];
    return out;
}

// The weight of a lattice point's distance from the Ewald sphere (in units of its tolerance)
// against a pixel of position residual in the polish: chosen on the thaumatin stills, where
// weaker leaves the tilts loose and stronger lets the excitation errors pull the positions.
constexpr double kEwaldWeight = 3.0;

// The polish's residuals, three per spot: predicted minus observed position (pixels), and the
// lattice point's distance from the Ewald sphere in units of its tolerance (a weak pull that
// fixes the tilts about axes across the beam, which move the positions little).
bool Indexer::residuals(const Pose &p, const std::vector<size_t> &spots, const std::vector<H3> &hkl,
                        std::vector<double> &out) const {
    const M3 A = A_of(p);
    const V3 s0{0, 0, 1.0 / g_.wavelength_a};
    out.resize(3 * spots.size());
    for (size_t j = 0; j < spots.size(); ++j) {
        const size_t i = spots[j];
        V3 q = mul(A, V3{(double)hkl[j].h, (double)hkl[j].k, (double)hkl[j].l});
        double x, y;
        if (!project(q, x, y)) return false;
        out[3 * j] = x - px_[i];
        out[3 * j + 1] = y - py_[i];
        out[3 * j + 2] = kEwaldWeight * (norm(q + s0) - s0.z) / tol_ewald_[i];
    }
    return true;
}

// Of the candidate spots (with their hkl), those within max(1 px, 3 times the median) of their
// predicted positions: the rest are other lattices' or misindexed.
void Indexer::trim(const Pose &p, const std::vector<size_t> &cand, const std::vector<H3> &cand_hkl,
                   std::vector<size_t> &spots, std::vector<H3> &hkl) const {
    std::vector<double> res, dist;
    spots.clear();
    hkl.clear();
    if (cand.empty() || !residuals(p, cand, cand_hkl, res)) return;
    for (size_t j = 0; j < cand.size(); ++j) dist.push_back(std::hypot(res[3 * j], res[3 * j + 1]));
    std::vector<double> sorted = dist;
    std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
    const double cut = std::max(1.0, 3 * sorted[sorted.size() / 2]);
    for (size_t j = 0; j < cand.size(); ++j)
        if (dist[j] <= cut) spots.push_back(cand[j]), hkl.push_back(cand_hkl[j]);
}

// One Gauss-Newton step of the polish (Jacobian by finite differences; a handful of
// parameters). False when it cannot improve the fit (converged, or too few spots).
bool Indexer::polish_step(Pose &p, const std::vector<size_t> &spots, const std::vector<H3> &hkl) const {
    const int k = 3 + n_groups_;
    const double h = 1e-7;
    if (spots.size() < (size_t)(2 * k)) return false;
    std::vector<double> r0, r1;
    if (!residuals(p, spots, hkl, r0)) return false;
    std::vector<std::vector<double>> J(k);
    for (int c = 0; c < k; ++c) {
        double x[kMaxParams] = {0};
        x[c] = h;
        if (!residuals(moved(p, x), spots, hkl, r1)) return false;
        J[c].resize(r0.size());
        for (size_t j = 0; j < r0.size(); ++j) J[c][j] = (r1[j] - r0[j]) / h;
    }
    double N[kMaxParams][kMaxParams] = {{0}}, g[kMaxParams] = {0}, x[kMaxParams] = {0};
    for (int a = 0; a < k; ++a) {
        for (size_t j = 0; j < r0.size(); ++j) g[a] -= J[a][j] * r0[j];
        for (int b = 0; b < k; ++b)
            for (size_t j = 0; j < r0.size(); ++j) N[a][b] += J[a][j] * J[b][j];
    }
    if (!solve(k, N, g, x)) return false;
    auto cost = [](const std::vector<double> &r) { return std::inner_product(r.begin(), r.end(), r.begin(), 0.0); };
    Pose next = moved(p, x);
    if (!scale_ok(next) || !residuals(next, spots, hkl, r1) || !(cost(r1) < cost(r0))) return false;
    p = next;
    return cost(r1) < cost(r0) * (1 - 1e-9);
}

// The spots whose nearest lattice point (rounding the spot's hkl) pose p predicts within max_px
// of them on the detector, whatever the lattice point's distance from the Ewald sphere.
void Indexer::select_near(const Pose &p, double max_px, std::vector<size_t> &spots, std::vector<H3> &hkl) const {
    const M3 A = A_of(p), M = M_of(p);
    spots.clear();
    hkl.clear();
    for (size_t i = 0; i < n_; ++i) {
        V3 f = mul(M, r_[i]);
        double h = std::nearbyint(f.x), k = std::nearbyint(f.y), l = std::nearbyint(f.z);
        if ((h == 0 && k == 0 && l == 0) || std::fabs(h) > 1e6 || std::fabs(k) > 1e6 || std::fabs(l) > 1e6) continue;
        H3 c{(int)h, (int)k, (int)l};
        double x, y;
        if (!centring_allows(s_.centring, c.h, c.k, c.l) || !project(mul(A, V3{h, k, l}), x, y)) continue;
        if (std::hypot(x - px_[i], y - py_[i]) <= max_px) spots.push_back(i), hkl.push_back(c);
    }
}

// The polish's first pass fits every spot within this many pixels of its nearest lattice
// point's prediction. A still often holds several crystals a few tenths of a degree apart: the
// search's pose sits on the one whose spots it found first, and a refinement on the spots within
// tolerance of it stays there. Fitted to the spots of all of them first, and then to the spots
// near that pose, it settles where DIALS's refinement does: on the thaumatin stills 0.95 of
// DIALS's integrated reflections predicted within 1 px instead of 0.84 (stills 4 and 9: 0.60 and
// 0.54 before), for about as many predicted reflections.
constexpr double kBroadPx = 10.0;

// The search's pose refined to convergence with the residuals of the predictor's model, over
// the rotation and the cell's free scales: first on every spot near a lattice point (kBroadPx),
// then on the spots within tolerance_px of that pose's predictions, outliers left out (chosen
// again from those until they stay the same).
Pose Indexer::polish(Pose p) const {
    std::vector<size_t> cand, spots, last;
    std::vector<H3> cand_hkl, hkl;
    select_near(p, kBroadPx, spots, hkl);
    for (int it = 0; it < 20 && polish_step(p, spots, hkl); ++it) {
    }
    select_near(p, s_.tolerance_px, cand, cand_hkl);
    for (int round = 0; round < 10; ++round) {
        trim(p, cand, cand_hkl, spots, hkl);
        if (spots == last) break;
        for (int it = 0; it < 20 && polish_step(p, spots, hkl); ++it) {
        }
        last = spots;
    }
    return p;
}

// The indexed result of orientation U: A, each spot's hkl, the rms distance between predicted
// and observed positions on the detector.
void Indexer::fill(const Pose &p, IndexResult &res) const {
    M3 A = A_of(p), M = M_of(p);
    double sum = 0;
    int c = 0;
    H3 hkl;
    for (size_t i = 0; i < n_; ++i) {
        double x, y;
        if (!index_of(A, M, i, hkl) || !project(mul(A, V3{(double)hkl.h, (double)hkl.k, (double)hkl.l}), x, y))
            continue;
        double dx = x - px_[i], dy = y - py_[i];
        sum += dx * dx + dy * dy;
        res.hkl[3 * i] = hkl.h, res.hkl[3 * i + 1] = hkl.k, res.hkl[3 * i + 2] = hkl.l;
        res.is_indexed[i] = 1;
        ++c;
    }
    res.indexed = c > 0;
    res.n_indexed = c;
    res.rmsd_px = c ? std::sqrt(sum / c) : 0;
    std::copy(A.m, A.m + 9, res.A);
}

}  // namespace

IndexResult index_still(const double *x, const double *y, const double *weight, size_t n, const IndexGeometry &geom,
                        const double B[9], const IndexSettings &settings) {
    auto positive = [](double v) { return std::isfinite(v) && v > 0; };
    if (!positive(geom.distance_mm) || !positive(geom.pixel_size_mm) || !positive(geom.wavelength_a) ||
        !std::isfinite(geom.beam_x) || !std::isfinite(geom.beam_y))
        throw std::invalid_argument("geometry: distance, pixel size and wavelength must be > 0, the beam centre finite");
    for (int i = 0; i < 9; ++i)
        if (!std::isfinite(B[i])) throw std::invalid_argument("B must be finite");
    for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i]) || !std::isfinite(y[i]) || (weight && !std::isfinite(weight[i])))
            throw std::invalid_argument("spot positions and intensities must be finite");
    if (!lattice_centring_valid(settings.centring))
        throw std::invalid_argument("centring must be one of P, A, B, C, I, F, R");
    if (!(settings.tolerance_px > 0) || !(settings.spread_deg >= 0) || !(settings.length_tolerance >= 0) ||
        !(settings.angle_tolerance_deg >= 0) || settings.max_spots < 3 || settings.neighbours < 2 ||
        settings.max_trials < 1 || settings.min_indexed < 3 || !(settings.min_fraction >= 0 && settings.min_fraction <= 1) ||
        !(settings.accept_fraction >= 0 && settings.accept_fraction <= 1))
        throw std::invalid_argument("indexer settings out of range");
    M3 b;
    std::copy(B, B + 9, b.m);
    Indexer ix(x, y, weight, n, geom, b, settings);
    return ix.run();
}

}  // namespace redml
