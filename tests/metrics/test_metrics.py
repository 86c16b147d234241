"""Known-answer tests for :mod:`wsi_fusion.metrics`.

Images are 128 x 128 crops of ``skimage.data.camera()`` (bundled, offline). The two-source
reference implementations below are written straight from the published formulas / reference
MATLAB code with other primitives (``scipy.signal`` 2-D filters, ``np.histogram2d``, loops), so
that "N = 2 equals the published formula" checks the generalisation *and* the vectorisation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import fft, signal
from skimage import data, filters
from skimage.measure import shannon_entropy
from skimage.metrics import normalized_mutual_information

from wsi_fusion.errors import PlaneMismatch, UnsupportedInput
from wsi_fusion.metrics import (
    METRICS,
    UnknownMetric,
    cc,
    evaluate,
    fmi,
    focus_attainment,
    halo_score,
    list_metrics,
    mi,
    mi_norm,
    psnr,
    q_abf,
    q_avg,
    q_cb,
    q_mi,
    q_ncie,
    q_y,
    seam_score,
    ssim,
)
from wsi_fusion.metrics.feature_mi import _matlab_edge
from wsi_fusion.metrics.focus import HEALTHY_WINDOW, outside_window

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

SHARP: U8 = np.ascontiguousarray(data.camera()[100:228, 200:328])
NO_REF = list_metrics("no_reference")
FULL_REF = list_metrics("full_reference")


def blur(img: U8, sigma: float) -> U8:
    """Gaussian blur, rounded back to uint8 (as a scanner would store it)."""
    if sigma == 0:
        return img
    out = filters.gaussian(img.astype(np.float64), sigma=sigma, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def unsharp(img: U8, amount: float = 1.0, sigma: float = 2.0) -> F64:
    """Over-sharpened float image in [0, 1] units (not clipped: overshoot is the point)."""
    x = img.astype(np.float64)
    return (x + amount * (x - filters.gaussian(x, sigma=sigma, preserve_range=True))) / 255.0


def multifocus_pair() -> tuple[U8, U8]:
    """Two sources, each sharp in one half and blurred (sigma 3) in the other."""
    b = blur(SHARP, 3)
    a, c = SHARP.copy(), SHARP.copy()
    a[:, 64:] = b[:, 64:]
    c[:, :64] = b[:, :64]
    return a, c


def norm1(x: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Liu's normalize1.m."""
    x = np.asarray(x, dtype=np.float64)
    if x.max() == x.min():
        return np.zeros(x.shape, dtype=np.int64)
    return np.rint((x - x.min()) / (x.max() - x.min()) * 255).astype(np.int64)


def hist2(a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    h, _, _ = np.histogram2d(
        np.ravel(a), np.ravel(b), bins=256, range=[[-0.5, 255.5], [-0.5, 255.5]]
    )
    return h / h.sum()


def ent(p: F64, base: float = 2.0) -> float:
    q = p[p > 0]
    return float(-(q * np.log(q)).sum() / math.log(base))


# --------------------------------------------------------------------------------------------
# Direct two-source implementations of the published formulas
# --------------------------------------------------------------------------------------------


def qabf_two(a: U8, b: U8, f: U8) -> float:
    """Q^AB/F, GACN Eqs. 8-18 with the Qabf.m constants."""
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)

    def sob(x: U8) -> tuple[F64, F64]:
        x = x.astype(np.float64)
        sx = signal.convolve2d(x, h3, mode="same")
        sy = signal.convolve2d(x, h1, mode="same")
        alpha = np.full(x.shape, np.pi / 2)
        nz = sx != 0
        alpha[nz] = np.arctan(sy[nz] / sx[nz])
        return np.sqrt(sx**2 + sy**2), alpha

    ga, aa = sob(a)
    gb, ab = sob(b)
    gf, af = sob(f)

    def q(gs: F64, as_: F64) -> F64:
        rel = np.ones_like(gs)
        m = gs > gf
        rel[m] = gf[m] / gs[m]
        m = gs < gf
        rel[m] = gs[m] / gf[m]
        orient = 1 - np.abs(as_ - af) / (np.pi / 2)
        return tg / (1 + np.exp(kg * (rel - dg))) * ta / (1 + np.exp(ka * (orient - da)))

    return float((q(ga, aa) * ga + q(gb, ab) * gb).sum() / (ga + gb).sum())


