"""F1 (evidence): the same file (sha256), or a near-identical photo (64-bit perceptual hash within a few
bits), attached to reports of different projects. Each reused row is flagged; the earliest upload of
the content (the original) is not.

Method. Rows are grouped by content: by sha256 (for the kinds that record one event: photo, video,
sign-in sheet, minutes) and by exact phash (photo, video). Distinct phash values within `max_hamming`
bits are paired by multi-index hashing (bands, pigeonhole; no all-pairs) and an exact popcount of the
XOR. For each row, the earliest row of ANOTHER project holding the same or a near-identical content is
its original; the GX check expects the Hamming distance to such an original to exceed `max_hamming`
(0 for the same file), so every later copy fails it and becomes a flag.

Exclusions. Documents, ledgers and `other` files are not judged: a city-wide notice, a template or a
shared ledger is attached to many projects by design. Content attached to `broadcast_min_projects`
projects across `broadcast_min_units` units is distributed material, whatever its kind. Degenerate
perceptual hashes (nearly all bits equal: blank or flat images) do not match by phash.
"""

from __future__ import annotations

import great_expectations as gx
import numpy as np
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import (
    earliest_other_project,
    group_summary,
    near_pairs,
    ts_json,
)
from transforms.phash import parse_phash

RULE_ID = "F1"
ENTITY_TYPE = "evidence"
ID_COLUMN = "evidence_id"

PARAMS: dict[str, Param] = {
    "max_hamming": Param(4, "pHash of a re-encoded, resized or lightly edited copy moves a few of its 64 bits; "
                            "unrelated photos differ by ~32. ≤ 4 bits (6 %) is the usual 'same picture' "
                            "cut for 64-bit pHash and keeps chance matches near zero (P ≈ 4e-14 a pair)."),
    "sha_kinds": Param(["photo", "video", "sign_in_sheet", "meeting_minutes"],
                       "Kinds that record one event (who was there, what was seen): the same file in two "
                       "projects claims one event twice. Documents and ledgers are shared by design."),
    "phash_kinds": Param(["photo", "video"], "The contract gives a phash for photos and videos only."),
    "broadcast_min_projects": Param(10, "A file on 10+ projects across several units is distributed "
                                        "material (a notice, a poster), not one project's record passed off "
                                        "as another's."),
    "broadcast_min_units": Param(3, "… and spread over 3+ units: one person reusing a photo stays in their "
                                    "own unit or two."),
    "min_phash_bits": Param(8, "A hash with fewer than 8 ones (or zeros) comes from a flat, blank or dark "
                               "image: near-matches between such hashes say nothing about reuse."),
    "max_bucket": Param(2000, "Bound on one band bucket of the phash index (guards against pathological "
                              "inputs; real buckets hold a handful)."),
}


# Groups of "the same content" are keyed by integers, not strings (a city has millions of evidence rows):
# a photo's group is its 64-bit perceptual hash, a file's group the first 120 bits of its SHA-256 (a
# collision among a billion files has odds below 10⁻¹⁸) with bit 120 set, so the two never meet.
_SHA_GROUP = 1 << 120


def _report_projects(ctx: RuleContext) -> pl.DataFrame:
    """source_id, report_id → project_id, one row per report."""
    return ctx.table("stage_reports").select("source_id", "report_id", "project_id").unique(
        subset=["source_id", "report_id"], keep="first")


def _rows(ctx: RuleContext, params: dict, reports: pl.DataFrame) -> pl.DataFrame:
    """One narrow row per judged evidence item: `row` (its position in the evidence table), project and
    unit (hashes), upload time `t`, and its content keys: `sha_grp` (null unless its kind is judged by
    sha256 and it has a well-formed one) and `ph` (null unless judged by phash and not degenerate).
    Ids are looked up again only for the rows that end up flagged (`_identify`). `reports`:
    `_report_projects`."""
    projects = ctx.table("projects").select("source_id", "project_id", "unit_code").unique(
        subset=["source_id", "project_id"], keep="first")
    sha = pl.col("sha256").str.strip_chars().str.to_lowercase()
    ph = parse_phash(pl.col("phash"))
    lo, hi = params["min_phash_bits"], 64 - params["min_phash_bits"]
    # The content keys are computed before the joins (which then carry integers, not 64-character hex
    # strings), and in morsels (the streaming engine) rather than column by column over the whole city.
    keys = (
        ctx.table("evidence").lazy()
        .with_row_index("row")
        .filter(pl.col("uploaded_at").is_not_null())
        .select(
            "row", "source_id", "report_id", pl.col("uploaded_at").alias("t"),
            pl.when(pl.col("kind").is_in(params["sha_kinds"]) & sha.str.contains(r"^[0-9a-f]{64}$"))
            .then(sha.str.slice(0, 30).str.to_integer(base=16, dtype=pl.Int128) + pl.lit(_SHA_GROUP, pl.Int128))
            .alias("sha_grp"),
            pl.when(pl.col("kind").is_in(params["phash_kinds"]) & ph.bitwise_count_ones().is_between(lo, hi))
            .then(ph).alias("ph"),
        )
        .filter(pl.col("sha_grp").is_not_null() | pl.col("ph").is_not_null())
        .collect(engine="streaming")
    )
    return (
        keys.lazy()
        .join(reports.lazy(), on=["source_id", "report_id"], how="inner", maintain_order="left")
        .filter(pl.col("project_id").is_not_null())
        .join(projects.lazy(), on=["source_id", "project_id"], how="left", maintain_order="left")
        .select(
            "row",
            # projects and units are only compared for equality: a 64-bit hash of (source, id) will do
            pl.struct("source_id", "project_id").hash().alias("project"),
            pl.struct("source_id", pl.col("unit_code").fill_null("?")).hash().alias("unit"),
            "t", "sha_grp", "ph",
        )
        .collect()
    )


