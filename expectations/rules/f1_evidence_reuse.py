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
LONG_RUNNING = True

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


# An evidence row's `row` id: the place in the city of the first source of its shard (bits 32 and up)
# and its position in the shard (below), so ids stay unique and ordered as the city's evidence table
# when its rows exist only a shard of sources at a time. The order of uploads at the same instant
# follows it.
_SOURCE_SHIFT = 32


def _source_places(ctx: RuleContext) -> dict[str, int]:
    """source_id → its place in the city: the order in which the held reports list the sources, which is
    the order `by_source` goes through them. (A source with no report has no judged evidence and needs
    no place.)"""
    return {sid: place for place, sid in enumerate(ctx.table("stage_reports")["source_id"].unique(maintain_order=True))}


def _numbered(evidence: pl.DataFrame, places: dict[str, int]) -> pl.DataFrame:
    """`evidence` (what `by_source` hands out: a shard of consecutive sources, or the whole city when
    every table is held) with its `row` ids in front, numbered in its order from the place of its first
    source. (Rows of a source without a place have no report to join and are dropped later.)"""
    present = [places[s] for s in evidence["source_id"].unique().to_list() if s in places]
    place = min(present) if present else 0
    return evidence.with_row_index("row").with_columns(
        pl.col("row").cast(pl.Int64) + pl.lit(place << _SOURCE_SHIFT, pl.Int64))


def _source_rows(one: RuleContext, params: dict, places: dict[str, int]) -> pl.DataFrame:
    """`_rows` of one source (or of the whole city, for a context that holds every table)."""
    reports = _report_projects(one)
    projects = one.table("projects").select("source_id", "project_id", "unit_code").unique(
        subset=["source_id", "project_id"], keep="first")
    sha = pl.col("sha256").str.strip_chars().str.to_lowercase()
    ph = parse_phash(pl.col("phash"))
    lo, hi = params["min_phash_bits"], 64 - params["min_phash_bits"]
    # The content keys are computed before the joins (which then carry integers, not 64-character hex
    # strings), and in morsels (the streaming engine) rather than column by column over the whole source.
    keys = (
        _numbered(one.table("evidence"), places).lazy()
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


def _rows(ctx: RuleContext, params: dict, places: dict[str, int]) -> pl.DataFrame:
    """One narrow row per judged evidence item: `row` (its id, `_numbered`), project and unit (hashes),
    upload time `t`, and its content keys: `sha_grp` (null unless its kind is judged by sha256 and it has
    a well-formed one) and `ph` (null unless judged by phash and not degenerate). Integers only: the
    city's evidence is read source by source, and only these rows are kept of it. Ids are looked up
    again only for the rows that end up flagged (`_identify`). `places`: `_source_places`."""
    return ctx.by_source(lambda one: _source_rows(one, params, places),
                         columns={"evidence": ["report_id", "kind", "uploaded_at", "sha256", "phash"]})


def _identify(ctx: RuleContext, rows: pl.Series, places: dict[str, int]) -> pl.DataFrame:
    """row (ids, `_numbered`) → row, source_id, evidence_id, report_id, project_id, kind, uploaded_at,
    read source by source again for those rows alone (and their reports' projects looked up within
    their source: a city-wide report map would hold millions of string keys). `places`:
    `_source_places`."""
    picked = rows.unique().sort().alias("row").to_frame()

    def source_ids(one: RuleContext) -> pl.DataFrame:
        evidence = one.table("evidence").select("source_id", "evidence_id", "report_id", "kind", "uploaded_at")
        return (
            _numbered(evidence, places).join(picked, on="row", how="semi")
            .join(_report_projects(one), on=["source_id", "report_id"], how="left")
        )

    return ctx.by_source(source_ids, columns={"evidence": ["report_id", "kind", "uploaded_at"]})


def _repeated(keys: pl.Series) -> pl.Series:
    """The values of `keys` that occur more than once (nulls aside). Found by sorting: counting a city's
    millions of distinct keys in a hash table holds ~100 bytes a key, a sorted copy only the keys."""
    present = keys.sort(nulls_last=True).head(keys.len() - keys.null_count())
    same_as_previous = present.slice(1) == present.slice(0, max(present.len() - 1, 0))
    return present.slice(1).filter(same_as_previous).unique()


def _keyed(rows: pl.DataFrame, grp: pl.Expr) -> pl.DataFrame:
    """The columns `group_summary` and the links read, with the content key `grp` as an Int128."""
    return rows.select("row", "project", "unit", "t", grp.cast(pl.Int128).alias("grp"))


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    if params["broadcast_min_projects"] <= 1 and params["broadcast_min_units"] <= 1:
        return pl.DataFrame()  # every content, even a single row, would count as distributed material
    places = _source_places(ctx)
    base = _rows(ctx, params, places)
    if base.is_empty():
        return pl.DataFrame()
    # Nearly every file in a city is unique. A sha256 group links to itself alone (near links join phash
    # groups), so one with a single row can neither reach two projects nor be the original of a row:
    # only files held twice are kept. Photos are all kept until their near links are known.
    by_sha = _keyed(base.filter(pl.col("sha_grp").is_in(_repeated(base["sha_grp"]).implode())), pl.col("sha_grp"))
    by_ph = base.filter(pl.col("ph").is_not_null()).select("row", "project", "unit", "t", "ph")
    del base
    values, copies = np.unique(by_ph["ph"].to_numpy(), return_counts=True)
    repeated_ph = pl.Series(values[copies > 1], dtype=pl.UInt64)
    del copies
    # Broadcast content is on many projects, so held by several rows: the groups of one row can be left
    # out of its count (a single row is one project in one unit, short of any threshold but 1 and 1).
    held_twice = pl.concat([by_sha, _keyed(by_ph.filter(pl.col("ph").is_in(repeated_ph.implode())), pl.col("ph"))])
    broadcast = group_summary(held_twice).filter(
        (pl.col("n_projects") >= params["broadcast_min_projects"]) & (pl.col("n_units") >= params["broadcast_min_units"])
    ).select("grp")
    del held_twice

    # Near-identical photos: distinct phash values within max_hamming bits.
    broadcast_ph = broadcast.filter(pl.col("grp") < _SHA_GROUP)["grp"].cast(pl.UInt64).to_numpy()
    values = values[~np.isin(values, broadcast_ph)]
    i, j, d = near_pairs(values, params["max_hamming"], params["max_bucket"])
    g = pl.Series("grp", values).cast(pl.Int128)
    near = pl.DataFrame({"grp": pl.concat([g.gather(i), g.gather(j)]), "grp2": pl.concat([g.gather(j), g.gather(i)]),
                         "dist": np.r_[d, d]}, schema={"grp": pl.Int128, "grp2": pl.Int128, "dist": pl.Int64})
    # A photo held once matters only through a near link: the others are dropped with the unique files.
    linked_ph = pl.concat([repeated_ph, pl.Series(values[np.r_[i, j]], dtype=pl.UInt64)])
    keyed = pl.concat([by_sha, _keyed(by_ph.filter(pl.col("ph").is_in(linked_ph.implode())), pl.col("ph"))])
    del by_sha, by_ph, values, g
    summary = group_summary(keyed).join(broadcast, on="grp", how="anti")
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
    ids = _identify(ctx, pl.concat([judged["row"], orig["orig_row"]]), places)
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
