"""PNG figures (matplotlib, Agg backend): training curves, confusion matrices, per-class IoU bars and
segmentation overlays (Pillow), written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write, read_bounded

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

__all__ = ["read_metrics", "plot_training_curves", "plot_confusion", "plot_reproduce", "plot_bench", "label_points",
           "plot_per_class_iou", "save_overlay_png", "plot_curves"]


#: The largest metrics.jsonl read (a record per epoch is about 1 KB).
MAX_METRICS_BYTES = 256 << 20


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on the first figure: it costs 0.6 s with adjustText, which
    commands that draw nothing should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def read_metrics(metrics_file: str | Path) -> list[dict]:
    """Records of ``metrics.jsonl``, one per epoch (a record repeated by a resumed run keeps its last copy)."""
    by_epoch: dict[float, dict] = {}
    raw = read_bounded(metrics_file, MAX_METRICS_BYTES, "the metrics.jsonl a training run wrote")
    for line in raw.decode("utf8", errors="replace").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[k] for k in sorted(by_epoch)]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def plot_training_curves(metrics_file: str | Path, out_png: str | Path) -> Path:
    """Loss and accuracy (train and validation) against epochs."""
    records = read_metrics(metrics_file)
    epochs = [r["epoch"] for r in records]
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    val = [(r["epoch"], r) for r in records if "val_loss" in r]
    # the validation score of each task, and what the trainer's running accuracy means for it
    kind = next((k for k in ("val_miou", "val_mAP") if any(k in r for r in records)), "val_top1")
    label, train_label, title = {
        "val_miou": ("validation mIoU", "train pixel accuracy (augmented)", "mIoU and pixel accuracy"),
        "val_mAP": ("validation mAP@[.5:.95]", "train positive-anchor accuracy (augmented)", "mAP and accuracy"),
        "val_top1": ("validation top-1", "train (augmented)", "accuracy")}[kind]
    if val:
        ax_loss.plot([e for e, _ in val], [r["val_loss"] for _, r in val], "s-", label="validation")
        ax_acc.plot([e for e, _ in val], [r.get(kind) for _, r in val], "s-", label=label)
    ax_acc.plot(epochs, [r["train_accuracy"] for r in records], "o-", label=train_label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="%", title=title)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out_png)


#: Above this many classes the confusion figure shows only the worst classes (the full matrix is in eval.json).
MAX_CONFUSION_CLASSES = 30


def _printable(name: str) -> str:
    """A class name as matplotlib can draw it: undecodable bytes and control characters replaced."""
    text = str(name).encode("utf-8", "replace").decode("utf-8")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], out_png: str | Path,
                   title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted).

    Beyond :data:`MAX_CONFUSION_CLASSES` classes (a figure growing with classes squared took 6 GB at 250
    classes) only the rows and columns of the classes with the lowest accuracy are drawn.
    """
    cm = np.asarray(confusion, dtype=float)
    names = [_printable(c) for c in class_names]
    if len(names) > MAX_CONFUSION_CLASSES:
        accuracy = np.diag(cm) / np.clip(cm.sum(1), 1, None)
        keep = np.sort(np.argsort(accuracy, kind="stable")[:MAX_CONFUSION_CLASSES])
        cm = cm[np.ix_(keep, keep)]
        names = [names[i] for i in keep]
        title = f"{title}\n({MAX_CONFUSION_CLASSES} lowest-accuracy of {len(class_names)} classes; all in eval.json)"
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    n = len(names)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title=_printable(title))
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out_png)


def label_points(ax: plt.Axes, points: Sequence[tuple[float, float, str]]) -> None:
    """Label scatter points so that no two labels overlap (adjustText moves them, with a leader line)."""
    texts = [ax.text(x, y, label, fontsize=7) for x, y, label in points]
    if len(texts) > 1:
        from adjustText import adjust_text

        adjust_text(texts, ax=ax, arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5),
                    expand=(1.2, 1.4), ensure_inside_axes=True)


