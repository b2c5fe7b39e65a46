"""F6 (report): the summary is a near-copy of another project's (earlier) report.

Method (scales to millions of reports; no all-pairs):

1. Text: HTML and everything but Han characters, letters and digits removed; character `shingle_k`-grams
   (Chinese has no spaces to split words on), hashed to 64 bits in one vectorized pass.
2. Boilerplate: shingles found in at least `max_df_share` of the reports (document frequency, estimated on
   a sample of up to `df_sample_docs`, the same from night to night) are the phrases everyone writes
   ("坚持以党的政治建设为统领") and are dropped. A summary left with fewer than `min_shingles` shingles
   says nothing specific: no verdict.
3. Candidates: one-permutation MinHash (`minhash_bins` values a report), LSH banding (`rows_per_band`
   values a band): reports whose band agrees are candidates.
4. Verdict: exact Jaccard of the two (boilerplate-free) shingle sets of each candidate pair. Each report
   is judged against its most similar EARLIER report of ANOTHER project; GX expects the Jaccard below
   `max_jaccard`. The later report of a pair is the copy; the original is not flagged, nor is a report
   that is at least as close to an earlier report of its own project (a project repeating its own text,
   after someone else copied it, is not the copier).

Between nights each report's band keys are kept (`warehouse.kept`) and read back while its summary and the
boilerplate among its shingles stay the same: the next night sketches what changed, not the city. So are
the night's candidate pairs with their Jaccard: a pair of two such reports has the same shingle sets, and
its Jaccard is read back instead of shingling both summaries again. So is the boilerplate, with a
fingerprint of the sample it was found on (its reports and the hashes of their summaries), read back while
the sample is the same. Each summary is read once a night to hash it; after that, only the summaries of
the sources where one must be shingled.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import great_expectations as gx
import numpy as np
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import (
    ShingleSets,
    band_keys,
    boilerplate_shingles,
    drop_shingles,
    jaccard_pairs,
    lsh_candidate_pairs,
    member,
    minhash_signatures,
    normalize_text,
    shingle_hashes,
    stable_key_hash,
    ts_json,
)
from warehouse.silver import SHARDS_IN_FLIGHT

RULE_ID = "F6"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"
LONG_RUNNING = True

log = logging.getLogger("qingfeng.rules")

PARAMS: dict[str, Param] = {
    "shingle_k": Param(5, "Five characters is about two Chinese words: long enough that two unrelated "
                          "reports rarely share one by chance, short enough that a few edited characters "
                          "leave most shingles of a copy intact."),
    "max_df_share": Param(0.01, "A shingle in 1 % or more of all reports is boilerplate or a template phrase, "
                                "not content that one report could have copied from another."),
    "min_df_docs": Param(20, "In a small city 1 % is a handful of reports; a phrase must be in at least 20 "
                             "reports to count as boilerplate."),
    "df_sample_docs": Param(20_000, "Document frequencies of common phrases are estimated well on a "
                                    "sample: a phrase in 1 % of the reports is expected in 200 of 20,000 "
                                    "sampled ones (± 14), far from the specific phrases a copy shares with "
                                    "its original. Counting every shingle of a million reports would cost "
                                    "more memory and time than the rest of the rule together."),
    "min_shingles": Param(20, "Below 20 specific shingles (one short sentence) a summary is too thin for a "
                              "copy verdict."),
    "max_jaccard": Param(0.5, "Resemblance of the boilerplate-free shingle sets: half or more of the specific "
                              "content in common. Each edited character breaks k shingles on both sides, and "
                              "removing boilerplate leaves 40–90 specific shingles, so a copy with 2–4 "
                              "characters changed keeps only J = (S-4k)/(S+4k) ≈ 0.45–0.85; reports written "
                              "apart share templates but not their dates, places and numbers (J < 0.15)."),
    "minhash_bins": Param(128, "MinHash values per report (one-permutation hashing): the Jaccard of a "
                              "candidate is re-computed exactly, so the sketch only has to find candidates."),
    "rows_per_band": Param(4, "32 bands of 4: a pair at Jaccard 0.6 becomes a candidate with probability "
                              "1 - (1 - 0.6^4)^32 = 0.987 (0.5: 0.87, 0.7: 0.9995); at 0.1 with 0.003, "
                              "which keeps the candidates of a million reports to a few million."),
    "max_chars": Param(5_000, "Only the first 5,000 characters of a summary (after cleaning) are compared: "
                              "ten times a long stage report, plenty to tell a copy, while a pasted document "
                              "of a megabyte would cost about 200 bytes a character to shingle."),
    "chunk_docs": Param(20_000, "Reports shingled and sketched per batch: about 4 M shingle occurrences, "
                                "a few hundred MB of working arrays, whatever the size of the city."),
    "max_bucket": Param(200, "Bound on the pairs drawn from one LSH bucket (guards mass-identical texts)."),
}


_JUDGED = ["source_id", "report_id", "project_id", "submitted_at", "summary"]
_SHINGLES = {"doc": pl.Int64, "h": pl.UInt64}


def _judged(one: RuleContext) -> pl.DataFrame:
    """The reports of one source F6 can judge: with a project and a summary."""
    return (
        one.table("stage_reports").select(_JUDGED)
        .filter(pl.col("project_id").is_not_null() & pl.col("summary").is_not_null())
        .unique(subset=["source_id", "report_id"], keep="first")
    )


def _over_reports(ctx: RuleContext, reports: pl.DataFrame, docs: np.ndarray,
                  each: Callable[[pl.DataFrame], pl.DataFrame], schema: dict) -> pl.DataFrame:
    """`each(part)` over the reports `docs` (sorted doc numbers of `reports`), a shard of sources at a
    time: `part` holds their `doc`, `source_id`, `report_id` and `summary`, in doc order. The city's
    summaries are read where they are stored, never held together, and only those of the sources the
    reports are in."""
    wanted = reports.select("doc", "source_id", "report_id")[docs].partition_by("source_id", as_dict=True)

    def per_source(one: RuleContext) -> pl.DataFrame:
        judged = _judged(one).select("source_id", "report_id", "summary")
        parts = [wanted[(sid,)] for sid in judged["source_id"].unique().to_list() if (sid,) in wanted]
        if not parts:
            return pl.DataFrame(schema=schema)
        return each(pl.concat(parts).join(judged, on=["source_id", "report_id"]).sort("doc"))

    return ctx.by_source(per_source, columns={"stage_reports": ["summary"]}, sources={sid for (sid,) in wanted})


def _texts(part: pl.DataFrame, max_chars: int) -> pl.Series:
    return part.select(normalize_text("summary").str.slice(0, max_chars)).to_series()


def _over_texts(ctx: RuleContext, reports: pl.DataFrame, docs: np.ndarray, max_chars: int,
                each: Callable[[np.ndarray, pl.Series], pl.DataFrame], schema: dict) -> pl.DataFrame:
    """`each(doc numbers, cleaned texts)` over the reports `docs`, a shard of sources at a time."""
    return _over_reports(ctx, reports, docs, lambda part: each(part["doc"].to_numpy(), _texts(part, max_chars)),
                         schema)


def _shingles(docs: np.ndarray, texts: pl.Series, k: int, chunk: int) -> pl.DataFrame:
    """Every shingle occurrence of the texts, batch by batch (the working arrays of shingling: ~30 bytes a
    character)."""
    parts = []
    for lo in range(0, len(texts), chunk):
        d, h = shingle_hashes(texts.slice(lo, chunk), k)
        parts.append(pl.DataFrame({"doc": docs[lo + d], "h": h}, schema=_SHINGLES))
    return pl.concat(parts) if parts else pl.DataFrame(schema=_SHINGLES)


def _stable_sample(reports: pl.DataFrame, size: int) -> np.ndarray:
    """Sorted doc numbers of the `size` reports with the smallest hash of their source and report id: a
    uniform random sample that stays the same from one night to the next but for the reports added or
    removed, so that the boilerplate found on it, and the sketches made with it, stay the same too."""
    h = stable_key_hash(reports["source_id"], reports["report_id"])
    if size >= len(h):
        return np.arange(len(h))
    return np.sort(np.argpartition(h, size - 1)[:size])


# The sketch of a report follows from its summary, the boilerplate and these settings alone. Bump the
# version when shingling, MinHash or banding change; Polars' version is part of it because the hash of
# a summary (and the regexes that clean it) are only stable within one version.
SKETCH_VERSION = 1
_SKETCH_PARAMS = ("shingle_k", "max_chars", "minhash_bins", "rows_per_band", "min_shingles")
_TEXT_SEED = 0x51F6


class _KeptSketches:
    """The sketches of the night before (`warehouse.kept`): a file a source with each report's band keys
    and `live`, the hash of the summary and the boilerplate (its fingerprint, `stop`) they were made
    with; and that boilerplate itself, with the fingerprint of the sample it was found on. A report's kept
    sketch is reused when its summary is the same and so is the boilerplate, or the boilerplate changed by
    shingles its summary does not have (it is then shingled to find out: most of a sketch's cost, without
    the MinHash). Anything else is sketched again."""

    def __init__(self, ctx: RuleContext, params: dict, parallel: bool):
        self.store = ctx.kept
        self.chunk, self.parallel = params["chunk_docs"], parallel
        self.settings = f"v{SKETCH_VERSION}; polars {pl.__version__}; " + "; ".join(
            f"{p}={params[p]}" for p in _SKETCH_PARAMS)
        self.k = params["shingle_k"]
        self.stop, self.fp, self.sample = np.empty(0, np.uint64), 0, 0
        self.prev_fp: int | None = None
        self.changed = np.empty(0, np.uint64)  # the shingles that entered or left the boilerplate
        self._kept_rows: dict[str, int] = {}  # source → rows of its file, when all made with tonight's boilerplate
        self._earlier = self._read(_BOILERPLATE)

    def _read(self, name: str) -> pl.DataFrame | None:
        frame = self.store.read(RULE_ID, name) if self.store is not None else None
        if frame is None or frame.is_empty() or frame["settings"][0] != self.settings:
            return None
        return frame

    def boilerplate_of(self, sample: int) -> np.ndarray | None:
        """The night before's boilerplate, if it was found on the same sample (`_sample_fingerprint`)."""
        earlier = self._earlier
        if earlier is None or "sample" not in earlier.columns or earlier["sample"][0] != sample:
            return None
        return earlier["h"].to_numpy()

    def use(self, stop: np.ndarray, sample: int) -> None:
        """Tonight's boilerplate (sorted), found on the sample `sample`."""
        self.stop, self.fp, self.sample = stop, _fingerprint(stop), sample
        earlier = self._earlier
        if earlier is not None and earlier["stop"][0] != self.fp:
            self.prev_fp = int(earlier["stop"][0])
            self.changed = np.setxor1d(earlier["h"].to_numpy(), stop)

    def lookup(self, reports: pl.DataFrame, keys: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """By doc number: whose kept sketch holds (its summary is the same, by `text_hash`, and so is the
        boilerplate), and whose may (the same summary, sketched under the boilerplate before: `untouched`
        says). Both have their kept `keys` and `live` written in. No summary is read."""
        reused, older = np.zeros(reports.height, dtype=bool), np.zeros(reports.height, dtype=bool)
        ids = reports.select("doc", "source_id", "report_id", "text_hash")

        def one(sid: str, part: pl.DataFrame) -> None:
            kept = self._read(f"source={sid}")
            if kept is None:
                return
            if (kept["stop"] == self.fp).all():
                self._kept_rows[sid] = kept.height
            found = part.join(kept.select("report_id", "text_hash", "live", "keys", "stop"),
                              on=["report_id", "text_hash"])
            now = (found["stop"] == self.fp).to_numpy()
            before = (found["stop"] == self.prev_fp).to_numpy() if self.prev_fp is not None else np.zeros_like(now)
            hold = now | before
            found = found.filter(pl.Series(hold))
            docs = found["doc"].to_numpy()
            keys[docs], live[docs] = found["keys"].to_numpy(), found["live"].to_numpy()
            reused[docs[now[hold]]] = True
            older[docs[before[hold]]] = True

        with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT) as pool:
            list(pool.map(lambda item: one(item[0][0], item[1]), ids.partition_by("source_id", as_dict=True).items()))
        return reused, older

    def untouched(self, texts: pl.Series) -> np.ndarray:
        """Which of these summaries have none of the shingles that entered or left the boilerplate."""
        out = np.ones(len(texts), dtype=bool)

        def batch(lo: int) -> None:
            """Batch by batch, like the sketches: a city's shingles at once would take gigabytes."""
            d, h = shingle_hashes(texts.slice(lo, self.chunk), self.k)
            out[lo:lo + self.chunk][d[member(h, self.changed)]] = False

        _in_batches(len(texts), self.chunk, batch, self.parallel)
        return out

    def save(self, reports: pl.DataFrame, reused: np.ndarray, keys: np.ndarray, live: np.ndarray) -> None:
        """Each source's file, unless it holds every report of the source as they are tonight already."""
        if self.store is None:
            return
        for (sid,), one in reports.select("source_id", "report_id", "text_hash", "doc").partition_by(
                "source_id", as_dict=True).items():
            docs = one["doc"].to_numpy()
            if reused[docs].all() and self._kept_rows.get(sid) == one.height:
                continue
            self.store.write(RULE_ID, f"source={sid}", pl.DataFrame({
                "report_id": one["report_id"], "text_hash": one["text_hash"], "live": live[docs],
                "keys": pl.Series(keys[docs]), "stop": pl.repeat(self.fp, one.height, dtype=pl.UInt64, eager=True),
                "settings": pl.repeat(self.settings, one.height, eager=True),
            }))

    def finish(self) -> None:
        """Keep tonight's boilerplate and its sample's fingerprint: the next night reuses the boilerplate
        when its sample is the same, and otherwise sees which shingles entered or left it."""
        earlier = self._earlier
        if self.store is None or (earlier is not None and earlier["stop"][0] == self.fp
                                  and "sample" in earlier.columns and earlier["sample"][0] == self.sample):
            return
        n = len(self.stop)
        self.store.write(RULE_ID, _BOILERPLATE, pl.DataFrame({
            "h": self.stop, "stop": pl.repeat(self.fp, n, dtype=pl.UInt64, eager=True),
            "sample": pl.repeat(self.sample, n, dtype=pl.UInt64, eager=True),
            "settings": pl.repeat(self.settings, n, eager=True),
        }))


