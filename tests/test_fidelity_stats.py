"""oneshot_tf.fidelity.stats against hand-computed values (worked out in the
comments) and against scipy.stats as a cross-check."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from oneshot_tf.fidelity import stats


# ---------------------------------------------------------------- rankdata

def test_rankdata_hand():
    # sorted: 10, 10 -> ranks 1, 2 -> 1.5 each; 20, 20, 20 -> ranks 3, 4, 5
    # -> 4 each; 30 -> rank 6.
    r = stats.rankdata([10, 20, 10, 30, 20, 20])
    np.testing.assert_array_equal(r, [1.5, 4, 1.5, 6, 4, 4])
    assert r.dtype == np.float64
    np.testing.assert_array_equal(stats.rankdata([3.0]), [1.0])
    assert stats.rankdata([]).shape == (0,)


# ---------------------------------------------------------------- correlations, by hand

def test_pearson_hand():
    # x = 1..4: mean 2.5, dx = [-1.5, -.5, .5, 1.5], sum dx^2 = 5
    # y = [2, 4, 5, 9]: mean 5, dy = [-3, -1, 0, 4], sum dy^2 = 26
    # sum dx dy = 4.5 + .5 + 0 + 6 = 11  ->  r = 11 / sqrt(130)
    r = stats.pearson([1, 2, 3, 4], [2, 4, 5, 9])
    assert isinstance(r, float)
    assert r == pytest.approx(11 / math.sqrt(130))
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_hand_with_tie():
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]
    # both rank means 2.5: dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5]
    # sum dx dy = 2.25 + 2.25 = 4.5; sum dx^2 = 4.5; sum dy^2 = 5
    # rho = 4.5 / sqrt(22.5) = sqrt(0.9)
    rho = stats.spearman([1, 2, 2, 3], [1, 3, 2, 4])
    assert rho == pytest.approx(math.sqrt(0.9))
    # Monotone but non-linear: spearman 1, pearson below 1.
    assert stats.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9


def test_kendall_tau_b_hand_with_ties():
    # x = [1, 2, 2, 3, 4], y = [1, 3, 2, 2, 5]; n = 5, n0 = 10 pairs:
    # (0,1) C  (0,2) C  (0,3) C  (0,4) C
    # (1,2) x tied (2 = 2)      (1,3) dx +, dy 2-3 < 0 -> D   (1,4) C
    # (2,3) y tied (2 = 2)      (2,4) C                        (3,4) C
    # C = 7, D = 1, n1 = 1 (tied in x), n2 = 1 (tied in y)
    # tau_b = (7 - 1) / sqrt((10 - 1)(10 - 1)) = 6 / 9 = 2/3
    tau = stats.kendall([1, 2, 2, 3, 4], [1, 3, 2, 2, 5])
    assert isinstance(tau, float)
    assert tau == pytest.approx(2 / 3)


def test_kendall_tau_b_hand_unequal_ties():
    # x = [1, 1, 2, 3], y = [1, 2, 3, 4]; n0 = 6
    # (0,1) x tied; the other 5 pairs are concordant: C = 5, D = 0
    # n1 = 1, n2 = 0 -> tau_b = 5 / sqrt(5 * 6) = sqrt(5/6)
    assert stats.kendall([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 6))
    # Fully reversed: all 6 pairs discordant -> -1.
    assert stats.kendall([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_partial_spearman_hand():
    # ranks of x uncorrelated with z (r_xz = 0), r_yz = 0.8, r_xy = -0.4:
    # (-0.4 - 0 * 0.8) / sqrt((1 - 0) (1 - 0.64)) = -2/3
    z, x, y = [1, 2, 3, 4], [2, 4, 1, 3], [1, 2, 4, 3]
    assert stats.spearman(x, z) == pytest.approx(0.0, abs=1e-12)
    assert stats.spearman(y, z) == pytest.approx(0.8)
    assert stats.spearman(x, y) == pytest.approx(-0.4)
    assert stats.partial_spearman(x, y, z) == pytest.approx(-2.0 / 3.0)
    # a score that is only z, monotonically transformed, says nothing at fixed z
    assert math.isnan(stats.partial_spearman(np.exp(z), y, z))
    assert math.isnan(stats.partial_spearman(x, [5, 5, 5, 5], z))
    with pytest.raises(ValueError, match="x and z must have the same length"):
        stats.partial_spearman(x, y, [1, 2, 3])


@pytest.mark.parametrize("seed", [0, 1])
def test_partial_spearman_is_the_correlation_of_rank_residuals(seed):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 12, 30).astype(float)             # ties
    x = z + rng.normal(0, 3, 30)
    y = -z + 0.5 * x + rng.normal(0, 3, 30)
    rx, ry, rz = (sps.rankdata(v) for v in (x, y, z))
    design = np.c_[rz, np.ones(30)]
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    assert stats.partial_spearman(x, y, z) == pytest.approx(np.corrcoef(*res)[0, 1])


def test_correlations_dict():
    d = stats.correlations([1, 2, 2, 3, 4], [1, 3, 2, 2, 5])
    assert set(d) == {"pearson", "spearman", "kendall"}
    assert d["kendall"] == pytest.approx(2 / 3)
    assert d["spearman"] == pytest.approx(stats.spearman([1, 2, 2, 3, 4], [1, 3, 2, 2, 5]))
    assert all(isinstance(v, float) for v in d.values())


def test_constant_input_is_nan():
    for fn in (stats.pearson, stats.spearman, stats.kendall):
        assert math.isnan(fn([1, 1, 1], [1, 2, 3]))
        assert math.isnan(fn([1, 2, 3], [5, 5, 5]))
    assert all(math.isnan(v) for v in stats.correlations([2, 2], [0, 1]).values())


# ---------------------------------------------------------------- scipy cross-check

@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scipy_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    x = rng.integers(0, 6, size=n).astype(float)      # heavy ties
    y = x + rng.integers(0, 4, size=n)                # correlated, tied
    np.testing.assert_allclose(stats.rankdata(x), sps.rankdata(x, method="average"))
    assert stats.pearson(x, y) == pytest.approx(sps.pearsonr(x, y)[0], abs=1e-12)
    assert stats.spearman(x, y) == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-12)
    assert stats.kendall(x, y) == pytest.approx(sps.kendalltau(x, y)[0], abs=1e-12)  # tau-b
    z = rng.normal(size=n)                            # continuous, untied
    assert stats.kendall(x, z) == pytest.approx(sps.kendalltau(x, z)[0], abs=1e-12)


def test_kendall_across_row_blocks_matches_scipy():
    # More items than one block of the pair-sign computation.
    rng = np.random.default_rng(7)
    n = stats._KENDALL_ROWS * 2 + 37
    x = rng.integers(0, 50, size=n)
    y = x + rng.integers(0, 30, size=n)
    assert stats.kendall(x, y) == pytest.approx(sps.kendalltau(x, y)[0], abs=1e-12)


# ---------------------------------------------------------------- input errors

@pytest.mark.parametrize("fn", [stats.pearson, stats.spearman, stats.kendall, stats.correlations])
def test_correlation_value_errors(fn):
    with pytest.raises(ValueError, match=r"same length, got 3 and 2"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"at least 2 item"):
        fn([1], [2])
    with pytest.raises(ValueError, match=r"x must be finite, got nan at index 1"):
        fn([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(ValueError, match=r"y must be finite, got inf"):
        fn([1, 2, 3], [1, 2, float("inf")])
    with pytest.raises(ValueError, match=r"must be 1-D"):
        fn([[1, 2], [3, 4]], [[1, 2], [3, 4]])


def test_rankdata_rejects_nan_and_2d():
    with pytest.raises(ValueError, match="finite"):
        stats.rankdata([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        stats.rankdata(np.zeros((2, 2)))


# ---------------------------------------------------------------- top of the ranking

def test_top_half_hand():
    # n = 6 -> 3 items. Highest truth 0.9 at indices 1 and 3, then 0.7 tied
    # at indices 2 and 5: the lower index (2) wins.
    idx = stats.top_half([0.5, 0.9, 0.7, 0.9, 0.1, 0.7])
    np.testing.assert_array_equal(idx, [1, 2, 3])
    # Odd n = 5 -> 2 items (indices 4 and 0), returned ascending.
    np.testing.assert_array_equal(stats.top_half([9, 1, 2, 3, 10]), [0, 4])
    with pytest.raises(ValueError, match="at least 2"):
        stats.top_half([1.0])


def test_precision_at_k_hand_with_boundary_tie():
    score = [0.9, 0.8, 0.7, 0.6, 0.5]   # ranks items 0, 1, 2, 3, 4
    truth = [0.3, 0.9, 0.5, 0.5, 0.8]   # sorted desc: 0.9, 0.8, 0.5, 0.5, 0.3
    # k=1: pick item 0 (truth .3); 1st largest truth .9 -> 0/1
    assert stats.precision_at_k(score, truth, 1) == 0.0
    # k=2: items 0, 1 (.3, .9); 2nd largest .8 -> only .9 counts -> 1/2
    assert stats.precision_at_k(score, truth, 2) == 0.5
    # k=3: items 0, 1, 2 (.3, .9, .5); 3rd largest .5, tied with item 3's .5:
    # item 2's .5 >= .5 counts -> 2/3
    assert stats.precision_at_k(score, truth, 3) == pytest.approx(2 / 3)
    # k=4: items 0..3 (.3, .9, .5, .5); 4th largest .5 -> 3/4
    assert stats.precision_at_k(score, truth, 4) == 0.75
    # k=n: everything counts.
    assert stats.precision_at_k(score, truth, 5) == 1.0


def test_precision_at_k_score_tie_lower_index_first():
    # Scores tied at the top: items 0 and 1 both score 1; k=1 takes item 0
    # (truth 0), the largest truth is 3 -> 0.0.  Swapping the order of the
    # tied items' truths gives 1.0.
    assert stats.precision_at_k([1, 1, 0, 0], [0, 3, 1, 2], 1) == 0.0
    assert stats.precision_at_k([1, 1, 0, 0], [3, 0, 1, 2], 1) == 1.0


def test_precision_at_k_errors():
    with pytest.raises(ValueError, match=r"k=0 with n=5"):
        stats.precision_at_k(range(5), range(5), 0)
    with pytest.raises(ValueError, match=r"k=6 with n=5"):
        stats.precision_at_k(range(5), range(5), 6)
    with pytest.raises(ValueError, match=r"k=1.5 with n=5"):
        stats.precision_at_k(range(5), range(5), 1.5)
    with pytest.raises(ValueError, match="same length"):
        stats.precision_at_k([1, 2], [1, 2, 3], 1)


def test_top1_truth_hand():
    # Highest score 0.9 at items 1 and 2: the lower index (1) -> truth 20.
    assert stats.top1_truth([0.5, 0.9, 0.9, 0.1], [10, 20, 30, 40]) == 20.0
    assert isinstance(stats.top1_truth([0.5, 0.9], [1, 2]), float)
    assert stats.top1_truth([3.0], [0.7]) == 0.7
    with pytest.raises(ValueError, match="score must be finite"):
        stats.top1_truth([float("nan"), 1.0], [1.0, 2.0])


# ---------------------------------------------------------------- bootstrap

def _correlated(n=60, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + 0.3 * rng.normal(size=n)


def test_bootstrap_deterministic_and_contains_estimate():
    x, y = _correlated()
    for fn in (stats.spearman, stats.kendall, stats.pearson):
        lo, hi = stats.bootstrap_ci(fn, x, y, num_samples=200, seed=5)
        assert (lo, hi) == stats.bootstrap_ci(fn, x, y, num_samples=200, seed=5)
        assert isinstance(lo, float) and isinstance(hi, float)
        assert lo <= fn(x, y) <= hi
        assert 0.5 < lo < hi <= 1.0
    a = stats.bootstrap_ci(stats.spearman, x, y, num_samples=200, seed=5)
    b = stats.bootstrap_ci(stats.spearman, x, y, num_samples=200, seed=6)
    assert a != b
    # A lower level gives a narrower interval inside the wider one.
    lo90, hi90 = stats.bootstrap_ci(stats.spearman, x, y, num_samples=200, seed=5, level=0.5)
    assert a[0] <= lo90 <= hi90 <= a[1]


def test_bootstrap_hand_cases():
    # A statistic that ignores the resampling: every resample gives 3.0.
    assert stats.bootstrap_ci(lambda a, b: 3.0, [1, 2, 3], [4, 5, 6], num_samples=20) == (3.0, 3.0)
    # x constant: every resample is constant -> spearman nan everywhere.
    lo, hi = stats.bootstrap_ci(stats.spearman, [1, 1, 1, 1], [1, 2, 3, 4], num_samples=50)
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_skips_nan_resamples():
    x = np.arange(10.0)
    # Finite only when the first drawn item is < 3: ~30% finite -> (nan, nan).
    few = stats.bootstrap_ci(lambda a, b: a[0] if a[0] < 3 else float("nan"), x, x,
                             num_samples=400)
    assert all(math.isnan(v) for v in few)
    # Finite when the first drawn item is < 7: ~70% finite -> the nan
    # resamples are skipped, the interval lies within the finite values 0..6.
    lo, hi = stats.bootstrap_ci(lambda a, b: a[0] if a[0] < 7 else float("nan"), x, x,
                                num_samples=400)
    assert 0.0 <= lo < hi <= 6.0


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="level must be in"):
        stats.bootstrap_ci(stats.spearman, [1, 2, 3], [1, 2, 3], level=1.0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        stats.bootstrap_ci(stats.spearman, [1, 2, 3], [1, 2, 3], num_samples=0)
    with pytest.raises(ValueError, match="same length"):
        stats.bootstrap_ci(stats.spearman, [1, 2, 3], [1, 2])


# ---------------------------------------------------------------- reliability

def test_spearman_brown_hand():
    # 2 * .5 / (1 + .5) = 2/3
    assert stats.spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    # 4 * .2 / (1 + 3 * .2) = .8 / 1.6 = .5
    assert stats.spearman_brown(0.2, 4) == pytest.approx(0.5)
    assert stats.spearman_brown(0.3, 1) == pytest.approx(0.3)
    assert stats.spearman_brown(1.0, 5) == pytest.approx(1.0)
    assert stats.spearman_brown(0.0, 5) == 0.0
    assert math.isnan(stats.spearman_brown(float("nan"), 3))
    assert math.isnan(stats.spearman_brown(-1.0, 2))  # 1 + (2 - 1)(-1) = 0
    with pytest.raises(ValueError, match=r"k must be a finite number >= 1, got k=0.5"):
        stats.spearman_brown(0.5, 0.5)
    with pytest.raises(ValueError, match=r"r must be a correlation in \[-1, 1\], got r=1.5"):
        stats.spearman_brown(1.5, 2)


def test_seed_ceiling_3x2_hand():
    # columns a = [1, 2, 3], b = [1, 3, 2]
    # pearson: da = [-1, 0, 1], db = [-1, 1, 0]; sum = 1, sums sq 2, 2 -> 1/2
    # spearman: the values are their ranks -> 1/2
    # kendall: (0,1) C, (0,2) C, (1,2) D -> (2 - 1) / 3 = 1/3
    # spearman_brown(1/2, 2) = 2/3
    # seed_std: rows [1,1] -> 0, [2,3] and [3,2] -> sqrt(.5) -> mean sqrt(2)/3
    out = stats.seed_ceiling([[1, 1], [2, 3], [3, 2]])
    assert out["pearson"] == pytest.approx(0.5)
    assert out["spearman"] == pytest.approx(0.5)
    assert out["kendall"] == pytest.approx(1 / 3)
    assert out["spearman_brown"] == pytest.approx(2 / 3)
    assert out["seed_std"] == pytest.approx(math.sqrt(2) / 3)
    assert out["seeds"] == 2


def test_seed_ceiling_4x3_hand():
    # c0 = [1, 2, 3, 4], c1 = [1, 2, 4, 3], c2 = [2, 1, 3, 4]  (all means 2.5,
    # sums of squared deviations 5, values are their own ranks)
    # c0~c1: dev products 2.25 + .25 + .75 + .75 = 4 -> r = 4/5;
    #        one discordant pair (2,3): (5 - 1)/6 = 2/3
    # c0~c2: .75 + .75 + .25 + 2.25 = 4 -> 4/5; one discordant (0,1): 2/3
    # c1~c2: .75 + .75 + .75 + .75 = 3 -> 3/5; discordant (0,1), (2,3): (4 - 2)/6 = 1/3
    # means: pearson = spearman = (.8 + .8 + .6)/3 = 11/15; kendall = (5/3)/3 = 5/9
    # spearman_brown(11/15, 3) = (33/15) / (1 + 22/15) = 33/37
    # seed_std: rows [1,1,2], [2,2,1], [3,4,3], [4,3,4] each have deviations
    # (-1/3, -1/3, 2/3) up to sign/order: ss = 6/9, / 2 = 1/3 -> std sqrt(1/3)
    m = np.array([[1, 1, 2], [2, 2, 1], [3, 4, 3], [4, 3, 4]])
    out = stats.seed_ceiling(m)
    assert out["pearson"] == pytest.approx(11 / 15)
    assert out["spearman"] == pytest.approx(11 / 15)
    assert out["kendall"] == pytest.approx(5 / 9)
    assert out["spearman_brown"] == pytest.approx(33 / 37)
    assert out["seed_std"] == pytest.approx(math.sqrt(1 / 3))
    assert out["seeds"] == 3
    # Cross-check the pairwise means with scipy.
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert out["kendall"] == pytest.approx(np.mean([sps.kendalltau(m[:, i], m[:, j])[0]
                                                    for i, j in pairs]))


def test_seed_ceiling_one_seed():
    out = stats.seed_ceiling([[0.1], [0.5], [0.3]])
    assert out["seeds"] == 1
    for key in ("pearson", "spearman", "kendall", "spearman_brown", "seed_std"):
        assert math.isnan(out[key])


def test_seed_ceiling_errors():
    with pytest.raises(ValueError, match=r"must be 2-D \[candidates, seeds\]"):
        stats.seed_ceiling([1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 candidates, got 1"):
        stats.seed_ceiling([[1, 2]])
    with pytest.raises(ValueError, match="must be finite"):
        stats.seed_ceiling([[1, 2], [float("nan"), 3]])
