"""The pictures: confusion.png, curves.png, pretrain's --vis panels and encode.py's preview grid.

Each test reads pixels back at places computed by hand from the layout, so a picture that lost its
shading, its tiles or its order fails; the text itself was checked by eye (docs/USAGE.md, Pictures).
"""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

import encode
import pictures
import pretrain

BLUE = pictures.shade(1)


def test_shade_runs_from_white_to_dark_blue():
    assert pictures.shade(0) == (255, 255, 255)
    assert pictures.shade(1) == (8, 48, 107)
    assert pictures.shade(0.5) == (132, 152, 181)          # (255 + 8) / 2 = 131.5 -> 132, ...


def test_nice_ticks():
    assert pictures.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert pictures.nice_ticks(0.37, 2.9) == [0, 1, 2, 3]            # 2.53 / 5 = 0.51 -> step 1
    assert pictures.nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert pictures.nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]   # never a half epoch
    assert pictures.nice_ticks(5, 5, integer=True) == [4, 5, 6]       # one point: a range around it


def test_confusion_cells_are_row_shares(tmp_path):
    """3 classes: true 0 -> predicted 0 twice; true 1 -> 0 once, 1 once; class 2 never seen.
    The cell at (row i, column j) is shaded by count / row total; the title is drawn."""
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 0, 0, 1])
    path = str(tmp_path / 'confusion.png')
    pictures.save_confusion(path, predictions, labels, 3, ['walk', 'sit', 'jump'], 'run: top-1 75.0%')
    image = Image.open(path).convert('RGB')
    # layout: cell 48 (600 // 3 capped at 48); left = 24 + widest name + 10, top = 66
    width = max(pictures.text_width(n, pictures.font(13)) for n in ('walk', 'sit', 'jump'))
    left, top, cell = int(24 + width + 10), 66, 48

    def pixel(row, column):              # a corner of the cell, away from the count written in its middle
        return image.getpixel((left + column * cell + 3, top + row * cell + 3))

    assert pixel(0, 0) == pictures.shade(1.0) and pixel(0, 1) == pictures.shade(0) == pixel(0, 2)
    assert pixel(1, 0) == pictures.shade(0.5) == pixel(1, 1) and pixel(1, 2) == pictures.shade(0)
    assert pixel(2, 0) == pixel(2, 1) == pixel(2, 2) == pictures.shade(0)        # no samples: white, no division by 0
    assert image.getpixel((left + 3 * cell, top + 2)) == (0, 0, 0)               # the matrix frame
    title = np.asarray(image)[6:24, 8:150]
    assert (title < 128).any()                                                  # the title is written


def test_confusion_scale_bar_and_many_classes(tmp_path):
    """120 classes: cells of 12 pixels, no counts; the scale bar runs from dark (100%) to white (0%)."""
    labels = np.arange(120).repeat(2)
    path = str(tmp_path / 'confusion.png')
    pictures.save_confusion(path, labels, labels, 120)
    image = Image.open(path).convert('RGB')
    width = max(pictures.text_width(f'class {k}', pictures.font(9)) for k in range(120))
    left, top, side = int(24 + width + 10), 66, 12 * 120
    assert image.getpixel((left + 6, top + 6)) == BLUE and image.getpixel((left + 18, top + 6)) == (255, 255, 255)
    bar_x = left + side + 18
    assert image.getpixel((bar_x + 7, top)) == BLUE and image.getpixel((bar_x + 7, top + side - 1)) == (255, 255, 255)


def test_curves_from_log(tmp_path):
    """curves.png has the loss panel and, because two epochs were evaluated, a top-1 panel beside it."""
    with open(tmp_path / 'log.jsonl', 'w') as f:
        for epoch, loss in enumerate([2.0, 1.5, 1.0, 0.5]):
            record = {'epoch': epoch, 'loss': loss}
            if epoch in (1, 3):
                record['test_top1'] = 40.0 + 20 * epoch
            f.write(json.dumps(record) + '\n')
    pictures.save_curves(str(tmp_path), 'a run', chance=25.0)
    image = Image.open(tmp_path / 'curves.png').convert('RGB')
    assert image.size == (2 * 460, 350)
    pixels = np.asarray(image).astype(int)
    line = (pixels[..., 0] == 31) & (pixels[..., 1] == 90) & (pixels[..., 2] == 170)
    assert line[:, :460].any() and line[:, 460:].any()                          # a curve in both panels
    # loss panel: x 0..3 over px 58..448, y ticks 0.5..2 (step 0.5) over py 58..308 -> epoch 0 at (58, 58)
    assert line[56:61, 56:61].any() and line[306:311, 446:451].any()            # loss 2.0 at epoch 0, 0.5 at 3
    red = (pixels[..., 0] == 200) & (pixels[..., 1] == 60)
    assert red[:, 460:].any() and not red[:, :460].any()                        # the chance line, in the top-1 panel only

    with open(tmp_path / 'log.jsonl', 'w') as f:
        f.write(json.dumps({'epoch': 0, 'loss': 1.0}) + '\n')
    pictures.save_curves(str(tmp_path))
    assert Image.open(tmp_path / 'curves.png').size == (460, 350)                # pretraining: the loss alone


