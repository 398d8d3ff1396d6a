"""scripts/reproduce_tables.py: published values with sources, our rows side by side, JSON and CSV."""
import csv
import json

import numpy as np
import pytest

from misc.io import save_label_mat
from scripts.reproduce_tables import PUBLISHED_PATH, load_published, main


def test_published_values_match_the_spec():
    tables = load_published()
    assert tables["III"]["rows"]["Kumar"] == {"source": "Table III, Kumar, HoVer-Net", "dice": 0.826,
                                              "aji": 0.618, "dq": 0.770, "sq": 0.773, "pq": 0.597}
    assert tables["III"]["rows"]["CoNSeP"]["pq"] == 0.547 and tables["III"]["rows"]["CPM-17"]["aji"] == 0.705
    assert {r: v["pq"] for r, v in tables["IV"]["rows"].items()} == {"CPM (combined)": 0.604, "TNBC": 0.590,
                                                                   "CoNSeP": 0.408}
    assert tables["V"]["rows"]["CoNSeP"] == {"source": "Table V, CoNSeP, HoVer-Net", "pq": 0.516, "f_d": 0.748,
                                             "f_e": 0.635, "f_i": 0.631, "f_s": 0.566, "f_m": 0.426}
    assert all(row["source"] for t in tables.values() for row in t["rows"].values())
    assert PUBLISHED_PATH.stat().st_size < 10_000


def _folders(tmp_path):
    """One 16x16 image: truth two squares (types 3 and 2); prediction finds the first exactly (type 3)."""
    inst = np.zeros((16, 16), np.int32)
    inst[1:5, 1:5] = 1
    inst[9:13, 9:13] = 2
    pred = np.where(inst == 1, 1, 0)
    save_label_mat(tmp_path / "t" / "a.mat", inst, inst_type=[3, 2], inst_centroid=[[2.5, 2.5], [10.5, 10.5]])
    save_label_mat(tmp_path / "p" / "a.mat", pred, inst_type=[3], inst_centroid=[[2.5, 2.5]])
    return tmp_path / "t", tmp_path / "p"


def test_rows_side_by_side_json_and_csv(tmp_path, capsys):
    true_dir, pred_dir = _folders(tmp_path)
    code = main(["--row", "III", "CoNSeP", str(true_dir), str(pred_dir), "--row", "V", "CoNSeP", str(true_dir),
                 str(pred_dir), "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    got = {(r["table"], r["metric"]): r for r in rows}
    # DICE 2*16/(32+16); AJI 16/32; one TP, one FN: DQ 1/1.5, SQ 1, PQ 2/3
    assert got[("III", "dice")]["ours"] == pytest.approx(2 / 3)
    assert got[("III", "aji")]["ours"] == pytest.approx(0.5)
    assert got[("III", "pq")]["ours"] == pytest.approx(2 / 3)
    assert got[("III", "pq")]["published"] == 0.547
    assert got[("III", "pq")]["diff"] == pytest.approx(2 / 3 - 0.547)
    assert got[("V", "f_d")]["ours"] == pytest.approx(2 / 3)  # 1 pair, 1 missed
    assert got[("V", "f_e")]["ours"] == pytest.approx(1.0) and got[("V", "f_i")]["ours"] == pytest.approx(0.0)
    assert got[("V", "f_e")]["source"] == "Table V, CoNSeP, HoVer-Net"
    assert [r["metric"] for r in rows if r["table"] == "V"] == ["pq", "f_d", "f_e", "f_i", "f_s", "f_m"]
    with open(tmp_path / "r.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert "0.5470" in out and "+0.1197" in out


def test_unknown_row_has_no_published_value_and_bad_table_is_an_error(tmp_path, capsys):
    true_dir, pred_dir = _folders(tmp_path)
    assert main(["--row", "III", "Mine", str(true_dir), str(pred_dir), "--json", str(tmp_path / "m.json")]) == 0
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert all(r["published"] is None and r["diff"] is None for r in rows)
    assert main(["--row", "VII", "Kumar", str(true_dir), str(pred_dir)]) == 2
    assert "table must be one of" in capsys.readouterr().err
