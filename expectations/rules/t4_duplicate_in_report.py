"""T4 (report): the same file, or near-identical photos, appear several times in one report.

Method, within each report:
- same file: items sharing a sha256 (any kind);
- near-identical photos: items whose 64-bit perceptual hashes differ in at most `max_hamming` bits
  (hashes of flat images, with fewer than `min_phash_bits` ones or zeros, are left out).
  Candidates come from banding (pigeonhole: split the 64 bits into max_hamming+1 bands; two hashes that
  close agree on a whole band), confirmed by the popcount of the XOR — no all-pairs comparison
  (`transforms.features_traces.near_duplicate_pairs`). A copy group is one photo and every photo within
  `max_hamming` bits of it.
The report's `copies` is its largest group (same-file or near-photo); GX expects fewer than `min_copies`.
See docs/rules/T4.md.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_traces import evidence_by_report_index, near_duplicate_pairs
from transforms.phash import parse_phash

RULE_ID = "T4"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"

PARAMS: dict[str, Param] = {
    "min_copies": Param(
        3,
        "Three copies of one picture in one report: a second shot of the same scene happens (a retake, "
        "the same file attached twice by mistake); a third is padding.",
    ),
    "max_hamming": Param(
        4,
        "Near-identical: 64-bit pHashes within 4 bits (about 6 %) — re-encoded, resized or lightly "
        "cropped copies stay within it, while two different photos of one room typically differ by 10+ "
        "bits. Random hashes meet this by chance with probability ~4e-14 per pair.",
    ),
    "min_phash_bits": Param(
        8,
        "A perceptual hash with fewer than 8 ones (or zeros) of 64 comes from a flat image — blank, black, "
        "overexposed — and such hashes sit close to each other whatever was photographed: they match by "
        "sha256 only.",
    ),
}


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    # Files are compared within one report: source by source, as the evidence is read.
    return ctx.by_source(lambda one: _source_features(one, params), columns={"evidence": ["report_id", "sha256", "phash"]})


def _source_features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    d = int(params["max_hamming"])
    evidence = ctx.table("evidence")
    sha = pl.col("sha256").str.strip_chars().str.to_lowercase()
    # Files are told apart within one report only, so a 64-bit hash of the (cleaned) sha256 is a key
    # that cannot collide in practice; the texts are looked up again for the groups that are kept
    # (`_erow`: the row's position in the evidence table).
    ev, index = evidence_by_report_index(
        evidence.lazy().with_row_index("_erow").select(
            "source_id", "report_id", "_erow", "evidence_id",
            pl.when(sha.is_not_null() & (sha != "")).then(sha.hash()).alias("sha"),
            parse_phash(pl.col("phash").str.strip_chars().str.to_lowercase()).alias("h"),
        ).collect(engine="streaming"),  # in morsels: no city-sized temporary string columns
        ctx.table("stage_reports"), ["_erow", "evidence_id", "sha", "h"],
    )

    def text(column: str, rows: pl.Series) -> pl.Series:
        return evidence[column].gather(rows).str.strip_chars().str.to_lowercase()

    counts = ev.group_by("_rid").agg(pl.len().cast(pl.Int64).alias("n_items"))

    # Same file: the largest sha256 group of each report (only repeated files are gathered).
    repeated = ev.filter(pl.col("sha").is_not_null()).filter(pl.len().over("_rid", "sha") > 1)
    repeated = repeated.with_columns(text("sha256", repeated["_erow"]).alias("sha_text"))
    same = (
        repeated.group_by("_rid", "sha_text")
        .agg(pl.len().cast(pl.Int64).alias("copies"), pl.col("evidence_id").sort().alias("evidence_ids"))
        .sort(["_rid", "copies", "sha_text"], descending=[False, True, False])
        .unique(subset=["_rid"], keep="first", maintain_order=True)
        .select("_rid", pl.lit("same_file").alias("match"), "copies", "evidence_ids",
                pl.col("sha_text").alias("sha256"), pl.lit(None, pl.String).alias("phash"),
                pl.lit(0, pl.Int64).alias("max_distance"))
    )

    # Near-identical photos: a hash value and every value of the report within d bits of it.
    ones = pl.col("h").bitwise_count_ones()
    bits = int(params["min_phash_bits"])
    hashed = ev.filter(pl.col("h").is_not_null() & ones.is_between(bits, 64 - bits))
    values = hashed.group_by("_rid", "h").agg(pl.len().cast(pl.Int64).alias("mult"))
    pairs = near_duplicate_pairs(values, "_rid", "h", d)
    neighbours = (
        pairs.join(values.rename({"h": "h2", "mult": "mult2"}), on=["_rid", "h2"], how="left")
        .group_by("_rid", "h")
        .agg(
            pl.col("mult2").sum().cast(pl.Int64).alias("near"),
            pl.col("h2"),
            pl.col("distance").max().cast(pl.Int64).alias("max_distance"),
        )
    )
    centre = (
        values.join(neighbours, on=["_rid", "h"], how="left")
        .with_columns((pl.col("mult") + pl.col("near").fill_null(0)).alias("copies"))
        .filter(pl.col("copies") > 1)
        .sort(["_rid", "copies", "h"], descending=[False, True, False])
        .unique(subset=["_rid"], keep="first", maintain_order=True)
    )
    # The members of each report's largest group: its centre value and the values near it.
    members = pl.concat([
        centre.select("_rid", pl.col("h").alias("member")),
        centre.select("_rid", pl.col("h2").alias("member")).explode("member").drop_nulls(),
    ])
    ids = (
        hashed.join(members, left_on=["_rid", "h"], right_on=["_rid", "member"], how="inner")
        .group_by("_rid").agg(pl.col("evidence_id").sort().alias("evidence_ids"))
    )
    first = hashed.join(centre.select("_rid", "h"), on=["_rid", "h"], how="semi").group_by("_rid").agg(
        pl.col("_erow").first()
    )
    phash_text = first.select("_rid", text("phash", first["_erow"]).alias("phash"))
    near = (
        centre.join(ids, on="_rid", how="left")
        .join(phash_text, on="_rid", how="left")
        .select("_rid", pl.lit("near_photo").alias("match"), "copies", "evidence_ids",
                pl.lit(None, pl.String).alias("sha256"), "phash", pl.col("max_distance").fill_null(0))
    )

    # The report's largest group; a same-file group wins a tie (the stronger evidence).
    best = (
        pl.concat([same, near])
        .with_columns((pl.col("match") == "same_file").alias("_same"))
        .sort(["_rid", "copies", "_same"], descending=[False, True, True])
        .unique(subset=["_rid"], keep="first", maintain_order=True)
        .drop("_same")
    )
    return (
        counts.join(best, on="_rid", how="left")
        .join(index, on="_rid", how="inner")
        .with_columns(pl.col("copies").fill_null(1))
        .drop("_rid")
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [
        Check(
            RULE_ID,
            gx.expectations.ExpectColumnValuesToBeBetween(column="copies", max_value=params["min_copies"] - 1),
            ENTITY_TYPE,
            "同一汇报内同一文件或近似照片重复出现",
        )
    ]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        "copies",
        "match",
        "evidence_ids",
        "sha256",
        "phash",
        "max_distance",
        pl.col("n_items").alias("items"),
        pl.lit(params["min_copies"]).alias("min_copies"),
        pl.lit(params["max_hamming"]).alias("max_hamming"),
    ).struct.json_encode()
