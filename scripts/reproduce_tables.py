"""One command for the paper's result tables: score prediction folders and print them beside the published rows.

Usage (from the repository root)::

    python scripts/reproduce_tables.py \\
        --row III Kumar data/kumar/test/Labels results/kumar \\
        --row III CoNSeP data/consep/test/Labels results/consep \\
        --row V CoNSeP data/consep/test/Labels results/consep \\
        --json tables.json --csv tables.csv

Each ``--row TABLE ROW TRUE_DIR PRED_DIR`` scores one data set's predictions (``<name>.mat`` as written by
``infer.py``) against its labels with ``metrics/evaluate.py``'s functions: tables III and IV use the
instance metrics averaged over images (DICE, AJI, DQ, SQ, PQ); table V adds the type metrics pooled over
images (Fd and the per-type F1: Fe type 3 epithelial, Fi 2 inflammatory, Fs 4 spindle, Fm 1
miscellaneous, the project's CoNSeP / CRCHisto numbering) and PQ where the truth has instance maps. The
published values and their sources (table and row) live in ``scripts/published_tables.json``; a row not
in it is printed without published values. Prints one line per metric (ours, published, ours -
published) and writes the same as JSON (``--json``) and CSV (``--csv``). Exit status 0, or 2 on bad
input with a one-line message.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from metrics.evaluate import evaluate_instance, evaluate_type, match_files
from misc.io import InputError, atomic_path, write_json_atomic
from src.config import config_from_args

__all__ = ["PUBLISHED_PATH", "load_published", "score_row", "main"]

PUBLISHED_PATH = Path(__file__).resolve().with_name("published_tables.json")
EXIT_BAD_INPUT = 2
INSTANCE_METRICS = ("dice", "aji", "dq", "sq", "pq")
# Table V column -> type id in the project's numbering (1 miscellaneous, 2 inflammatory, 3 epithelial, 4 spindle)
TYPE_COLUMNS = {"f_e": 3, "f_i": 2, "f_s": 4, "f_m": 1}
TABLE_MODES = {"III": "instance", "IV": "instance", "V": "type"}
COLUMNS = ("table", "row", "metric", "ours", "published", "diff", "source")


def load_published(path: Path = PUBLISHED_PATH) -> dict:
    """The published tables: ``{"III": {"mode", "title", "rows": {row: {"source", metric: value}}}, ...}``."""
    return json.loads(Path(path).read_text())["tables"]


def score_row(table: str, true_dir: Path, pred_dir: Path, radius: float, exhaustive: bool = True) -> dict:
    """Our values of one table row: instance metrics (tables III, IV) or PQ + Fd + per-type F1 (table V).

    A table-V truth without instance maps (points, e.g. CRCHisto) gives no PQ. Values are floats in [0, 1].
    """
    names = match_files(true_dir, pred_dir).names
    ours = {}
    try:
        mean = evaluate_instance(true_dir, pred_dir, names)["mean"]
    except InputError:
        if TABLE_MODES[table] != "type":
            raise
        mean = {}  # point annotations: detection and classification only
    metrics = INSTANCE_METRICS if TABLE_MODES[table] == "instance" else ("pq",)
    ours.update({k: float(mean[k]) for k in metrics if k in mean})
    if TABLE_MODES[table] == "type":
        scores = evaluate_type(true_dir, pred_dir, names, radius, type_ids=sorted(TYPE_COLUMNS.values()),
                               exhaustive=exhaustive)
        ours["f_d"] = scores["f1_d"]
        ours.update({col: scores["f1_type"][str(t)] for col, t in TYPE_COLUMNS.items()})
    return ours


def _records(table: str, row: str, ours: dict, published: dict) -> list[dict]:
    ref = published.get(table, {}).get("rows", {}).get(row, {})
    out = []
    for metric, value in ours.items():
        pub = ref.get(metric)
        out.append({"table": table, "row": row, "metric": metric, "ours": value, "published": pub,
                    "diff": None if pub is None else value - pub, "source": ref.get("source", "")})
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _build_parser(default_radius: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce_tables.py",
        description="Score prediction folders and print the paper's Table III / IV / V rows beside the "
                    "published values (scripts/published_tables.json).")
    parser.add_argument("--row", nargs=4, action="append", required=True,
                        metavar=("TABLE", "ROW", "TRUE_DIR", "PRED_DIR"),
                        help="table (III, IV or V), row name as in the published file (e.g. Kumar, CoNSeP, "
                             "CPM-17, 'CPM (combined)', TNBC), the labels folder and the predictions folder; "
                             "repeat for every row")
    parser.add_argument("--radius", type=float, default=default_radius,
                        help=f"table V pairing radius in px (default {default_radius:g}; 6 at 20x, e.g. CRCHisto)")
    parser.add_argument("--exhaustive", action=argparse.BooleanOptionalAction, default=True,
                        help="table V: --no-exhaustive for truths typed in part (untyped -1/0), see "
                             "compute_stats.py --help")
    parser.add_argument("--published", type=Path, default=PUBLISHED_PATH, help="published values (JSON)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--csv", type=Path, default=None, help="write the rows as CSV here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, score every row, print, write JSON/CSV; return the exit code."""
    args = _build_parser(float(config_from_args().EVAL.RADIUS)).parse_args(argv)
    try:
        published = load_published(args.published)
        records = []
        for table, row, true_dir, pred_dir in args.row:
            if table not in TABLE_MODES:
                raise InputError(f"--row {table} {row}: table must be one of {sorted(TABLE_MODES)}")
            ours = score_row(table, Path(true_dir), Path(pred_dir), args.radius, args.exhaustive)
            records.extend(_records(table, row, ours, published))
        width = max([16] + [len(r["row"]) + 2 for r in records])  # a long row name never runs into the metric
        print(f"{'table':<6}{'row':<{width}}{'metric':<8}{'ours':>8}{'paper':>8}{'diff':>9}")
        for r in records:
            diff = "-" if r["diff"] is None else f"{r['diff']:+.4f}"
            print(f"{r['table']:<6}{r['row']:<{width}}{r['metric']:<8}{_fmt(r['ours']):>8}{_fmt(r['published']):>8}"
                  f"{diff:>9}")
        if args.json is not None:
            write_json_atomic(args.json, {"rows": records}, indent=2, newline=True)
        if args.csv is not None:
            with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(records)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