def plot_bench(rows: Sequence, path: str | Path) -> Path:
    """Latency vs MACs (each model labelled once, at its fastest backend) and, for trained runs,
    accuracy vs latency (``mobilecnn bench``)."""
    timed = [r for r in rows if r.median_ms is not None]
    has_acc = any(r.accuracy is not None for r in timed)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(13 if has_acc else 7.5, 5.5), squeeze=False)
    ax = axes[0][0]
    for backend in sorted({r.backend for r in timed}):
        sel = [r for r in timed if r.backend == backend]
        ax.scatter([r.macs / 1e6 for r in sel], [r.median_ms for r in sel], label=backend, s=28)
    fastest: dict[str, Any] = {}
    for r in timed:
        if r.model not in fastest or r.median_ms < fastest[r.model].median_ms:
            fastest[r.model] = r
    label_points(ax, [(r.macs / 1e6, r.median_ms, r.model.replace("torchvision.", "tv.")) for r in fastest.values()])
    ax.set(xlabel="MACs per image (millions)", ylabel="median latency per batch (ms)", title="latency vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if has_acc:
        ax2 = axes[0][1]
        points = []
        for backend in sorted({r.backend for r in timed if r.accuracy is not None}):
            sel = [r for r in timed if r.backend == backend and r.accuracy is not None]
            ax2.scatter([r.median_ms for r in sel], [r.accuracy for r in sel], label=backend, s=28)
        for r in fastest.values():
            if r.accuracy is not None:
                points.append((r.median_ms, r.accuracy, r.model))
        label_points(ax2, points)
        ax2.set(xlabel="median latency (ms)", ylabel="top-1 accuracy (%)", title="accuracy vs latency")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_reproduce(rows: Sequence, out_dir: str | Path) -> dict[str, Path]:
    """Accuracy vs MACs, accuracy vs latency, and the Table 3 shuffle ablation (``mobilecnn reproduce``)."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}

    def family(r) -> str:
        return "MobileNet V1" if r.model.startswith("mobilenet_v1") else (
            "MobileNetV2" if r.model.startswith("mobilenet_v2") else "ShuffleNet v1")

    colors = {"MobileNet V1": "tab:blue", "MobileNetV2": "tab:green", "ShuffleNet v1": "tab:red"}
    for key, xattr, xlabel in (("accuracy_vs_macs", "macs_32", "MACs at 32 px (M)"),
                               ("accuracy_vs_latency", "latency_ms", "latency, batch 1, 1 thread (ms)")):
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        points = []
        for r in rows:
            if not r.shuffle or getattr(r, xattr) is None:
                continue
            x = getattr(r, xattr) / (1e6 if xattr == "macs_32" else 1)
            ax.errorbar(x, r.mean, yerr=r.std, fmt="o", color=colors[family(r)], capsize=3)
            points.append((x, r.mean, r.model.replace("shufflenet_v1_", "sn_").replace("mobilenet_", "mn")))
        label_points(ax, points)
        for fam, c in colors.items():
            ax.scatter([], [], color=c, label=fam)
        ax.set(xlabel=xlabel, ylabel="Fashion-MNIST top-1 (%)")
        if points:  # a log axis without data cannot be drawn: no model was timed when latency failed everywhere
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no model measured", ha="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths[key] = _save(fig, out / f"{key}.png")
    found = [(r, next((o for o in rows if o.model == r.model and not o.shuffle), None)) for r in rows if r.shuffle]
    pairs = [(a, b) for a, b in found if b is not None]
    if pairs:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], [a.mean for a, _ in pairs], 0.4, yerr=[a.std for a, _ in pairs],
               label="with shuffle")
        ax.bar([x + 0.2 for x in xs], [b.mean for _, b in pairs], 0.4, yerr=[b.std for _, b in pairs],
               label="without shuffle")
        ax.set_xticks(list(xs), [a.model.replace("shufflenet_v1_", "") for a, _ in pairs])
        lo = min(min(a.mean, b.mean) for a, b in pairs)
        ax.set(ylabel="top-1 (%)", title="Table 3 ablation on Fashion-MNIST", ylim=(max(0, lo - 5), None))
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        paths["table3_ablation"] = _save(fig, out / "table3_ablation.png")
    return paths


def plot_curves(curves: dict[str, list[list[list[float]]]], panels: dict[str, tuple[str, Sequence[str]]],
                out_png: str | Path, title: str) -> Path:
    """Top-1 against training step, one panel per entry of ``panels`` (its title, the variants it shows): each
    variant's seeds (``curves[variant]``: a list of ``[step, top1]`` points per seed) thin, their mean bold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (key, (panel_title, variants)) in zip(axes[0], panels.items()):
        for i, variant in enumerate(variants):
            color = f"C{i}"
            runs = [r for r in curves.get(variant, []) if r]
            for run in runs:
                ax.plot([p[0] for p in run], [p[1] for p in run], color=color, alpha=0.3, lw=0.8)
            if runs and all(len(r) == len(runs[0]) for r in runs):
                mean = np.mean([[p[1] for p in r] for r in runs], axis=0)
                ax.plot([p[0] for p in runs[0]], mean, "o-", color=color, lw=2, label=variant)
        ax.set(xlabel="training step", ylabel="top-1 (%)", title=f"{key}: {panel_title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def plot_per_class_iou(per_class_iou: Sequence[float | None], class_names: Sequence[str], out_png: str | Path,
                       title: str = "per-class IoU", xlabel: str = "IoU") -> Path:
    """Horizontal bars, one per class (first class on top); a class with no IoU (``None``: absent from both
    prediction and ground truth; or NaN) is shown as "n/a"."""
    if len(per_class_iou) != len(class_names):
        raise ValueError(f"{len(per_class_iou)} IoU values for {len(class_names)} class names")
    n = len(class_names)
    known = [None if v is None or not np.isfinite(float(v)) else float(v) for v in per_class_iou]
    values = [0.0 if v is None else v for v in known]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.3 * max(n, 1)))
    ys = list(range(n))
    ax.barh(ys, values, color="tab:blue", height=0.7)
    for y, v in zip(ys, known):
        ax.text(0.01 if v is None else min(v, 1.0) + 0.01, y, "n/a" if v is None else f"{v:.3f}",
                va="center", fontsize=7, color="0.4" if v is None else "black")
    ax.set_yticks(ys, [_printable(c) for c in class_names], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.12), xlabel=xlabel, title=_printable(title))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, out_png)


