"""src/infer/blocks.py: the block grid, centroid ownership and the merge of a block's nuclei into the image's map."""
import numpy as np
import pytest

from src.infer.blocks import Block, NucleusTable, block_core, block_grid, merge_block, nucleus_margin, owned_ids
from src.maps.postproc import instance_info


def test_margin_and_core_are_whole_outputs():
    assert nucleus_margin(80, 80, 21) == 160 and nucleus_margin(164, 80, 21) == 164
    assert nucleus_margin(80, 30, 21) == 80
    assert block_core(2048, 160, 80) == 1680  # region 1680 + 2 * 160 = 2000 <= 2048
    assert block_core(2048, 204, 204) == 1632
    assert block_core(100, 160, 80) == 80  # at least one output: the region is then larger than asked


@pytest.mark.parametrize("height, width, core, margin", [(600, 520, 160, 80), (161, 160, 160, 40), (7, 300, 64, 0)])
def test_cores_partition_the_image_and_regions_add_the_margin(height, width, core, margin):
    blocks = block_grid(height, width, core, margin)
    cover = np.zeros((height, width), int)
    for block in blocks:
        y0, x0, y1, x1 = block.core
        cover[y0:y1, x0:x1] += 1
        assert block.region == (max(0, y0 - margin), max(0, x0 - margin), min(height, y1 + margin),
                                min(width, x1 + margin))
        assert (y0, x0) == (block.row * core, block.col * core)
    assert (cover == 1).all()
    assert [(b.row, b.col) for b in blocks] == sorted((b.row, b.col) for b in blocks)  # row-major


def test_a_centroid_on_a_seam_belongs_to_one_block():
    left, right = Block(0, 0, (0, 0, 10, 10), (0, 0, 10, 14)), Block(0, 1, (0, 10, 10, 20), (0, 6, 10, 20))
    # centroids (x, y) in each region's coordinates: image x = 10.0 is the right block's first column
    assert owned_ids({1: {"centroid": [9.99, 5]}, 2: {"centroid": [10.0, 5]}}, left) == [1]
    assert owned_ids({1: {"centroid": [3.99, 5]}, 2: {"centroid": [4.0, 5]}}, right) == [2]


def test_merge_keeps_the_first_claim_and_describes_what_a_nucleus_kept():
    labels = np.zeros((6, 12), np.int32)
    labels[1:4, 6:8] = 1  # a nucleus of an earlier block, reaching into this block's core
    block = Block(0, 1, (0, 6, 6, 12), (0, 4, 6, 12))  # region: image columns 4..12
    block_map = np.zeros((6, 8), np.int32)  # region coordinates
    block_map[1:5, 3:6] = 1  # image columns 7..9, centroid x 8: kept; rows 1-3 of column 7 are taken already
    block_map[1:4, 2] = 2  # image column 6, centroid x 6: kept, but all of it is taken: dropped
    block_map[0, 6:8] = 3  # image columns 10..11: kept, untouched
    block_map[5, 0] = 4  # image column 4, left of the core: the left block's
    info = instance_info(block_map)
    for inst in info.values():
        inst["type"], inst["type_prob"] = 2, 0.5
    merged = merge_block(labels[:, 4:], block_map, info, block, first_id=2)
    assert sorted(merged) == [2, 3]  # contiguous from first_id, in the block's order
    assert (labels[1:4, 6:8] == 1).all()  # the first claim stays
    assert (labels == 2).sum() == 12 - 3 and (labels == 3).sum() == 2 and labels[5, 4] == 0
    expected = instance_info((labels == 2).astype(np.int32))[1]  # what the block's nucleus 1 kept
    np.testing.assert_array_equal(merged[2]["bbox"], expected["bbox"])
    np.testing.assert_allclose(merged[2]["centroid"], expected["centroid"])
    np.testing.assert_array_equal(merged[2]["contour"], expected["contour"])
    assert merged[2]["type"] == 2 and merged[2]["type_prob"] == 0.5  # the block's vote
    assert merged[3]["bbox"].tolist() == [[0, 10], [1, 12]]  # untouched: moved to image coordinates
    np.testing.assert_allclose(merged[3]["centroid"], [10.5, 0.0])
    np.testing.assert_array_equal(merged[3]["contour"], info[3]["contour"] + [4, 0])
    with pytest.raises(ValueError, match="shape"):
        merge_block(labels, block_map, info, block, 1)


def test_nucleus_table_reads_back_what_was_added():
    inst_map = np.zeros((20, 30), np.int32)
    inst_map[2:6, 3:9], inst_map[10:18, 20:23], inst_map[15, 2] = 1, 2, 3
    info = instance_info(inst_map)
    info[1]["type"], info[1]["type_prob"] = 3, 0.75
    info[2]["type"], info[2]["type_prob"] = 0, 1.0  # background won the vote: kept as 0, not None
    table = NucleusTable()
    table.add({1: info[1], 2: info[2]})
    table.add({})
    table.add({3: info[3]})  # untyped: None, None
    assert len(table) == 3 and list(table) == [1, 2, 3] and 3 in table and 4 not in table
    for inst_id, expected in info.items():
        got = table[inst_id]
        assert set(got) == set(expected) and got["type"] == expected["type"]
        assert got["type_prob"] == expected["type_prob"]
        for key in ("bbox", "centroid", "contour"):
            np.testing.assert_array_equal(got[key], expected[key])
            assert got[key].dtype == expected[key].dtype
    with pytest.raises(ValueError, match="continue from 4"):
        table.add({5: info[1]})
    with pytest.raises(KeyError):
        table[0]