_BOILERPLATE = "boilerplate"
_BOILERPLATE_PARAMS = ("max_df_share", "min_df_docs", "df_sample_docs")


def _in_batches(n: int, chunk: int, each: Callable[[int], None], parallel: bool) -> None:
    """`each(lo)` for every batch start of `n` items, two batches at a time when `parallel`."""
    starts = range(0, n, chunk)
    if not parallel or len(starts) < 2:
        for lo in starts:
            each(lo)
        return
    with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT) as pool:
        list(pool.map(each, starts))


def _fingerprint(stop: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(stop, dtype=np.uint64).tobytes(),
                                          digest_size=8).digest(), "little")


def _sample_fingerprint(sampled: pl.DataFrame, params: dict) -> int:
    """What the boilerplate found on a sample follows from, beside the sketches' settings: which reports
    were sampled, their summaries (by hash) and the thresholds. The order of the reports does not matter."""
    rows = sampled.select(pl.struct("source_id", "report_id", "text_hash").hash(_TEXT_SEED)).to_series()
    thresholds = "; ".join(f"{p}={params[p]}" for p in _BOILERPLATE_PARAMS).encode()
    return int.from_bytes(hashlib.blake2b(np.sort(rows.to_numpy()).tobytes() + thresholds,
                                          digest_size=8).digest(), "little")