def _identify(ctx: RuleContext, rows: pl.Series, reports: pl.DataFrame) -> pl.DataFrame:
    """row (positions in the evidence table) → row, source_id, evidence_id, report_id, project_id, kind,
    uploaded_at. `reports`: `_report_projects`."""
    picked = rows.unique().sort()
    return (
        ctx.table("evidence").select("source_id", "evidence_id", "report_id", "kind", "uploaded_at")[picked]
        .with_columns(picked.alias("row"))
        .join(reports, on=["source_id", "report_id"], how="left")
    )


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    reports = _report_projects(ctx)
    base = _rows(ctx, params, reports)
    if base.is_empty():
        return pl.DataFrame()
    by_sha = base.filter(pl.col("sha_grp").is_not_null()).select("row", "project", "unit", "t",
                                                                  pl.col("sha_grp").alias("grp"))
    by_ph = base.filter(pl.col("ph").is_not_null()).select("row", "project", "unit", "t",
                                                            pl.col("ph").cast(pl.Int128).alias("grp"), "ph")
    del base
    keyed = pl.concat([by_sha, by_ph.drop("ph")])
    summary = group_summary(keyed)
    broadcast = summary.filter(
        (pl.col("n_projects") >= params["broadcast_min_projects"]) & (pl.col("n_units") >= params["broadcast_min_units"])
    ).select("grp")
    summary = summary.join(broadcast, on="grp", how="anti")

    # Near-identical photos: distinct phash values within max_hamming bits.
    values = by_ph.join(broadcast, on="grp", how="anti").select("grp", "ph").unique(subset=["grp"]).sort("grp")
    del by_sha, by_ph
    i, j, d = near_pairs(values["ph"].to_numpy(), params["max_hamming"], params["max_bucket"])
    g = values["grp"]
    near = pl.DataFrame({"grp": pl.concat([g.gather(i), g.gather(j)]), "grp2": pl.concat([g.gather(j), g.gather(i)]),
                         "dist": np.r_[d, d]}, schema={"grp": pl.Int128, "grp2": pl.Int128, "dist": pl.Int64})
    self_links = summary.select("grp", pl.col("grp").alias("grp2"), pl.lit(0, pl.Int64).alias("dist"))
    links = pl.concat([self_links, near]).with_columns(
        pl.when(pl.col("grp2") >= _SHA_GROUP).then(pl.lit("sha256")).otherwise(pl.lit("phash")).alias("via")
    )
    # Judged: rows whose content (itself or a near photo) reaches at least two projects.
    cand = pl.concat([summary.filter(pl.col("n_projects") >= 2).select("grp"), near.select("grp")]).unique()
    links = links.join(cand, on="grp", how="semi")
    reach = (
        links.join(keyed.select(pl.col("grp").alias("grp2"), "project").unique(), on="grp2")
        .group_by("grp").agg(pl.col("project").n_unique().alias("content_projects"))
        .filter(pl.col("content_projects") >= 2)
    )
    rows = keyed.join(reach, on="grp", how="inner")
    del keyed
    if rows.is_empty():
        return pl.DataFrame()
    orig = earliest_other_project(rows, links, summary)
    judged = rows.group_by("row").agg(pl.col("content_projects").max())
    ids = _identify(ctx, pl.concat([judged["row"], orig["orig_row"]]), reports)
    out = (
        judged.join(orig, on="row", how="left")
        .join(ids.select("row", "source_id", "evidence_id", "report_id", "project_id", "kind", "uploaded_at"), on="row")
        .join(ids.select(pl.col("row").alias("orig_row"), pl.col("source_id").alias("original_source_id"),
                         pl.col("evidence_id").alias("original_evidence_id"),
                         pl.col("report_id").alias("original_report_id"),
                         pl.col("project_id").alias("original_project_id"),
                         pl.col("uploaded_at").alias("original_uploaded_at")),
              on="orig_row", how="left")
        .rename({"dist": "hamming_to_original", "via": "match"})
        .drop("orig_row", "orig_t", "row")
        .sort("source_id", "evidence_id")
    )
    return out


def checks(params: dict) -> list[Check]:
    return [
        Check(RULE_ID, gx.expectations.ExpectColumnValuesToBeBetween(
            column="hamming_to_original", min_value=params["max_hamming"] + 1), ENTITY_TYPE,
            "同一文件或近似照片已由其他项目先行上传"),
    ]


def detail(params: dict) -> pl.Expr:
    return pl.struct(
        "match",
        "hamming_to_original",
        pl.lit(params["max_hamming"]).alias("max_hamming"),
        "kind",
        "project_id",
        "report_id",
        ts_json("uploaded_at").alias("uploaded_at"),
        "original_evidence_id",
        "original_report_id",
        "original_project_id",
        "original_source_id",
        ts_json("original_uploaded_at").alias("original_uploaded_at"),
        "content_projects",
    ).struct.json_encode()