#: Classes named in an overlay's legend at most (the most frequent; the rest are counted in one line).
MAX_LEGEND_ROWS = 40


def _legend_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's own font: wide Unicode coverage) at ``size`` px, else Pillow's default."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ValueError):
        return ImageFont.load_default(size)


def _blend(image: np.ndarray, mask: np.ndarray, palette: Sequence[int], alpha: float) -> Image.Image:
    """``image`` with each non-zero class of ``mask`` blended in its palette colour (class 0 untouched)."""
    base = Image.fromarray(np.ascontiguousarray(image))
    colours = Image.fromarray(mask).convert("L")
    colours.putpalette(list(palette))
    tinted = Image.blend(base, colours.convert("RGB"), alpha)
    return Image.composite(tinted, base, Image.fromarray(((mask != 0) * 255).astype(np.uint8)))


def _legend_rows(mask: np.ndarray, class_names: Sequence[str]) -> list[tuple[int, str]]:
    """``(class, "name  12.3%")`` of the classes present, most pixels first, at most :data:`MAX_LEGEND_ROWS`
    (then one ``(-1, "+ k more classes")`` row)."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names)).astype(np.float64)
    share = counts / max(mask.size, 1)
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    rows = [(c, f"{_printable(class_names[c]) if c < len(class_names) else str(c)}  {100 * share[c]:.1f}%")
            for c in present[:MAX_LEGEND_ROWS]]
    if len(present) > MAX_LEGEND_ROWS:
        rows.append((-1, f"+ {len(present) - MAX_LEGEND_ROWS} more classes"))
    return rows


def save_overlay_png(image: np.ndarray, mask: np.ndarray, palette: Sequence[int], class_names: Sequence[str],
                     out_png: str | Path, alpha: float = 0.5) -> Path:
    """``image`` (uint8 H, W, 3) with the classes of ``mask`` (uint8 H, W: class index per pixel) blended in
    their ``palette`` colours (768 values: 256 RGB triples; class 0, the background, is left as is), and
    beside it a legend: each class present, its colour patch and its share of the pixels.

    The picture keeps the image's pixels (H x W at the top left); the legend adds columns on the right (and
    rows at the bottom when it is taller than the image)."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be uint8 {image.shape[:2]}, got {mask.dtype} {mask.shape}")
    if len(palette) != 768:
        raise ValueError(f"palette must hold 768 values (256 RGB triples), got {len(palette)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = mask.shape
    rows = _legend_rows(mask, class_names)
    size = int(np.clip(round(h / 30), 11, 40))
    font = _legend_font(size)
    pad, line = max(4, size // 2), int(size * 1.5)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(probe.textlength(text, font=font)) for _, text in rows), default=0)
    legend_w = 3 * pad + size + text_w
    canvas = Image.new("RGB", (w + legend_w, max(h, 2 * pad + line * len(rows))), "white")
    canvas.paste(_blend(image, mask, palette, alpha), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (c, text) in enumerate(rows):
        y = pad + i * line
        if c >= 0:
            colour = tuple(int(v) for v in palette[3 * c:3 * c + 3])
            draw.rectangle([w + pad, y, w + pad + size, y + size], fill=colour, outline=(96, 96, 96))
        draw.text((w + 2 * pad + size, y), text, fill=(0, 0, 0), font=font)
    return atomic_write(out_png, lambda tmp: canvas.save(tmp, format="PNG"))