def qy_two(a: U8, b: U8, f: U8) -> float:
    """Yang's Q_Y as metricYang.m: 7x7 Gaussian (1.5) 'valid' SSIM maps, C1 = C2 = 2e-16."""
    x = np.arange(-3, 4)
    win = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c = 2e-16

    def filt(img: F64) -> F64:
        return signal.correlate2d(img, win, mode="valid")

    def ssim_yang(p8: U8, q8: U8) -> tuple[F64, F64, F64]:
        p, q = p8.astype(np.float64), q8.astype(np.float64)
        m1, m2 = filt(p), filt(q)
        s1, s2 = filt(p * p) - m1**2, filt(q * q) - m2**2
        s12 = filt(p * q) - m1 * m2
        smap = ((2 * m1 * m2 + c) * (2 * s12 + c)) / ((m1**2 + m2**2 + c) * (s1 + s2 + c))
        return smap, s1, s2

    m_ab, s_a, s_b = ssim_yang(a, b)
    m_af, _, _ = ssim_yang(a, f)
    m_bf, _, _ = ssim_yang(b, f)
    similar = m_ab >= 0.75
    lam = s_a / (s_a + s_b)
    q = (lam * m_af + (1 - lam) * m_bf) * similar + np.maximum(m_af, m_bf) * ~similar
    return float(q.mean())


def qcb_two(a: U8, b: U8, f: U8) -> float:
    """Chen-Blum Q_CB as metricChenBlum.m (DoG CSF, 31x31 Gaussians, p=3, q=2, Z=1e-4)."""
    rows, cols = a.shape
    fx = (np.arange(cols) - cols // 2) * (2 / cols)
    fy = (np.arange(rows) - rows // 2) * (2 / rows)
    u, v = np.meshgrid(fx * cols / 30, fy * rows / 30)
    r = np.sqrt(u**2 + v**2)
    csf = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    x, y = np.meshgrid(np.arange(-15, 16), np.arange(-15, 16))

    def g(s: float) -> F64:
        return np.exp(-(x * x + y * y) / (2 * s * s)) / (2 * np.pi * s * s)

    def cp(img: U8) -> F64:
        im = norm1(img).astype(float)
        filtered = np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(im)) * csf)).real
        con = np.abs(
            signal.correlate2d(filtered, g(2), mode="same")
            / signal.correlate2d(filtered, g(4), mode="same")
            - 1
        )
        return con**3 / (con**2 + 1e-4)

    c1, c2, cf = cp(a), cp(b), cp(f)
    q1 = np.where(c1 < cf, c1 / cf, cf / c1)
    q2 = np.where(c2 < cf, c2 / cf, cf / c2)
    lam1 = c1**2 / (c1**2 + c2**2)
    return float((lam1 * q1 + (1 - lam1) * q2).mean())


