"""The pictures of a run (Pillow and numpy, no torch): confusion.png, curves.png, pretrain's --vis grid.

Used by probe.py, finetune.py and pretrain.py, and by tools/results.py's chart, which then draws
without importing torch. Every PNG is written to a temporary name and renamed (save_png).
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def font(size=12):
    """Pillow's built-in font at `size` pixels (one fixed size before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size)
    except TypeError:
        return ImageFont.load_default()


def text_width(text, text_font):
    """Width in pixels of one line of text in that font."""
    return ImageDraw.Draw(Image.new('RGB', (1, 1))).textlength(text, font=text_font)


def shade(value):
    """0 -> white, 1 -> dark blue, linear in between (RGB tuple)."""
    return tuple(int(round(255 + (dark - 255) * float(value))) for dark in (8, 48, 107))


def rotated_text(lines, width, pitch, size, anchor='rm'):
    """An image of `lines` written across (each at the middle of its `pitch`-pixel row, aligned by
    anchor, in a strip `width` wide), turned 90 degrees to read bottom to top: column labels."""
    strip = Image.new('RGB', (int(width), pitch * len(lines)), 'white')
    draw = ImageDraw.Draw(strip)
    x, text_font = (width - 4 if anchor == 'rm' else width / 2), font(size)
    for i, line in enumerate(lines):
        draw.text((x, i * pitch + pitch / 2), line, fill='black', font=text_font, anchor=anchor)
    return strip.rotate(90, expand=True)


def save_png(image, path):
    """Write a Pillow image atomically."""
    image.save(path + '.tmp.png')
    os.replace(path + '.tmp.png', path)


def nice_ticks(low, high, count=5, integer=False):
    """Round tick values 1, 2 or 5 x 10^k apart, about `count` of them, from at or below `low` to at
    or above `high` (integers only with integer=True: epochs)."""
    if high <= low:
        low, high = low - 1, high + 1
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    step = max(step, 1) if integer else step
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def draw_panel(draw, box, title, series, x_range, y_range=None, chance=None):
    """One line chart in box (x0, y0, x1, y1): series [(x, y), ...] against epoch, with axes, ticks
    and tick labels; y_range fixes the y axis; chance draws a dashed line labelled 'chance'."""
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = x0 + 58, y0 + 28, x1 - 12, y1 - 42                     # the plot area
    ys = [y for _, y in series]
    xticks = nice_ticks(*x_range, 6, integer=True)
    yticks = nice_ticks(*(y_range or (min(ys), max(ys))), 5)
    x_of = lambda x: px0 + (x - xticks[0]) / (xticks[-1] - xticks[0]) * (px1 - px0)
    y_of = lambda y: py1 - (y - yticks[0]) / (yticks[-1] - yticks[0]) * (py1 - py0)
    draw.text(((x0 + x1) / 2, y0 + 6), title, fill='black', font=font(14), anchor='mt')
    for y in yticks:
        draw.line([px0, y_of(y), px1, y_of(y)], fill=(225, 225, 225))
        draw.text((px0 - 6, y_of(y)), f'{y:g}', fill='black', font=font(11), anchor='rm')
    for x in xticks:
        draw.line([x_of(x), py1, x_of(x), py1 + 4], fill='black')
        draw.text((x_of(x), py1 + 7), f'{x:g}', fill='black', font=font(11), anchor='mt')
    draw.line([px0, py0, px0, py1, px1, py1], fill='black')
    draw.text(((px0 + px1) / 2, y1 - 8), 'epoch', fill='black', font=font(12), anchor='mb')
    if chance is not None:
        for x in range(int(px0), int(px1), 10):
            draw.line([x, y_of(chance), min(x + 5, px1), y_of(chance)], fill=(200, 60, 60))
        draw.text((px1 - 2, y_of(chance) - 2), 'chance', fill=(200, 60, 60), font=font(11), anchor='rb')
    points = [(x_of(x), y_of(y)) for x, y in series]
    if len(points) > 1:
        draw.line(points, fill=(31, 90, 170), width=2)
    if len(points) <= 40:
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 90, 170))


