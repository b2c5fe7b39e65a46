"""F5 (person): the numbers reported under one person (the metrics of the reports they submitted) fail
digit tests, on a sample large enough to judge.

- First digit (Benford): Nigrini's mean absolute deviation `MAD = mean_d |p_d - e_d|` over digits 1–9.
  Nigrini's cut-offs were set for large samples: a conforming sample of 130 values already has an
  expected MAD of ~0.02 by chance alone. So the MAD is judged only when the deviation is also
  statistically significant (Pearson chi-square, 8 df, p < `alpha`); GX expects MAD ≤ `first_digit_max_mad`
  (Nigrini's nonconformity line, 0.015). The yardstick is Benford's law when the city's pooled values
  conform to it (pooled MAD ≤ 0.015); otherwise the pooled distribution of everyone else's values (what
  reporting of these metrics looks like here; leave-one-out), named in the detail.
- Round-number heaping: the share of whole numbers ≥ 10 ending in 0 or 5, against the people's median
  share (at least 20 %, the share for unrounded numbers); judged when a one-sided binomial test gives
  p < `alpha`; GX expects the share ≤ `round_share_max`.
- Last-digit uniformity: chi-square (9 df) of the last digits of whole numbers ≥ 10 against uniform;
  judged when p < `alpha`; GX expects the last-digit MAD ≤ `last_digit_max_mad`.

No verdict below `min_n_first` / `min_n_last` values (null figures: GX ignores them).
"""

from __future__ import annotations

import great_expectations as gx
import numpy as np
import polars as pl
from scipy import stats

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import BENFORD_FIRST, digit_profile

RULE_ID = "F5"
ENTITY_TYPE = "person"
ID_COLUMN = "person_id"
ENTITY_COLUMN = "submitted_by"

PARAMS: dict[str, Param] = {
    "min_n_first": Param(100, "Pearson's chi-square needs expected counts of about 5 (Cochran: no cell below 1, "
                              "at most 20 % below 5); the rarest Benford digit (9) has 4.6 %, so 100 values "
                              "is the least that supports a first-digit verdict. Below it, only heaping."),
    "min_n_last": Param(50, "Ten equally likely last digits need 50 values for 5 expected in each."),
    "alpha": Param(1e-4, "Significance per test and person. A city has ~1,000 people with enough values and "
                         "three tests each: 1e-4 keeps chance flags near 0.3 a night."),
    "first_digit_max_mad": Param(0.015, "Nigrini's first-digit MAD nonconformity line (above 0.015)."),
    "yardstick_max_mad": Param(0.015, "Benford is the yardstick only if the pooled values of the city "
                                      "conform to it (same line); else the pooled distribution is."),
    "round_share_max": Param(0.5, "Unrounded whole numbers end in 0 or 5 one time in five; people round "
                                  "now and then, but half or more of all their figures being round means "
                                  "estimated or invented numbers."),
    "round_share_floor": Param(0.2, "The 0-or-5 share of numbers nobody rounded (2 digits of 10)."),
    "last_digit_max_mad": Param(0.04, "Last-digit MAD against uniform (0.1 each): natural counts ≥ 10 stay "
                                      "near 0.01; 0.04 is a digit preference strong enough to see by eye."),
}


def values(ctx: RuleContext, entity_column: str = ENTITY_COLUMN) -> pl.DataFrame:
    reports = ctx.table("stage_reports").select("source_id", "report_id", entity_column).unique(
        subset=["source_id", "report_id"], keep="first")
    return (
        ctx.table("metrics").select("source_id", "report_id", "metric_value")
        .join(reports, on=["source_id", "report_id"], how="inner")
        .filter(pl.col(entity_column).is_not_null() & pl.col("metric_value").is_not_null())
    )