def _boilerplate(ctx: RuleContext, reports: pl.DataFrame, kept: _KeptSketches, params: dict) -> np.ndarray:
    """The shingles in so many reports that they are boilerplate (sorted), estimated on the stable sample;
    the night before's when the sample is the same, so that a next night reads no summary for it."""
    sample = _stable_sample(reports, params["df_sample_docs"])
    fingerprint = _sample_fingerprint(reports[sample], params)
    stop = kept.boilerplate_of(fingerprint)
    if stop is None:
        k, chunk = params["shingle_k"], params["chunk_docs"]
        sampled = _over_texts(ctx, reports, sample, params["max_chars"], lambda d, t: _shingles(d, t, k, chunk),
                              _SHINGLES)
        stop = boilerplate_shingles(sampled["doc"].to_numpy(), sampled["h"].to_numpy(), len(sample),
                                    params["max_df_share"], params["min_df_docs"])
    kept.use(stop, fingerprint)
    return stop


class _Sketches(NamedTuple):
    keys: np.ndarray  # n × bands: each report's LSH band keys
    live: np.ndarray  # whether it has enough specific shingles to judge


def _band_keys(ctx: RuleContext, reports: pl.DataFrame, kept: _KeptSketches, params: dict) -> _Sketches:
    """Each report's LSH band keys and whether it has enough specific shingles to judge: kept from the
    night before where its summary and the boilerplate allow, else sketched. Only the summaries of the
    reports sketched, or checked against a changed boilerplate, are read."""
    n, k, chunk = reports.height, params["shingle_k"], params["chunk_docs"]
    bins, rpb = params["minhash_bins"], params["rows_per_band"]
    keys = np.zeros((n, bins // rpb), dtype=np.uint64)
    live = np.zeros(n, dtype=bool)
    reused, older = kept.lookup(reports, keys, live)

    def batch(docs: np.ndarray, texts: pl.Series, lo: int) -> None:
        """Written into `keys` at each report's doc number (sources never share one)."""
        part = docs[lo:lo + chunk]
        d, h = drop_shingles(*shingle_hashes(texts.slice(lo, chunk), k), kept.stop)
        # specific shingles a report (occurrences: a 5-gram rarely repeats within one summary)
        ok = np.bincount(d, minlength=len(part)) >= params["min_shingles"]
        sel = ok[d] if len(d) else np.zeros(0, dtype=bool)
        keys[part] = band_keys(minhash_signatures(d[sel], h[sel], len(part), bins), rpb)
        live[part] = ok

    def sketch(docs: np.ndarray, texts: pl.Series) -> pl.DataFrame:
        check = older[docs]
        if check.any():
            reused[docs[check][kept.untouched(texts.filter(pl.Series(check)))]] = True
            fresh = ~reused[docs]
            docs, texts = docs[fresh], texts.filter(pl.Series(fresh))
        _in_batches(len(texts), chunk, lambda lo: batch(docs, texts, lo), kept.parallel)
        return pl.DataFrame({"sketched": [len(docs)]})

    _over_texts(ctx, reports, np.flatnonzero(~reused), params["max_chars"], sketch, {"sketched": pl.Int64})
    kept.save(reports, reused, keys, live)
    kept.finish()
    log.info("F6: %d sketches kept from the night before, %d made", int(reused.sum()), int((~reused).sum()))
    return _Sketches(keys, live)


def _candidate_sets(ctx: RuleContext, reports: pl.DataFrame, docs: np.ndarray, stop: np.ndarray,
                    params: dict) -> ShingleSets:
    """The specific shingle sets of the reports `docs`, source by source and batch by batch like the
    sketches; each batch's sets are kept as sorted hashes only, then put together once."""
    k, chunk = params["shingle_k"], params["chunk_docs"]
    parts: list[ShingleSets] = []

    def sets(docs: np.ndarray, texts: pl.Series) -> pl.DataFrame:
        for lo in range(0, len(texts), chunk):
            one = ShingleSets.of(*drop_shingles(*shingle_hashes(texts.slice(lo, chunk), k), stop))
            parts.append(one._replace(ids=docs[lo + one.ids]))
        return pl.DataFrame({"sets": [len(docs)]})

    _over_texts(ctx, reports, docs, params["max_chars"], sets, {"sets": pl.Int64})
    return ShingleSets.concat(parts)


_PAIRS = "pairs"
_CARRIED = {"i": pl.Int64, "j": pl.Int64, "jaccard": pl.Float64, "i_size": pl.UInt32, "j_size": pl.UInt32}


def _carried_pairs(kept: _KeptSketches, reports: pl.DataFrame) -> pl.DataFrame:
    """The candidate pairs of the night before whose Jaccard holds tonight, by tonight's doc numbers (i < j)
    with each one's number of specific shingles: both summaries are the same (by their hash) and so is the
    boilerplate, so their shingle sets are too. (A pair of reports whose submission times moved has its
    sides in the other order: the Jaccard is the same.)"""
    stored = kept._read(_PAIRS)
    if stored is None:
        return pl.DataFrame(schema=_CARRIED)
    ids = reports.select(pl.col("doc").cast(pl.Int64), "source_id", "report_id", pl.col("text_hash").alias("hash"))

    def side(x: str) -> pl.DataFrame:
        return ids.rename({c: f"{x}_{c}" for c in ids.columns})

    both = (stored.filter(pl.col("stop") == kept.fp)
            .join(side("a"), on=["a_source_id", "a_report_id", "a_hash"])
            .join(side("b"), on=["b_source_id", "b_report_id", "b_hash"]))
    in_order = pl.col("a_doc") < pl.col("b_doc")
    return both.select(
        i=pl.min_horizontal("a_doc", "b_doc"), j=pl.max_horizontal("a_doc", "b_doc"), jaccard="jaccard",
        i_size=pl.when(in_order).then("a_size").otherwise("b_size"),
        j_size=pl.when(in_order).then("b_size").otherwise("a_size"),
    ).cast(_CARRIED)


def _keep_pairs(kept: _KeptSketches, reports: pl.DataFrame, i: np.ndarray, j: np.ndarray, jaccard: np.ndarray,
                size: np.ndarray) -> None:
    """Tonight's candidate pairs with their Jaccard and each report's number of specific shingles (`size`, by
    doc number), for the next night (`_carried_pairs`)."""
    if kept.store is None:
        return
    kept.store.write(RULE_ID, _PAIRS, pl.DataFrame({
        "a_source_id": reports["source_id"].gather(i), "a_report_id": reports["report_id"].gather(i),
        "a_hash": reports["text_hash"].gather(i), "a_size": pl.Series(size[i], dtype=pl.UInt32),
        "b_source_id": reports["source_id"].gather(j), "b_report_id": reports["report_id"].gather(j),
        "b_hash": reports["text_hash"].gather(j), "b_size": pl.Series(size[j], dtype=pl.UInt32),
        "jaccard": pl.Series(jaccard, dtype=pl.Float64),
        "stop": pl.repeat(kept.fp, len(i), dtype=pl.UInt64, eager=True),
        "settings": pl.repeat(kept.settings, len(i), eager=True),
    }))


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    reports = (
        ctx.by_source(lambda one: _judged(one).with_columns(text_hash=pl.col("summary").hash(_TEXT_SEED))
                      .drop("summary"), columns={"stage_reports": ["summary"]})
        .sort("submitted_at", "source_id", "report_id", nulls_last=True)
        .with_row_index("doc")
    )
    n = reports.height
    if n < 2:
        return pl.DataFrame()
    # A city small enough to be held is one shard, whose batches would otherwise take turns on one core
    # (NumPy lets go of the GIL for most of a batch's work). A sharded city's shards already run side by
    # side, each its batches in turn.
    kept = _KeptSketches(ctx, params, parallel=not getattr(ctx.silver, "sharded", ()))
    stop = _boilerplate(ctx, reports, kept, params)
    sketches = _band_keys(ctx, reports, kept, params)
    # i < j: i is the earlier report.
    i, j = lsh_candidate_pairs(sketches.keys, sketches.live, params["max_bucket"])
    del sketches  # the band keys (n × 32 values) are freed once bucketed
    # The Jaccard of a pair kept from the night before, where it holds; the others' shingle sets are made.
    carried = pl.DataFrame({"i": i, "j": j}, schema={"i": pl.Int64, "j": pl.Int64}).join(
        _carried_pairs(kept, reports), on=["i", "j"], how="left", maintain_order="left")
    jac = carried["jaccard"].to_numpy().copy()
    todo = np.flatnonzero(carried["jaccard"].is_null().to_numpy())
    candidates = _candidate_sets(ctx, reports, np.unique(np.r_[i[todo], j[todo]]), stop, params)
    jac[todo] = jaccard_pairs(candidates, i[todo], j[todo])
    # each candidate's number of specific shingles: from its set, or with its pair from the night before
    size = np.zeros(reports.height, dtype=np.uint32)
    size[candidates.ids] = candidates.size
    read_back = carried.filter(pl.col("jaccard").is_not_null())
    for side in ("i", "j"):
        size[read_back[side].to_numpy()] = read_back[f"{side}_size"].to_numpy()
    del candidates, read_back
    log.info("F6: %d candidate pairs, %d of them kept from the night before", len(i), len(i) - len(todo))
    _keep_pairs(kept, reports, i, j, jac, size)
    if len(i) == 0:
        return pl.DataFrame()
    project = reports.select(pl.concat_str("source_id", pl.lit("\x1f"), "project_id").rank("dense"))
    project = project.to_series().to_numpy()

    pairs = pl.DataFrame({"doc": j.astype(np.uint32), "orig": i.astype(np.uint32), "jaccard": np.round(jac, 4),
                          "same_project": project[i] == project[j]})
    own = pairs.filter(pl.col("same_project")).group_by("doc").agg(pl.col("jaccard").max().alias("own_jaccard"))
    best = (
        pairs.filter(~pl.col("same_project"))
        .sort("doc", "jaccard", "orig", descending=[False, True, False])
        .group_by("doc", maintain_order=True)
        .agg(pl.col("orig").first(), pl.col("jaccard").first(), pl.len().alias("candidates"))
        .join(own, on="doc", how="left")
        # A report closer to an earlier report of its own project continues its own text: no verdict.
        .filter(~(pl.col("own_jaccard") >= pl.col("jaccard")).fill_null(False))
    )
    if best.is_empty():
        return pl.DataFrame()
    meta = reports.select("doc", "source_id", "report_id", "project_id", "submitted_at")
    with_set = np.flatnonzero(size)
    sizes = pl.DataFrame({"doc": with_set.astype(np.uint32), "shingles": size[with_set]})
    return (
        best.join(meta, on="doc")
        .join(sizes, on="doc", how="left")
        .join(meta.rename({"doc": "orig", "source_id": "original_source_id", "report_id": "original_report_id",
                           "project_id": "original_project_id", "submitted_at": "original_submitted_at"}), on="orig")
        .join(sizes.rename({"doc": "orig", "shingles": "original_shingles"}), on="orig", how="left")
        .with_columns(pl.lit(len(stop)).alias("boilerplate_shingles"))
        .drop("doc", "orig")
        .sort("source_id", "report_id")
    )


def checks(params: dict) -> list[Check]:
    return [
        Check(RULE_ID, gx.expectations.ExpectColumnValuesToBeBetween(
            column="jaccard", max_value=params["max_jaccard"], strict_max=True), ENTITY_TYPE,
            "汇报内容与其他项目此前的汇报高度雷同"),
    ]


def detail(params: dict) -> pl.Expr:
    return pl.struct(
        "jaccard",
        pl.lit(params["max_jaccard"]).alias("max_jaccard"),
        pl.lit(params["shingle_k"]).alias("shingle_k"),
        "project_id",
        ts_json("submitted_at").alias("submitted_at"),
        "original_report_id",
        "original_project_id",
        "original_source_id",
        ts_json("original_submitted_at").alias("original_submitted_at"),
        "shingles",
        "original_shingles",
        "candidates",
    ).struct.json_encode()