def ncie_two(a: U8, b: U8, f: U8) -> float:
    """Q_NCIE as metricWang.m / NCC.m (base-256 entropies)."""
    ims = [norm1(a), norm1(b), norm1(f)]

    def ncc(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
        h = hist2(p, q)
        return ent(h.sum(1), 256) + ent(h.sum(0), 256) - ent(h, 256)

    r = np.eye(3)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        r[i, j] = r[j, i] = ncc(ims[i], ims[j])
    lam = np.linalg.eigvalsh(r)
    return float(1 + (lam / 3 * np.log2(lam / 3)).sum() / np.log2(256))


def mi_pair(x: npt.ArrayLike, f: npt.ArrayLike) -> tuple[float, float, float]:
    h = hist2(norm1(x), norm1(f))
    hx, hf = ent(h.sum(1)), ent(h.sum(0))
    return hx + hf - ent(h), hx, hf


def fmi_window_ref(a_sub: F64, f_sub: F64) -> float:
    """One window of Haghighat's fmi.m, transcribed loop for loop (1-based -> 0-based)."""
    if np.array_equal(a_sub, f_sub):
        return 1.0
    w2 = a_sub.size

    def prep(s: F64) -> F64:
        s = np.ones_like(s) if s.max() == s.min() else (s - s.min()) / (s.max() - s.min())
        v = s.flatten(order="F")
        return v / v.sum()

    a_pdf, f_pdf = prep(a_sub), prep(f_sub)
    a_cdf, f_cdf = np.cumsum(a_pdf), np.cumsum(f_pdf)
    at, ft = a_pdf - a_pdf.mean(), f_pdf - f_pdf.mean()
    c = (
        0.0
        if (at * ft).sum() == 0
        else (at * ft).sum() / math.sqrt((at * at).sum() * (ft * ft).sum())
    )
    idx = np.arange(1, w2 + 1)
    a_sd = math.sqrt(max((idx**2 * a_pdf).sum() - (idx * a_pdf).sum() ** 2, 0.0))
    f_sd = math.sqrt(max((idx**2 * f_pdf).sum() - (idx * f_pdf).sum() ** 2, 0.0))

    def up(x: float, y: float) -> float:
        return 0.5 * (x + y - abs(x - y))

    def lo(x: float, y: float) -> float:
        return 0.5 * (x + y - 1 + abs(x + y - 1))

    bound = up if c >= 0 else lo
    if (c >= 0 and (c == 0 or a_sd == 0 or f_sd == 0)) or (c < 0 and (a_sd == 0 or f_sd == 0)):
        mix = 0.0
    else:
        cov = sum(
            bound(f_cdf[i], a_cdf[j]) - f_cdf[i] * a_cdf[j] for i in range(w2) for j in range(w2)
        )
        mix = c / (cov / (f_sd * a_sd))
    h_joint = 0.0
    for i in range(w2):
        for j in range(w2):
            jb = bound(f_cdf[i], a_cdf[j])
            if i > 0:
                jb -= bound(f_cdf[i - 1], a_cdf[j])
            if j > 0:
                jb -= bound(f_cdf[i], a_cdf[j - 1])
            if i > 0 and j > 0:
                jb += bound(f_cdf[i - 1], a_cdf[j - 1])
            p = mix * jb + (1 - mix) * f_pdf[i] * a_pdf[j]
            if p != 0:
                h_joint += -p * math.log2(abs(p))
    h_a = -sum(p * math.log2(p) for p in a_pdf if p != 0)
    h_f = -sum(p * math.log2(p) for p in f_pdf if p != 0)
    info = h_a + h_f - h_joint
    return 0.0 if info == 0 else 2 * info / (h_a + h_f)


def fmi_two(a_feat: F64, b_feat: F64, f_feat: F64, w: int = 3) -> float:
    m, n = f_feat.shape
    vals = []
    for p in range(m - w + 1):
        for q in range(n - w + 1):
            win = np.s_[p : p + w, q : q + w]
            vals.append(
                (
                    fmi_window_ref(a_feat[win], f_feat[win])
                    + fmi_window_ref(b_feat[win], f_feat[win])
                )
                / 2
            )
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------
# Identical images
# --------------------------------------------------------------------------------------------


def test_full_reference_identical() -> None:
    assert psnr(SHARP, SHARP) == math.inf
    assert ssim(SHARP, SHARP) == pytest.approx(1.0)
    assert cc(SHARP, SHARP) == pytest.approx(1.0)
    assert q_mi(SHARP, SHARP) == pytest.approx(1.0)


def test_q_abf_identical_is_the_sigmoid_ceiling() -> None:
    # Every weighted pixel has relative strength 1 and orientation agreement 1.
    ceiling = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert q_abf(SHARP, [SHARP, SHARP]) == pytest.approx(ceiling, rel=1e-12)
    assert ceiling > 0.97


@pytest.mark.parametrize(
    ("name", "expected"),
    [("q_y", 1.0), ("q_cb", 1.0), ("mi_norm", 2.0), ("fmi_edge", 1.0), ("fmi_dct", 1.0)],
)
def test_no_reference_identical(name: str, expected: float) -> None:
    assert METRICS[name].fn(SHARP, [SHARP, SHARP]) == pytest.approx(expected, abs=1e-9)


def test_mi_identical_is_twice_the_entropy() -> None:
    # I(A; A) = H(A); two copies -> 2 H(A). Entropy from scikit-image as an independent check.
    assert mi(SHARP, [SHARP, SHARP]) == pytest.approx(2 * shannon_entropy(norm1(SHARP)), rel=1e-9)


def test_q_ncie_identical_known_eigenvalues() -> None:
    # All three NCCs equal h = H_256(A): eigenvalues 1 + 2h, 1 - h, 1 - h.
    h = ent(np.bincount(norm1(SHARP).ravel(), minlength=256) / SHARP.size, 256)
    lam = np.array([1 + 2 * h, 1 - h, 1 - h]) / 3
    expected = 1 + float((lam * np.log(lam)).sum()) / math.log(256)
    assert q_ncie(SHARP, [SHARP, SHARP]) == pytest.approx(expected, rel=1e-9)


def test_q_mi_matches_skimage_nmi() -> None:
    # For images spanning 0..255, skimage's 256 bins are the grey levels, and
    # Q_MI = 2 I / (H_X + H_Y) = 2 - 2 / NMI_Studholme.
    x = norm1(SHARP).astype(np.uint8)
    y = norm1(blur(SHARP, 1.5)).astype(np.uint8)
    nmi = normalized_mutual_information(x, y, bins=256)
    assert q_mi(y, x) == pytest.approx(2 - 2 / nmi, rel=1e-9)


# --------------------------------------------------------------------------------------------
# Pure noise
# --------------------------------------------------------------------------------------------

NOISE: U8 = np.random.default_rng(0).integers(0, 256, SHARP.shape).astype(np.uint8)


def test_full_reference_noise() -> None:
    assert psnr(NOISE, SHARP) < 12
    assert abs(ssim(NOISE, SHARP)) < 0.05
    assert abs(cc(NOISE, SHARP)) < 0.05
    # 16384 samples in 65536 cells: plug-in MI has a positive bias, still far below 1.
    assert q_mi(NOISE, SHARP) < 0.3


def test_q_abf_noise_is_low() -> None:
    assert q_abf(NOISE, [SHARP, blur(SHARP, 2)]) < 0.15


@pytest.mark.parametrize("name", [n for n in NO_REF if n != "q_avg"])
def test_noise_scores_below_a_heavily_blurred_fusion(name: str) -> None:
    sources = [SHARP, blur(SHARP, 2)]
    fn = METRICS[name].fn
    assert fn(NOISE, sources) < fn(blur(SHARP, 3), sources)


def test_mi_noise_is_low() -> None:
    assert mi(NOISE, [SHARP, SHARP]) < 0.3 * mi(SHARP, [SHARP, SHARP])
    assert mi_norm(NOISE, [SHARP, SHARP]) < 0.3 * mi_norm(SHARP, [SHARP, SHARP])


# --------------------------------------------------------------------------------------------
# Blur series: every metric falls strictly with sigma
# --------------------------------------------------------------------------------------------

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


@pytest.mark.parametrize("name", list(METRICS))
def test_blur_series_is_monotonic(name: str) -> None:
    spec = METRICS[name]
    other = SHARP if spec.kind == "full_reference" else [SHARP, SHARP]
    values = [spec.fn(blur(SHARP, s), other) for s in SIGMAS]
    assert all(v0 > v1 for v0, v1 in itertools.pairwise(values)), values
    assert spec.higher_is_better


@pytest.mark.parametrize("name", ["q_abf", "q_cb", "q_avg"])
def test_all_in_focus_beats_copying_one_source(name: str) -> None:
    # Q^AB/F, Q_CB (and Q_AVG) prefer the true all-in-focus image; MI, Q_Y, Q_NCIE and FMI are
    # known to reward copying a source (fused == A gives I(A; F) = H(A)), so they are not
    # listed here.
    a, b = multifocus_pair()
    fn = METRICS[name].fn
    assert fn(SHARP, [a, b]) > fn(a, [a, b])
    assert fn(SHARP, [a, b]) > fn(b, [a, b])


# --------------------------------------------------------------------------------------------
# Symmetry and N = 2 reduction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NO_REF)
def test_source_order_does_not_matter(name: str) -> None:
    a, b = multifocus_pair()
    sources = [a, b, blur(SHARP, 1.0)]
    fused = blur(SHARP, 0.7)
    fn = METRICS[name].fn
    ref = fn(fused, sources)
    for perm in [(2, 0, 1), (1, 2, 0)]:
        assert fn(fused, [sources[i] for i in perm]) == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.fixture(scope="module")
def pair_and_fused() -> tuple[U8, U8, U8]:
    a, b = multifocus_pair()
    fused = np.rint((a.astype(float) + b) / 2).astype(np.uint8)
    return a, b, fused


def test_q_abf_two_sources_is_the_published_formula(pair_and_fused: tuple[U8, U8, U8]) -> None:
    a, b, f = pair_and_fused
    assert q_abf(f, [a, b]) == pytest.approx(qabf_two(a, b, f), rel=1e-10)


def test_q_y_two_sources_is_the_published_formula(pair_and_fused: tuple[U8, U8, U8]) -> None:
    a, b, f = pair_and_fused
    assert q_y(f, [a, b]) == pytest.approx(qy_two(a, b, f), rel=1e-9)


def test_q_cb_two_sources_is_the_published_formula(pair_and_fused: tuple[U8, U8, U8]) -> None:
    a, b, f = pair_and_fused
    ref = qcb_two(a, b, f)
    assert math.isfinite(ref)
    assert q_cb(f, [a, b]) == pytest.approx(ref, rel=1e-9)


def test_q_ncie_two_sources_is_the_published_formula(pair_and_fused: tuple[U8, U8, U8]) -> None:
    a, b, f = pair_and_fused
    assert q_ncie(f, [a, b]) == pytest.approx(ncie_two(a, b, f), rel=1e-12)


def test_mi_two_sources_is_the_published_formula(pair_and_fused: tuple[U8, U8, U8]) -> None:
    a, b, f = pair_and_fused
    (iaf, ha, hfa), (ibf, hb, hfb) = mi_pair(a, f), mi_pair(b, f)
    assert mi(f, [a, b]) == pytest.approx(iaf + ibf, rel=1e-12)
    hossny = 2 * (iaf / (ha + hfa) + ibf / (hb + hfb))
    assert mi_norm(f, [a, b]) == pytest.approx(hossny, rel=1e-12)


@pytest.mark.parametrize("feature", ["none", "dct", "edge", "gradient"])
def test_fmi_two_sources_is_the_reference_code(feature: str) -> None:
    # A 14 x 14 patch keeps the transcribed per-window loops fast.
    a, b = multifocus_pair()
    a, b = a[50:64, 57:71], b[50:64, 57:71]
    f = np.rint((a.astype(float) + b) / 2).astype(np.uint8)
    feats = {
        "none": lambda x: x.astype(float),
        "dct": lambda x: fft.dctn(x.astype(float), norm="ortho"),
        "edge": lambda x: _matlab_edge(x.astype(float)),
        "gradient": lambda x: np.gradient(x.astype(float), axis=1),
    }[feature]
    ref = fmi_two(feats(a), feats(b), feats(f))
    assert fmi(f, [a, b], feature=feature) == pytest.approx(ref, rel=1e-10)  # type: ignore[arg-type]


def test_matlab_edge_marks_a_step_once() -> None:
    img = np.zeros((16, 16))
    img[:, 8] = 128.0
    img[:, 9:] = 255.0
    edges = _matlab_edge(img)
    # The x-gradient peaks in column 8 only (255 vs 128 / 127 beside it); thinning keeps that
    # column, also in the replicate-padded top and bottom rows.
    assert set(np.nonzero(edges)[1]) == {8}
    assert edges.sum() == 16


def test_generalisation_is_consistent_for_duplicated_sources() -> None:
    # Rescaled sums/means: listing the same pair twice changes nothing for MI-type metrics.
    a, b = multifocus_pair()
    f = blur(SHARP, 0.7)
    for fn in (mi, mi_norm, q_abf, q_cb):
        assert fn(f, [a, b, a, b]) == pytest.approx(fn(f, [a, b]), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Focus attainment, halo, seams
# --------------------------------------------------------------------------------------------

PLANES = [blur(SHARP, 2.0), SHARP, blur(SHARP, 1.0)]


def test_focus_attainment_sharpest_plane_is_one() -> None:
    res = focus_attainment(SHARP, PLANES, block=32)
    assert res["n_textured"] > 8
    assert res["mean"] == pytest.approx(1.0)
    assert res["frac_below"] == 0.0
    assert res["frac_above"] == 0.0
    assert res["frac_outside"] == 0.0 and res["p10"] == pytest.approx(1.0)
    assert np.all(res["best_plane"][res["textured"]] == 1)
    assert res["ratios"].shape == (4, 4)


def test_focus_attainment_blurred_is_below_one() -> None:
    res = focus_attainment(blur(SHARP, 1.5), PLANES, block=32)
    assert res["mean"] < 0.9
    assert res["frac_below"] > 0.5


def test_focus_attainment_oversharpened_is_above_one() -> None:
    res = focus_attainment(unsharp(SHARP), PLANES, block=32)
    assert res["mean"] > 1.2
    assert res["frac_above"] > 0.5


def test_focus_attainment_is_a_window() -> None:
    # Defaults: the healthy window 0.95-1.15; above it is invented texture, not "better".
    assert HEALTHY_WINDOW == (0.95, 1.15)
    res = focus_attainment(unsharp(SHARP), PLANES, block=32)
    assert res["frac_outside"] == pytest.approx(res["frac_below"] + res["frac_above"])
    assert res["frac_outside"] > 0.5 and res["p10"] <= res["median"]
    ratios = np.array([0.5, 0.95, 1.0, 1.15, 2.3, np.nan])
    far = outside_window(ratios)
    assert far[1:4].tolist() == [0.0, 0.0, 0.0] and math.isnan(far[5])
    # Half as sharp as the window's floor is as far off as twice its ceiling.
    assert far[0] == pytest.approx(math.log(0.95 / 0.5)) and far[4] == pytest.approx(math.log(2))


def test_focus_attainment_blank_has_no_textured_block() -> None:
    flat = np.full((64, 64), 200, dtype=np.uint8)
    res = focus_attainment(flat, [flat, flat], block=32)
    assert res["n_textured"] == 0
    assert math.isnan(res["mean"])


def test_focus_attainment_partial_edge_blocks() -> None:
    img = SHARP[:100, :90]
    res = focus_attainment(img, [img], block=32)
    assert res["ratios"].shape == (4, 3)


def test_halo_score() -> None:
    assert halo_score(SHARP, PLANES) == 0.0
    assert halo_score(blur(SHARP, 1.5), PLANES) == 0.0
    assert halo_score(unsharp(SHARP), PLANES) > 0.02


def _texture(shape: tuple[int, int], seed: int = 1) -> F64:
    noise = np.random.default_rng(seed).normal(size=shape)
    tex = filters.gaussian(noise, sigma=1.5)
    return (tex - tex.min()) / (tex.max() - tex.min())


def test_seam_score_clean_is_about_one() -> None:
    assert seam_score(_texture((384, 384)), tile=128, overlap=32) == pytest.approx(1.0, abs=0.1)


def test_seam_score_detects_a_tile_step() -> None:
    tex = _texture((384, 384))
    # The plan's tiles start at 0, 96, 192, 256 and end at 128, 224, 320, 384 on both axes.
    # Give each strip between consecutive seam lines its own gain offset, as if tiles were
    # fused with inconsistent brightness and pasted without blending.
    cuts = [0, 96, 128, 192, 224, 256, 320, 384]
    offsets = np.random.default_rng(2).uniform(-0.15, 0.15, size=(len(cuts) - 1, len(cuts) - 1))
    stepped = tex.copy()
    for i, j in itertools.product(range(len(cuts) - 1), repeat=2):
        stepped[cuts[i] : cuts[i + 1], cuts[j] : cuts[j + 1]] += offsets[i, j]
    assert seam_score(stepped, tile=128, overlap=32) > 1.5
    assert math.isnan(seam_score(tex[:100, :100], tile=128, overlap=32))


# --------------------------------------------------------------------------------------------
# Input conventions, registry, errors
# --------------------------------------------------------------------------------------------


def test_uint8_and_float_agree() -> None:
    a, b = multifocus_pair()
    f = blur(SHARP, 1.0)
    names = ["psnr", "ssim", "cc", "q_mi", "q_abf", "q_avg", "mi", "q_y", "q_cb", "q_ncie"]
    r8 = evaluate(f, [a, b], SHARP, metrics=names)
    rf = evaluate(f / 255.0, [a / 255.0, b / 255.0], SHARP.astype(np.float32) / 255, metrics=names)
    for k in names:
        assert rf[k] == pytest.approx(r8[k], rel=1e-6), k


def test_colour_layouts_and_grey_replication_agree() -> None:
    rgb = np.stack([SHARP, SHARP, SHARP], axis=-1)
    f = blur(SHARP, 1.0)
    frgb = np.stack([f, f, f], axis=-1)
    grey = evaluate(f, [SHARP, SHARP], SHARP, metrics=["psnr", "q_abf", "q_cb"])
    last = evaluate(frgb, [rgb, rgb], rgb, metrics=["psnr", "q_abf", "q_cb"])
    first = evaluate(
        np.moveaxis(frgb, -1, 0),
        [np.moveaxis(rgb, -1, 0)] * 2,
        rgb,
        metrics=["psnr", "q_abf", "q_cb"],
    )
    assert last == pytest.approx(grey)
    assert first == pytest.approx(grey)


def test_evaluate_selects_applicable_metrics() -> None:
    both = evaluate(SHARP, [SHARP, SHARP], SHARP)
    assert list(both) == list(METRICS)
    assert set(evaluate(SHARP, sources=[SHARP])) == set(NO_REF)
    assert set(evaluate(SHARP, ground_truth=SHARP)) == {*FULL_REF, "q_avg"}
    assert set(evaluate(SHARP)) == {"q_avg"}
    assert evaluate(SHARP, ground_truth=SHARP, metrics=["cc"]) == {"cc": pytest.approx(1.0)}


def test_registry_contract() -> None:
    for name, spec in METRICS.items():
        assert spec.name == name
        assert spec.kind in ("full_reference", "no_reference")
        assert spec.reference


def test_errors() -> None:
    with pytest.raises(UnknownMetric, match="qabf"):
        evaluate(SHARP, [SHARP], metrics=["qabf"])
    with pytest.raises(KeyError):
        evaluate(SHARP, [SHARP], metrics=["nope"])
    with pytest.raises(UnsupportedInput, match="ground_truth"):
        evaluate(SHARP, [SHARP], metrics=["psnr"])
    with pytest.raises(UnsupportedInput, match="sources"):
        evaluate(SHARP, ground_truth=SHARP, metrics=["q_abf"])
    with pytest.raises(PlaneMismatch, match="64 x 64"):
        q_abf(SHARP, [SHARP[:64, :64]])
    with pytest.raises(PlaneMismatch):
        psnr(SHARP, SHARP[:64])
    with pytest.raises(UnsupportedInput, match="int16"):
        q_avg(SHARP.astype(np.int16))
    with pytest.raises(UnsupportedInput, match="NaN"):
        q_avg(np.full((8, 8), np.nan))
    with pytest.raises(UnsupportedInput, match="shape"):
        q_avg(np.zeros((4, 8, 8)))
    with pytest.raises(UnsupportedInput, match="empty"):
        q_abf(SHARP, [])
    with pytest.raises(UnsupportedInput, match="feature"):
        fmi(SHARP, [SHARP], feature="sift")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedInput, match="window"):
        fmi(SHARP, [SHARP], window=4)


def test_sources_as_generator_array_or_single_image() -> None:
    a, b = multifocus_pair()
    ref = evaluate(SHARP, [a, b], metrics=["q_abf", "mi"])
    assert evaluate(SHARP, (s for s in (a, b)), metrics=["q_abf", "mi"]) == ref
    assert evaluate(SHARP, np.stack([a, b]), metrics=["q_abf", "mi"]) == ref
    with pytest.raises(UnsupportedInput, match="single"):
        q_abf(SHARP, SHARP)  # type: ignore[arg-type]