def save_curves(out_dir, what=None, chance=None):
    """curves.png beside log.jsonl: the training loss per epoch and, where the run evaluated, test
    top-1 (%) per epoch with the chance level; titled with the run folder's name and `what`."""
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        records = [json.loads(line) for line in f if line.strip()]
    loss = [(r['epoch'], r['loss']) for r in records if math.isfinite(r['loss'])]
    panels = [('training loss (epoch mean)', loss, None, None)]
    top1 = [(r['epoch'], r['test_top1']) for r in records if 'test_top1' in r]
    if top1:
        panels.append(('test top-1 (%)', top1, (0, 100), chance))
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return
    width, height = 460, 320
    image = Image.new('RGB', (width * len(panels), height + 30), 'white')
    draw = ImageDraw.Draw(image)
    run = os.path.basename(os.path.normpath(out_dir))
    draw.text((10, 8), f'{run}: {what}' if what else run, fill='black', font=font(15))
    epochs = [r['epoch'] for r in records]
    for k, (name, series, y_range, line) in enumerate(panels):
        draw_panel(draw, (k * width, 30, (k + 1) * width, 30 + height), name, series, (min(epochs), max(epochs)),
                   y_range, line)
    save_png(image, os.path.join(out_dir, 'curves.png'))


def save_confusion(path, predictions, labels, num_classes, class_names=None, title=''):
    """confusion.png: rows are the true classes, columns the predicted ones; each cell is shaded by
    its share of the row (scale bar on the right) and shows its count of test samples when it fits."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)                 # (C, C), rows sum to 1
    names = [str(n) for n in class_names] if class_names else [f'class {k}' for k in range(num_classes)]
    names = [n if len(n) <= 28 else n[:26] + '..' for n in names]
    cell = min(48, max(12, 600 // num_classes))
    size = max(9, min(13, cell - 3))
    small = font(size)
    label_width = max(text_width(n, small) for n in names) + 10
    left, top, side = int(24 + label_width), 66, cell * num_classes
    width = max(left + side + 90, 560, int(text_width(title, font(16))) + 16)
    image = Image.new('RGB', (width, top + side + int(label_width) + 30), 'white')
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill='black', font=font(16))
    draw.text((8, 30), 'rows: true class, columns: predicted class; shade: share of the row; '
              'numbers: test samples', fill=(90, 90, 90), font=font(11))
    for i in range(num_classes):
        draw.text((left - 5, top + i * cell + cell / 2), names[i], fill='black', font=small, anchor='rm')
        for j in range(num_classes):
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade(share[i, j]))
            if counts[i, j] and cell >= 20:
                draw.text((x + cell / 2, y + cell / 2), str(counts[i, j]), font=small, anchor='mm',
                          fill='white' if share[i, j] > 0.5 else 'black')
    draw.rectangle([left - 1, top - 1, left + side, top + side], outline='black')
    image.paste(rotated_text(names, label_width, cell, size), (left, top + side + 2))
    draw.text((left + side / 2, top + side + label_width + 14), 'predicted class', fill='black', font=font(13),
              anchor='mm')
    axis_label = rotated_text(['true class'], 90, 18, 13, anchor='mm')
    image.paste(axis_label, (2, top + side // 2 - 45))
    bar_x = left + side + 18                                                      # scale bar: 100% at the top
    for y in range(side):
        draw.line([bar_x, top + y, bar_x + 14, top + y], fill=shade(1 - y / max(side - 1, 1)))
    draw.rectangle([bar_x - 1, top - 1, bar_x + 15, top + side], outline='black')
    for value in (0, 0.5, 1):
        y = top + (1 - value) * (side - 1)
        draw.line([bar_x + 15, y, bar_x + 19, y], fill='black')
        draw.text((bar_x + 22, y), f'{value:.0%}', fill='black', font=font(11), anchor='lm')
    draw.text((bar_x - 12, top - 8), 'share of row', fill='black', font=font(11), anchor='ls')
    save_png(image, path)


def titled_grid(tiles, column_titles, row_titles, title):
    """A Pillow image of tiles (rows, columns, S, S, 3) uint8, enlarged to at least 128 pixels, with a
    title, a title over each column and a name left of each row."""
    rows, columns, s = tiles.shape[:3]
    zoom, gap, top = max(1, 128 // s), 6, 60
    side = s * zoom
    left = 8 + max([int(text_width(t, font(12))) + 8 for t in row_titles] + [0])
    width = max(left + columns * (side + gap), int(text_width(title, font(15))) + 16)
    image = Image.new('RGB', (width, top + rows * (side + gap)), 'white')
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill='black', font=font(15))
    draw.text((8, 24), 'each image: time down, joints across, x y z as R G B', fill=(90, 90, 90), font=font(11))
    for c, name in enumerate(column_titles):
        draw.text((left + c * (side + gap) + side / 2, top - 6), name, fill='black', font=font(12), anchor='mb')
    for r in range(rows):
        y = top + r * (side + gap)
        if r < len(row_titles):
            draw.text((left - 8, y + side / 2), row_titles[r], fill='black', font=font(12), anchor='rm')
        for c in range(columns):
            tile = Image.fromarray(tiles[r, c]).resize((side, side), Image.NEAREST)
            image.paste(tile, (left + c * (side + gap), y))
    return image
