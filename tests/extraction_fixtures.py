"""The labelled tile and patch grid shared by tests/test_extraction.py (the library) and
tests/test_extract_patches.py (the command line)."""
import numpy as np

WINDOW, STEP = 540, 80
OFFSET = (WINDOW - STEP) // 2  # 230: the central STEP x STEP region's offset inside a patch


def labelled_tile(height=300, width=200, seed=0):
    """(RGB uint8 image, int32 instance map, int32 type map) with three nuclei, one of id 300."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    inst = np.zeros((height, width), np.int32)
    inst[10:30, 10:40] = 1
    inst[100:140, 150:190] = 300  # an id above 255 must survive
    inst[250:290, 20:60] = 7
    types = np.select([inst == 1, inst == 300, inst == 7], [2, 6, 7], 0).astype(np.int32)
    return image, inst, types