def digit_features(prof: pl.DataFrame, keys: list[str], params: dict) -> pl.DataFrame:
    """The tests over every entity's digit counts (`digit_profile`): the yardsticks are the city's."""
    if prof.is_empty():
        return prof
    fd = prof.select([f"fd{k}" for k in range(1, 10)]).to_numpy().astype(np.float64)
    ld = prof.select([f"ld{k}" for k in range(10)]).to_numpy().astype(np.float64)
    n1, n2 = fd.sum(axis=1), ld.sum(axis=1)

    pooled = fd.sum(axis=0) / max(fd.sum(), 1.0)
    pooled_mad = float(np.abs(pooled - BENFORD_FIRST).mean())
    benford_ok = pooled_mad <= params["yardstick_max_mad"] or fd.sum() == 0
    if benford_ok:
        expected = np.broadcast_to(BENFORD_FIRST, fd.shape)
    else:  # everyone else's values (leave-one-out: a person is not their own yardstick)
        others = fd.sum(axis=0)[None, :] - fd
        expected = others / np.maximum(others.sum(axis=1, keepdims=True), 1.0)

    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = fd / n1[:, None]
        mad1 = np.abs(p1 - expected).mean(axis=1)
        chi1 = np.nansum((fd - n1[:, None] * expected) ** 2 / (n1[:, None] * expected), axis=1)
        pv1 = stats.chi2.sf(chi1, 8)
        p2 = ld / n2[:, None]
        mad2 = np.abs(p2 - 0.1).mean(axis=1)
        chi2 = ((ld - n2[:, None] * 0.1) ** 2 / (n2[:, None] * 0.1)).sum(axis=1)
        pv2 = stats.chi2.sf(chi2, 9)
        k_round = ld[:, 0] + ld[:, 5]
        share = k_round / n2
    enough1, enough2 = n1 >= params["min_n_first"], n2 >= params["min_n_last"]
    baseline = max(params["round_share_floor"], float(np.median(share[enough2])) if enough2.any() else 0.0)
    pv_round = stats.binom.sf(k_round - 1, n2.astype(np.int64), baseline)
    alpha = params["alpha"]

    def verdict(value, ok):
        return np.where(ok, np.round(value, 4), np.nan)

    out = prof.select(
        *keys, "n_first", "n_last",
        pl.struct([pl.col(f"fd{k}").alias(str(k)) for k in range(1, 10)]).alias("first_digits"),
        pl.struct([pl.col(f"ld{k}").alias(str(k)) for k in range(10)]).alias("last_digits"),
    ).with_columns(
        pl.Series("first_digit_mad_all", np.round(mad1, 4)).fill_nan(None),
        pl.Series("first_digit_chi2", np.round(chi1, 2)).fill_nan(None),
        pl.Series("first_digit_p", pv1).fill_nan(None),
        pl.Series("first_digit_mad", verdict(mad1, enough1 & (pv1 < alpha))).fill_nan(None),
        pl.Series("round_share_all", np.round(share, 4)).fill_nan(None),
        pl.Series("round_p", pv_round).fill_nan(None),
        pl.Series("round_share", verdict(share, enough2 & (pv_round < alpha))).fill_nan(None),
        pl.Series("last_digit_mad_all", np.round(mad2, 4)).fill_nan(None),
        pl.Series("last_digit_p", pv2).fill_nan(None),
        pl.Series("last_digit_mad", verdict(mad2, enough2 & (pv2 < alpha))).fill_nan(None),
        pl.lit("benford" if benford_ok else "pooled").alias("first_digit_yardstick"),
        pl.lit(round(pooled_mad, 4)).alias("pooled_first_digit_mad"),
        pl.lit(round(baseline, 4)).alias("round_share_baseline"),
    )
    judged = (pl.col("n_first") >= params["min_n_first"]) | (pl.col("n_last") >= params["min_n_last"])
    return out.filter(judged)


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    keys = ["source_id", ID_COLUMN]
    # A person's numbers are all in their source: their digit counts are made source by source.
    prof = ctx.by_source(lambda one: digit_profile(values(one).rename({ENTITY_COLUMN: ID_COLUMN}), keys),
                         columns={"metrics": ["report_id", "metric_value"]})
    return digit_features(prof, keys, params)


def checks(params: dict) -> list[Check]:
    e = gx.expectations
    return [
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(column="first_digit_mad", max_value=params["first_digit_max_mad"]),
              ENTITY_TYPE, "首位数字分布显著偏离本福特定律"),
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(column="round_share", max_value=params["round_share_max"]),
              ENTITY_TYPE, "尾数为0或5的整数占比过高（凑整）"),
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(column="last_digit_mad", max_value=params["last_digit_max_mad"]),
              ENTITY_TYPE, "末位数字分布显著不均匀"),
    ]


def detail(params: dict) -> pl.Expr:
    tests = pl.concat_list(
        pl.when(pl.col("first_digit_mad") > params["first_digit_max_mad"]).then(pl.lit("first_digit")),
        pl.when(pl.col("round_share") > params["round_share_max"]).then(pl.lit("round_number_heaping")),
        pl.when(pl.col("last_digit_mad") > params["last_digit_max_mad"]).then(pl.lit("last_digit")),
    ).list.drop_nulls()
    return pl.struct(
        tests.alias("tests"),
        "n_first",
        pl.col("first_digit_mad_all").alias("first_digit_mad"),
        pl.col("first_digit_p").round_sig_figs(3),
        "first_digit_yardstick",
        "first_digits",
        "n_last",
        pl.col("round_share_all").alias("round_share"),
        "round_share_baseline",
        pl.col("round_p").round_sig_figs(3),
        pl.col("last_digit_mad_all").alias("last_digit_mad"),
        pl.col("last_digit_p").round_sig_figs(3),
        "last_digits",
        pl.lit(params["alpha"]).alias("alpha"),
    ).struct.json_encode()