def test_vis_grid_tiles_in_place():
    """titled_grid puts tile (r, c) at left + c * (side + 6), 60 + r * (side + 6), enlarged to 128."""
    tiles = np.zeros((2, 3, 32, 32, 3), dtype=np.uint8)
    for r in range(2):
        for c in range(3):
            tiles[r, c] = (40 * (r * 3 + c) + 10, 0, 0)
    image = pictures.titled_grid(tiles, ['input', 'masked', 'reconstruction'], [], 'run: epoch 5').convert('RGB')
    side, left = 128, 8
    for r in range(2):
        for c in range(3):
            x, y = left + c * (side + 6), 60 + r * (side + 6)
            assert image.getpixel((x, y)) == image.getpixel((x + side - 1, y + side - 1)) == (40 * (r * 3 + c) + 10, 0, 0)
    assert image.getpixel((left + side + 2, 60)) == (255, 255, 255)             # the gap between columns


def test_preview_grid_spans_classes(tmp_path):
    """--preview 4 on 2 classes sorted by class takes the first of each class, then the second."""
    out = tmp_path / 'out'
    out.mkdir()
    labels = np.array([0, 0, 0, 1, 1], dtype=np.int64)
    np.save(out / 'train_labels.npy', labels)
    (out / 'train_names.txt').write_text('a\nb\nc\nd\ne\n')
    images = np.zeros((5, 3, 16, 16), dtype=np.float16)
    images[:, 0, :, 8:] = 1                                                     # red on the right half
    np.save(out / 'train_joint.npy', images)
    encode.write_previews(out, 4, ['joint'], ['walk', 'run'])
    written = sorted(os.listdir(out / 'preview'))
    assert written == ['00_a_joint.png', '01_d_joint.png', '02_b_joint.png', '03_e_joint.png', 'grid.png']
    grid = Image.open(out / 'preview' / 'grid.png').convert('RGB')
    # tiles 16 x 8 = 128 pixels, rows 128 + 40 apart from y = 30, at x = 8
    assert grid.getpixel((8 + 2, 30 + 2)) == (0, 0, 0) and grid.getpixel((8 + 125, 30 + 2)) == (255, 0, 0)
    assert grid.getpixel((8 + 125, 30 + 3 * 168 + 125)) == (255, 0, 0)
    caption = np.asarray(grid)[30 + 128 + 2:30 + 128 + 30, 8:130]
    assert (caption < 128).any()                                                # the tile's caption


def test_preview_without_class_names(tmp_path):
    """One sample, no class names: 'class 3' captions it, and K larger than the split is fine."""
    modality = 'joint'
    out = tmp_path / 'out'
    out.mkdir()
    np.save(out / 'train_labels.npy', np.array([3], dtype=np.int64))
    (out / 'train_names.txt').write_text('only\n')
    np.save(out / f'train_{modality}.npy', np.zeros((1, 3, 16, 16), dtype=np.float16))
    encode.write_previews(out, 8, [modality])
    assert sorted(os.listdir(out / 'preview')) == ['00_only_joint.png', 'grid.png']


def test_confusion_class_names_follow_the_logits():
    """finetune names the confusion matrix's classes in logit order (one-shot: the novel classes only)."""
    import finetune
    assert finetune.class_names({'class_names': ['walk', 'sit', 'jump']}, [2, 0]) == ['jump', 'walk']
    assert finetune.class_names({'class_names': None}, [6, 0]) == ['class 6', 'class 0']


def test_drawing_imports_no_torch():
    """pictures.py and tools/results.py draw with Pillow alone: importing them loads no torch."""
    code = "import sys, results, pictures; assert 'torch' not in sys.modules, 'torch was imported'"
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools')
    run = subprocess.run([sys.executable, '-c', code], cwd=tools, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_vis_samples_spread_over_classes():
    """Sorted by class, 3 + 2 + 1 samples: first of each class (0, 3, 5), then the second ones (1, 4), ..."""
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert pretrain.spread_over_classes(labels, 4).tolist() == [0, 3, 5, 1]
    assert pretrain.spread_over_classes(labels, 10).tolist() == [0, 3, 5, 1, 4, 2]
