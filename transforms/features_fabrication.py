"""Feature helpers for the `fabrication` rules (F1–F7): pure Polars / numpy, vectorized, no all-pairs.

- `report_sequence`: the reports of each project in filing order, with the previous report beside each.
- `near_pairs`: every pair of distinct values within a
  Hamming distance, by multi-index hashing (pigeonhole on bands: no all-pairs).
- `earliest_other_project`: for rows grouped by "the same content", the earliest row of another project.
- `shingle_hashes`, `boilerplate_shingles`, `minhash_signatures`, `lsh_candidate_pairs`, `ShingleSets`,
  `jaccard_pairs`:
  character n-gram near-duplicate detection for Chinese text (no word boundaries needed).
- `digit_profile`: first-digit (Benford), last-digit and round-number counts of a set of numbers per entity.
"""

from __future__ import annotations

import zlib
from itertools import combinations
from typing import NamedTuple

import numpy as np
import polars as pl

from transforms.phash import bands as phash_bands

# --------------------------------------------------------------------------------------------------
# shared
# --------------------------------------------------------------------------------------------------

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit finalizer (uint64 in, uint64 out; wraps on overflow by design)."""
    x = np.array(x, dtype=np.uint64)  # a new array: the input is left alone; the rest is in place
    _splitmix64_in_place(x, np.empty_like(x))
    return x


def _splitmix64_in_place(x: np.ndarray, work: np.ndarray) -> None:
    """`_splitmix64` of `x` written over it, with `work` (an array like it) for the shifts."""
    with np.errstate(over="ignore"):
        x += _U64(0x9E3779B97F4A7C15)
        x ^= np.right_shift(x, _U64(30), out=work)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= np.right_shift(x, _U64(27), out=work)
        x *= _U64(0x94D049BB133111EB)
        x ^= np.right_shift(x, _U64(31), out=work)


# The sketches of F6 are chains of in-place NumPy passes over millions of shingles. Over a whole batch each
# pass is a trip to memory; over a block that fits a core's L2 cache (2 MiB on the machines measured, in
# docs/performance.md) the chain reads it from the cache: about twice as fast, the same values.
_SHINGLE_BLOCK = 1 << 17  # positions: the block and its work array, 1 MiB each
_MINHASH_BLOCK = 1 << 15  # shingles: their hashes, rows and two work arrays, 256 KiB each


def stable_key_hash(*columns: pl.Series) -> np.ndarray:
    """A 64-bit hash of each row's strings (joined by U+001F), the same on every machine and with every
    library version (CRC-32 of the UTF-8 key, spread over 64 bits by splitmix64): for choices that must
    stay put from one night to the next. NULL hashes as the empty string."""
    keys = zip(*(c.fill_null("").to_list() for c in columns), strict=True)
    crc = np.fromiter((zlib.crc32("\x1f".join(k).encode()) for k in keys), np.uint64, len(columns[0]))
    return _splitmix64(crc)


def report_sequence(reports: pl.DataFrame) -> pl.DataFrame:
    """Reports of each project in filing order (submitted_at, then report_id), numbered `seq` from 0,
    with `prev_report_id`, `prev_progress` (the previous report that states a progress) and
    `prev_submitted_at` beside each. Reports without a project are dropped."""
    r = reports.filter(pl.col("project_id").is_not_null()).sort("source_id", "project_id", "submitted_at", "report_id")
    over = ["source_id", "project_id"]
    return r.with_columns(
        pl.int_range(pl.len()).over(over).alias("seq"),
        pl.col("report_id").shift(1).over(over).alias("prev_report_id"),
        pl.col("submitted_at").shift(1).over(over).alias("prev_submitted_at"),
        pl.col("progress_pct").shift(1).forward_fill().over(over).alias("prev_progress"),
    )


def ts_json(col: str | pl.Expr) -> pl.Expr:
    """A timestamp as ISO-8601 text with its offset (readable in a flag's detail)."""
    expr = pl.col(col) if isinstance(col, str) else col
    return expr.dt.strftime("%Y-%m-%dT%H:%M:%S%:z")


# --------------------------------------------------------------------------------------------------
# perceptual hashes
# --------------------------------------------------------------------------------------------------


def _pairs_in_runs(keys_sorted: np.ndarray, max_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (p, q), p < q, of every pair of equal neighbours in a sorted key array (each item paired
    with at most `max_offset` followers in its run, which bounds a pathological bucket)."""
    n = len(keys_sorted)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]])
    lengths = np.diff(np.r_[starts, n])
    multi = lengths >= 2
    if not multi.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts, lengths = starts[multi], lengths[multi]
    pos = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    remaining = np.repeat(starts + lengths, lengths) - pos - 1  # followers left in the run
    ps, qs = [], []
    for k in range(1, min(int(remaining.max()), max_offset) + 1):
        sel = remaining >= k
        pos, remaining = pos[sel], remaining[sel]
        ps.append(pos)
        qs.append(pos + k)
    return np.concatenate(ps), np.concatenate(qs)


def _equal_key_pairs(key: np.ndarray, max_offset: int, key_bits: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Indices (a, b) into `key` of every pair of equal keys, a before b: each item paired with at most
    `max_offset` of the next items of its key in index order. What a stable sort and `_pairs_in_runs`
    give, at the cost of an unstable sort (a stable sort of 64-bit keys is a radix sort, 2-4x slower).
    Keys of `key_bits` bits that fit in a 64-bit word with their index are sorted packed with it; wider
    keys are sorted alone, and the items whose key repeats (usually a few per cent) are put back in
    index order after it. Polars sorts: on one core it takes half the time of NumPy's (25 against 48 ms
    for the 649,000 keys of an LSH band at 96 × 1,000, 32 bands a night), and it uses both."""
    n = len(key)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index_bits = int(n - 1).bit_length()
    if key_bits + index_bits <= 64:
        packed = (key.astype(np.uint64) << _U64(index_bits)) | np.arange(n, dtype=np.uint64)
        order = (pl.Series(packed).sort().to_numpy() & _U64((1 << index_bits) - 1)).astype(np.int64)
        p, q = _pairs_in_runs(key[order], max_offset)
        return order[p], order[q]
    order = pl.Series(key).arg_sort().to_numpy().astype(np.int64)
    sorted_keys = key[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    repeated = np.r_[same, False] | np.r_[False, same]
    items, keys = order[repeated], sorted_keys[repeated]
    in_index_order = np.lexsort((items, keys))
    p, q = _pairs_in_runs(keys[in_index_order], max_offset)
    items = items[in_index_order]
    return items[p], items[q]


def near_pairs(values: np.ndarray, max_dist: int, max_bucket: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of DISTINCT 64-bit values with Hamming distance ≤ `max_dist`.

    Multi-index hashing: split the 64 bits into `max_dist + 2` bands; two values within `max_dist` bits
    agree exactly on at least two bands (pigeonhole), so bucketing on every pair of bands finds every
    such pair, with ~21-bit keys for max_dist 4 (few random collisions), and the exact popcount of the
    XOR settles each candidate. Returns index arrays into `values` and the distances.
    """
    values = np.asarray(values, dtype=np.uint64)
    n = len(values)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if n < 2 or max_dist < 1:
        return empty
    bands = phash_bands(max_dist + 2)
    fields = [(values >> _U64(s)) & _U64((1 << w) - 1) for s, w in bands]
    found: list[np.ndarray] = []
    for a, b in combinations(range(len(bands)), 2):
        key = (fields[a] << _U64(bands[b][1])) | fields[b]
        i, j = _equal_key_pairs(key, max_bucket, bands[a][1] + bands[b][1])
        if len(i) == 0:
            continue
        d = np.bitwise_count(values[i] ^ values[j]).astype(np.int64)
        keep = (d <= max_dist) & (d > 0)
        i, j = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
        found.append(i.astype(np.int64) * n + j)
    if not found:
        return empty
    code = np.unique(np.concatenate(found))
    i, j = code // n, code % n
    return i, j, np.bitwise_count(values[i] ^ values[j]).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# "the same content" across projects
# --------------------------------------------------------------------------------------------------


def group_summary(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows`: grp, row (int), project, unit, t (sortable); other columns are ignored.

    Per group: the first row overall (`row1`, `project1`, `t1`), the first row of the second project to
    appear (`row2`, `project2`, `t2`, null when one project), and how many projects, units and rows.

    Only the five columns read are sorted, in one lazy plan: sorting `rows` as given copies every column
    it has, and the per-project firsts need no more. (Over millions of groups most of the memory is the
    group-by's hash tables, whatever the order: callers give it only the groups that can matter.)"""
    keys = rows.lazy().select("grp", "project", "unit", "row", "t")
    first_per_project = (
        keys.sort("t", "row").group_by("grp", "project", maintain_order=True)
        .agg(pl.col("row").first(), pl.col("t").first())
        .sort("grp", "t", "row")
    )
    firsts = first_per_project.group_by("grp", maintain_order=True).agg(
        pl.col("row").first().alias("row1"), pl.col("project").first().alias("project1"), pl.col("t").first().alias("t1"),
        pl.col("row").slice(1, 1).first().alias("row2"), pl.col("project").slice(1, 1).first().alias("project2"),
        pl.col("t").slice(1, 1).first().alias("t2"),
        pl.len().alias("n_projects"),
    )
    units = keys.group_by("grp").agg(pl.col("unit").n_unique().alias("n_units"), pl.len().alias("n_rows"))
    return firsts.join(units, on="grp", how="left").collect()


def earliest_other_project(rows: pl.DataFrame, links: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """For each row, the earliest row of ANOTHER project that holds the same content, uploaded before it.

    `rows`: row, grp, project, t. `links`: grp → grp2 with `dist` and `via` (how the two hold the same
    content; a group links to itself at 0, and to near groups). `summary`: `group_summary` of the groups.
    Returns row, orig_row, orig_t, dist, via for rows that have such an original (the earliest one; ties
    by row, then the closest match)."""
    cand = (
        rows.select("row", "grp", "project", "t")
        .join(links, on="grp", how="inner")
        .join(summary.select("grp", "row1", "project1", "t1", "row2", "project2", "t2").rename({"grp": "grp2"}),
              on="grp2", how="inner")
        .with_columns(
            pl.when(pl.col("project1") != pl.col("project")).then(pl.col("row1")).otherwise(pl.col("row2")).alias("orig_row"),
            pl.when(pl.col("project1") != pl.col("project")).then(pl.col("t1")).otherwise(pl.col("t2")).alias("orig_t"),
        )
        .filter(
            pl.col("orig_row").is_not_null()
            & ((pl.col("orig_t") < pl.col("t")) | ((pl.col("orig_t") == pl.col("t")) & (pl.col("orig_row") < pl.col("row"))))
        )
    )
    return (
        cand.sort("orig_t", "orig_row", "dist", pl.col("via") != "sha256")
        .group_by("row", maintain_order=True)
        .agg(pl.col("orig_row").first(), pl.col("orig_t").first(), pl.col("dist").first(), pl.col("via").first())
    )


# --------------------------------------------------------------------------------------------------
# text near-duplicates: shingles, document frequency, MinHash, LSH, exact Jaccard
# --------------------------------------------------------------------------------------------------

# Keep the characters that carry content: Han, letters, digits. Punctuation and spacing vary freely
# between a text and its copy, so they are dropped before shingling.
_NOT_CONTENT = r"[^\p{Han}\p{L}\p{N}]+"


def normalize_text(col: str = "summary") -> pl.Expr:
    return (
        pl.col(col).fill_null("")
        .str.replace_all(r"<[^>]*>", "")
        .str.to_lowercase()
        .str.replace_all(_NOT_CONTENT, "")
    )


def shingle_hashes(texts: pl.Series, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Character k-gram hashes of each text (already normalized): (doc index, uint64 hash) arrays, one
    entry per shingle occurrence, vectorized over the whole batch (UTF-32 code points, rolling hash)."""
    texts = texts.fill_null("")
    lengths = texts.str.len_chars().to_numpy().astype(np.int64)
    n_chars = int(lengths.sum())
    if n_chars == 0:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    joined = "".join(texts.to_list())
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n_sh = np.maximum(lengths - k + 1, 0)
    if int(n_sh.sum()) == 0:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    # Rolling hash at every position of the concatenation, mixed, block by block (`_SHINGLE_BLOCK`); then
    # drop the windows that start in the last k-1 characters of a text (they run into the next one).
    m = len(cps) - k + 1
    h = np.empty(m, dtype=np.uint64)
    work = np.empty(min(m, _SHINGLE_BLOCK), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, m, _SHINGLE_BLOCK):
            hi = min(lo + _SHINGLE_BLOCK, m)
            block = h[lo:hi]
            block[:] = cps[lo:hi]
            for j in range(1, k):
                block *= _U64(0x100000001B3)
                block += cps[lo + j:hi + j]
            _splitmix64_in_place(block, work[:hi - lo])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    valid = np.ones(m, dtype=bool)
    for j in range(1, k):
        p = ends - j
        valid[p[(p >= starts) & (p < m)]] = False
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_sh)
    return doc, h[valid]


def boilerplate_shingles(doc: np.ndarray, h: np.ndarray, n_docs: int, max_df_share: float,
                         min_df_docs: int) -> np.ndarray:
    """Shingle hashes found in at least max(`max_df_share` of the documents, `min_df_docs`) documents:
    the phrases everybody writes. Sorted (for `np.isin`/searchsorted)."""
    if len(h) == 0:
        return np.empty(0, np.uint64)
    frame = pl.DataFrame({"doc": doc, "h": h}).unique()
    df = frame.group_by("h").len()
    limit = max(float(min_df_docs), max_df_share * n_docs)
    return np.sort(df.filter(pl.col("len") >= limit)["h"].to_numpy().astype(np.uint64))


def member(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """x ∈ values, elementwise: Polars hashes the (usually small) set once and probes it in parallel, about
    ten times faster than a binary search of tens of millions of uint64 (numpy's isin sorts both)."""
    if len(values) == 0 or len(x) == 0:
        return np.zeros(len(x), dtype=bool)
    return pl.Series(x).is_in(pl.Series(values).implode()).to_numpy()


def drop_shingles(doc: np.ndarray, h: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the shingles in `stop` (sorted)."""
    if len(stop) == 0 or len(h) == 0:
        return doc, h
    keep = ~member(h, stop)
    return doc[keep], h[keep]


def _densify(sig: np.ndarray, bits: int) -> np.ndarray:
    """Rotation densification of one-permutation MinHash (Shrivastava & Li 2014), in place: in
    `sig` (docs × rounds × bins, uint64), an empty bin (all bits set) borrows the value of the next
    non-empty bin of its round, cyclically, `shift` bins on, plus `shift` × 2^(64 - `bits`), so that
    borrowed values stay distinct from native ones of the bin. A document without shingles keeps its
    empty bins."""
    empty = sig == np.iinfo(np.uint64).max
    docs = np.flatnonzero(empty.any(axis=(1, 2)))
    bins = sig.shape[2]
    if len(docs) == 0 or bins == 1:
        return sig
    part, hole = sig[docs], empty[docs]
    # Each round's bins twice over, so that "the next non-empty bin" needs no wrap: a bin's index where
    # it is non-empty, past the end where not, then the smallest index at or after each bin.
    at = np.where(np.concatenate([~hole, ~hole], axis=2), np.arange(2 * bins), 2 * bins)
    nearest = np.minimum.accumulate(at[..., ::-1], axis=2)[..., ::-1][..., :bins]
    shift = nearest - np.arange(bins)
    borrow = hole & (shift < bins)
    donor = np.take_along_axis(np.concatenate([part, part], axis=2), np.minimum(nearest, 2 * bins - 1), axis=2)
    with np.errstate(over="ignore"):
        sig[docs] = np.where(borrow, donor + _U64(1 << (64 - bits)) * shift.astype(np.uint64), part)
    return sig


def minhash_signatures(doc: np.ndarray, h: np.ndarray, n_docs: int, n_values: int,
                       bins_per_round: int = 8) -> np.ndarray:
    """`n_values` MinHash values per document: `n_values / bins_per_round` rounds of one-permutation
    hashing (the top bits of a shingle's hash pick one of the round's bins, the rest is its value; empty
    bins are densified, `_densify`), each with its own re-mix of the shingle hashes. Few bins a round keep
    short documents from leaving bins empty (densified bins of one donor would make unrelated short texts
    collide); many rounds keep the cost at one pass over the shingles per round, not one per value. An
    all-max row is a document without shingles."""
    assert n_values % bins_per_round == 0 and (bins_per_round & (bins_per_round - 1)) == 0
    rounds, bits = n_values // bins_per_round, bins_per_round.bit_length() - 1
    sig = np.full(n_docs * n_values, np.iinfo(np.uint64).max, dtype=np.uint64)
    # Round r re-hashes by multiplying with a random odd constant: a bijection of the (already mixed)
    # shingle hashes whose top bits are a universal hash (multiply-shift), at one multiply a shingle.
    odd = np.random.default_rng(0x5EED).integers(1, 2**63, rounds, dtype=np.int64).astype(np.uint64) * _U64(2) + _U64(1)
    row = doc.astype(np.uint64) * _U64(n_values)  # where each shingle's document starts in `sig`
    value_bits = _U64((1 << (64 - bits)) - 1)
    value = np.empty(min(len(h), _MINHASH_BLOCK), dtype=np.uint64)
    at = np.empty_like(value)
    with np.errstate(over="ignore"):
        for lo in range(0, len(h), _MINHASH_BLOCK):  # every round over one block, then the next block
            hb, rb = h[lo:lo + _MINHASH_BLOCK], row[lo:lo + _MINHASH_BLOCK]
            v, a = value[:len(hb)], at[:len(hb)]
            for r, multiplier in enumerate(odd):
                np.multiply(hb, multiplier, out=v)
                np.right_shift(v, _U64(64 - bits), out=a)
                a += rb
                v &= value_bits
                # unbuffered in-place minimum per (document, bin) of round r (its bins start r × bins on)
                np.minimum.at(sig[r * bins_per_round:], a.view(np.int64), v)
    return _densify(sig.reshape(n_docs, rounds, bins_per_round), bits).reshape(n_docs, n_values)


def band_keys(sig: np.ndarray, rows_per_band: int) -> np.ndarray:
    """LSH band keys: one uint64 per band of `rows_per_band` signature values, (n_docs, n_bands)."""
    n, n_bins = sig.shape
    n_bands = n_bins // rows_per_band
    values = np.ascontiguousarray(sig.T)  # a band reads columns; in `sig` a column's values are 1 KiB apart
    keys = np.empty((n_bands, n), dtype=np.uint64)
    work = np.empty(n, dtype=np.uint64)
    for band in range(n_bands):
        key = keys[band]
        key.fill(band)
        for c in range(band * rows_per_band, (band + 1) * rows_per_band):
            key ^= values[c]
            _splitmix64_in_place(key, work)
    return np.ascontiguousarray(keys.T)


def lsh_candidate_pairs(keys: np.ndarray, live: np.ndarray, max_bucket: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of live documents (i < j) that agree on all values of at least one band (equal band key).
    A bucket larger than `max_bucket` pairs each member with its `max_bucket` next members only."""
    n = keys.shape[0]
    idx = np.flatnonzero(live)
    codes = [np.empty(0, np.int64)]
    for band in range(keys.shape[1]):
        p, q = _equal_key_pairs(keys[idx, band], max_bucket)
        if len(p):
            i, j = idx[p], idx[q]
            # each band's pairs deduplicated, then all bands at once: one sort of every band's pairs
            # instead of a growing union per band (quadratic in the bands once candidates number millions)
            codes.append(np.unique(np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j)))
    code = np.unique(np.concatenate(codes))
    return code // n, code % n


class ShingleSets(NamedTuple):
    """Documents' shingle sets in one flat array: document `ids[x]` (sorted, distinct) has the sorted,
    distinct hashes `h[first[x]:first[x] + size[x]]`. Eight bytes a shingle and none for its document,
    so the sets of a few hundred thousand candidate reports are held at the cost of their hashes."""

    ids: np.ndarray
    first: np.ndarray
    size: np.ndarray
    h: np.ndarray

    @classmethod
    def of(cls, doc: np.ndarray, h: np.ndarray) -> ShingleSets:
        """From shingle occurrences (repeats allowed), sorted then deduplicated: a hash-based unique of
        tens of millions of shingles holds several times their size. Polars sorts on both cores, four
        times as fast as NumPy's `lexsort`."""
        ordered = pl.DataFrame({"doc": np.asarray(doc, dtype=np.int64), "h": np.asarray(h, dtype=np.uint64)}).sort(
            "doc", "h")
        sdoc, sh = ordered["doc"].to_numpy(), ordered["h"].to_numpy()
        del ordered
        keep = np.r_[True, (sdoc[1:] != sdoc[:-1]) | (sh[1:] != sh[:-1])][:len(sdoc)]
        sdoc, sh = sdoc[keep], sh[keep]
        first = np.flatnonzero(np.r_[True, sdoc[1:] != sdoc[:-1]][:len(sdoc)])
        return cls(sdoc[first], first, np.diff(np.r_[first, len(sdoc)]), sh)

    @classmethod
    def concat(cls, parts: list[ShingleSets]) -> ShingleSets:
        """The sets of parts over disjoint documents as one: the hashes copied once, the index sorted."""
        if not parts:
            return cls.of(np.empty(0, np.int64), np.empty(0, np.uint64))
        offsets = np.cumsum([0] + [len(p.h) for p in parts[:-1]])
        ids = np.concatenate([p.ids for p in parts])
        first = np.concatenate([p.first + off for p, off in zip(parts, offsets, strict=True)])
        size = np.concatenate([p.size for p in parts])
        h = np.concatenate([p.h for p in parts])
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], first[order], size[order], h)


def jaccard_pairs(sets: ShingleSets, a: np.ndarray, b: np.ndarray, pairs_per_batch: int = 100_000) -> np.ndarray:
    """Exact Jaccard of the shingle sets of documents a[i] and b[i] (a document without a set has none).

    Vectorized: each pair's shingles are keyed by (pair, shingle) on both sides, and the intersection is
    the number of a-side keys also on the b-side (one hashed membership test for all pairs)."""
    if len(a) == 0:
        return np.empty(0, dtype=np.float64)
    ids, first, size, sh = sets
    if len(ids) == 0:
        return np.zeros(len(a), dtype=np.float64)

    def side(docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(ids, docs), len(ids) - 1)
        n = np.where(ids[pos] == docs, size[pos], 0)
        pair = np.repeat(np.arange(len(docs)), n)
        off = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        rows = np.repeat(first[pos], n) + off
        with np.errstate(over="ignore"):
            key = _splitmix64(sh[rows] ^ _splitmix64(pair.astype(np.uint64)))
        return n, pair, key

    def chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        na, pair_a, key_a = side(a)
        nb, _, key_b = side(b)
        inter = np.bincount(pair_a[member(key_a, key_b)], minlength=len(a))
        union = na + nb - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    # Pairs in batches: the keys are one entry per shingle of each pair's two documents, so a million
    # candidate pairs would need gigabytes at once.
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.concatenate([chunk(a[lo:lo + pairs_per_batch], b[lo:lo + pairs_per_batch])
                           for lo in range(0, len(a), pairs_per_batch)])


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------

BENFORD_FIRST = np.log10(1 + 1 / np.arange(1, 10))


def digit_columns(value: str = "metric_value") -> list[pl.Expr]:
    """Per value: its first significant digit (1–9, positive values), and for whole numbers ≥ 10 its last
    digit (0–9) — smaller numbers have one digit, which the first-digit test already reads."""
    v = pl.col(value)
    pos = v.is_finite() & (v > 0)
    exp = v.log10().floor()
    first = (v / pl.lit(10.0).pow(exp) + 1e-9).floor().clip(1, 9).cast(pl.Int8)
    whole = pos & (v == v.round(0)) & (v >= 10) & (v < 1e15)
    last = (v.round(0).cast(pl.Int64) % 10).cast(pl.Int8)
    return [
        pl.when(pos).then(first).otherwise(None).alias("first_digit"),
        pl.when(whole).then(last).otherwise(None).alias("last_digit"),
    ]


def digit_profile(values: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """`values`: keys + metric_value. Per entity: n_first and the count of each first digit 1–9
    (`fd1`…`fd9`), n_last and the count of each last digit 0–9 (`ld0`…`ld9`)."""
    d = values.with_columns(digit_columns())
    first = d.filter(pl.col("first_digit").is_not_null()).group_by(keys).agg(
        pl.len().alias("n_first"), *[(pl.col("first_digit") == k).sum().alias(f"fd{k}") for k in range(1, 10)]
    )
    last = d.filter(pl.col("last_digit").is_not_null()).group_by(keys).agg(
        pl.len().alias("n_last"), *[(pl.col("last_digit") == k).sum().alias(f"ld{k}") for k in range(10)]
    )
    out = d.select(keys).unique().join(first, on=keys, how="left").join(last, on=keys, how="left")
    counts = ["n_first", *[f"fd{k}" for k in range(1, 10)], "n_last", *[f"ld{k}" for k in range(10)]]
    return out.with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in counts)
