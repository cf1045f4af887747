"""MNIST grid QA (paper section 3.2, appendix E): variables, entities, tags and batches on the device.

The task, as the paper describes it and as implemented here:

- A *variable* is a grid (3x3) of digit labels; its image is a grid of digit images with those
  labels, each image drawn uniformly from the images of that label -- from the train split in
  training, from the test split in evaluation -- *every time* the variable is shown.
- An *entity* is a grid of binary labels (A = 0, B = 1). Each pair's entity grid is uniform at random.
- A *definition* shows the variable's grid plus the define tag: a row of black/white squares
  (``tag_square`` = 2 pixels a side, one uniformly random bit pattern per tag, fixed by the seed) at
  the top of the image. Its target is the whole entity grid -- the pair's own entity for consistent
  groups, and for qd2incons the entity of another pair of the same group (a derangement, as in the
  language-model subsets).
- A *QA example* shows the variable's grid with one cell highlighted by a ``border`` = 1-pixel frame.
  Its target is 2 ("no answer") in every cell except the highlighted one, which holds the entity's
  label there. The model predicts every cell (3 classes).
- Sampling one training example (paper E.1): 1) a group, each with equal probability; 2) definition
  with probability ``p_def`` if the group has QA and definitions -- groups with definitions only
  (d1consis, d2consis) always give definitions, since a QA example would leak the very answers the
  experiment measures; 3) a pair of the group uniformly; 4) for QA, a cell uniformly among all cells
  but the pair's held-out cell (one per variable, uniform at random, fixed by the seed).

Layout of one image (uint8 canvas, 0 = black): rows ``[0, tag_square)`` hold the tag row (blank for
QA); below it each digit sits inside a ``border``-pixel blank ring, where the highlight frame is
drawn, so the frame never covers digit pixels. The canvas is padded right/bottom to a multiple of 32,
ConvNeXt's total stride: without it the stride-2 downsampling layers would drop the bottom rows --
and with them the bottom cells' highlight. MNIST 28x28 digits give a 96x96 canvas.

Speed: every split's digit images live on the training device as one uint8 tensor sorted by label.
A batch is built by pure tensor indexing -- label grid -> random image index per cell -> one strided
copy of the gathered digits into a zero canvas -> one ``scatter_`` of the few white pixels of the
example's overlay (highlight frame or tag row, precomputed as flat pixel indices) -> one
uint8 -> float pass -- with no per-image Python work and no DataLoader. Randomness comes from a
``torch.Generator`` on the device, so a batch never waits on the host (``bench/mnist.py`` compares
this with a per-image Python loop: ~4x faster on one CPU thread at 96x96, ~9x at 32x32).

Seeds: the world (variables, entities, held-out cells, inconsistent assignments) and the tag patterns
come from separate NumPy streams of the config seed, so tag patterns depend on nothing but the seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from metaocl.config import ConfigError
from metaocl.configs.mnist import MnistData, group_sizes

ANSWER_A, ANSWER_B, NO_ANSWER = 0, 1, 2
N_CLASSES = 3
CANVAS_MULTIPLE = 32  # ConvNeXt's total stride (stem 4 x three 2x downsamplings)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    has_qa: bool  # QA examples in training
    tag: int  # 0 = tag 1 ("reliable"), 1 = tag 2
    consistent: bool  # definitions show the pair's own entity


GROUP_SPECS = {
    "qd1consis": GroupSpec("qd1consis", has_qa=True, tag=0, consistent=True),
    "qd2incons": GroupSpec("qd2incons", has_qa=True, tag=1, consistent=False),
    "d1consis": GroupSpec("d1consis", has_qa=False, tag=0, consistent=True),
    "d2consis": GroupSpec("d2consis", has_qa=False, tag=1, consistent=True),
}
N_TAGS = 2


class MnistNotFoundError(ConfigError):
    """MNIST is not in the data cache (and we never download at run time)."""


# ----------------------------------------------------------------------------------------------
# Digit sources
# ----------------------------------------------------------------------------------------------
def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8/float [N, h, w] in 0..255 -> uint8 [N, size, size] (antialiased bilinear)."""
    if images.shape[-1] == size and images.dtype == torch.uint8:
        return images.contiguous()
    x = images.float().unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.squeeze(1).round().clamp(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=8)
def load_digits(source: str, split: str, digit_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit images (uint8 ``[N, s, s]``, white on black) and labels (int64 ``[N]``) on the CPU.

    ``mnist``: torchvision's MNIST files under :func:`metaocl.data.data_home`; missing files raise
    :class:`MnistNotFoundError`. ``sklearn_digits``: scikit-learn's bundled 1797 8x8 digits, values
    scaled 0..16 -> 0..255 and resized; the split is deterministic and seed-independent: within each
    label, in dataset order, every fifth image (positions 4, 9, ...) is test, the rest train (80/20).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if source == "mnist":
        from torchvision.datasets import MNIST

        from metaocl.data import data_home

        root = data_home()
        try:
            ds = MNIST(root=str(root), train=split == "train", download=False)
        except RuntimeError:
            raise MnistNotFoundError(
                f"data.digits: MNIST not found under {root}; run `metaocl data download mnist` "
                "or set data.digits: sklearn_digits"
            ) from None
        images, labels = ds.data, ds.targets.long()
    elif source == "sklearn_digits":
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        images = torch.from_numpy(bunch.images * (255.0 / 16.0)).float()
        labels = torch.from_numpy(bunch.target).long()
        is_test = torch.zeros(len(labels), dtype=torch.bool)
        for d in range(10):
            idx = (labels == d).nonzero().squeeze(1)
            is_test[idx[4::5]] = True
        keep = is_test if split == "test" else ~is_test
        images, labels = images[keep], labels[keep]
    else:
        raise ConfigError(f"data.digits: unknown digit source {source!r}; use mnist or sklearn_digits")
    return _resize(images, digit_size), labels


class DigitBank:
    """One split's digits on the device, sorted by label, for O(1) sampling of an image per label."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str):
        order = torch.argsort(labels, stable=True)
        self.images = images[order].to(device)  # uint8 [N, s, s]
        self.labels = labels[order].to(device)
        counts = torch.bincount(labels, minlength=10)
        if (counts == 0).any():
            raise ConfigError(f"data.digits: labels {(counts == 0).nonzero().flatten().tolist()} have no images")
        self.count = counts.to(device)
        self.start = (torch.cumsum(counts, 0) - counts).to(device)

    def sample_index(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random image index (into ``self.images``) for every label in ``labels``."""
        u = torch.rand(labels.shape, device=labels.device, generator=generator)
        offset = (u * self.count[labels]).long().clamp_max_(self.count[labels] - 1)
        return self.start[labels] + offset


# ----------------------------------------------------------------------------------------------
# Layout, tags and overlays
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridLayout:
    grid: int
    digit: int
    border: int
    tag_square: int

    @property
    def cell(self) -> int:
        return self.digit + 2 * self.border

    @property
    def top(self) -> int:  # first row of the grid, below the tag row
        return self.tag_square

    @property
    def n_cells(self) -> int:
        return self.grid * self.grid

    @property
    def tag_bits(self) -> int:  # squares in the tag row: it spans the grid's width
        return (self.grid * self.cell) // self.tag_square

    @property
    def height(self) -> int:
        return _round_up(self.top + self.grid * self.cell, CANVAS_MULTIPLE)

    @property
    def width(self) -> int:
        return _round_up(self.grid * self.cell, CANVAS_MULTIPLE)

    def cell_box(self, cell: int) -> tuple[int, int]:
        """(row, col) of the top-left pixel of ``cell``'s ring (cells numbered row-major)."""
        r, c = divmod(cell, self.grid)
        return self.top + r * self.cell, c * self.cell

    def digit_box(self, cell: int) -> tuple[int, int]:
        r, c = self.cell_box(cell)
        return r + self.border, c + self.border


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def make_tag_patterns(seed: int, n_bits: int, n_tags: int = N_TAGS) -> np.ndarray:
    """``[n_tags, n_bits]`` 0/1 patterns, uniform at random from the seed alone; redrawn in the
    (rare) case of two equal patterns or an all-black one (which would look like no tag at all)."""
    rng = np.random.default_rng([seed, 1])
    while True:
        bits = rng.integers(0, 2, size=(n_tags, n_bits), dtype=np.uint8)
        if bits.any(axis=1).all() and len({b.tobytes() for b in bits}) == n_tags:
            return bits


def make_overlays(layout: GridLayout, tag_bits: np.ndarray) -> torch.Tensor:
    """uint8 ``[1 + n_cells + n_tags, H, W]``: index 0 blank, ``1 + c`` the highlight ring of cell
    ``c``, ``1 + n_cells + t`` the row of squares of tag ``t`` (batches use their white pixels'
    indices, :func:`overlay_pixel_index`)."""
    n = layout.n_cells
    out = torch.zeros(1 + n + len(tag_bits), layout.height, layout.width, dtype=torch.uint8)
    b, size = layout.border, layout.cell
    for c in range(n):
        r0, c0 = layout.cell_box(c)
        ring = out[1 + c, r0 : r0 + size, c0 : c0 + size]
        ring[:b, :] = 255
        ring[-b:, :] = 255
        ring[:, :b] = 255
        ring[:, -b:] = 255
    sq = layout.tag_square
    for t, bits in enumerate(tag_bits):
        for i, bit in enumerate(bits):
            if bit:
                out[1 + n + t, 0:sq, i * sq : (i + 1) * sq] = 255
    return out


def overlay_pixel_index(overlays: torch.Tensor) -> torch.Tensor:
    """int64 ``[n_overlays - 1, K]``: the flat pixel indices that overlay ``1 + i`` turns white,
    padded to a common length K with the index ``H * W`` (a scratch pixel past the image)."""
    n, H, W = overlays.shape
    lists = [torch.nonzero(overlays[i].flatten()).flatten() for i in range(1, n)]
    K = max(len(x) for x in lists)
    out = torch.full((n - 1, K), H * W, dtype=torch.long)
    for i, x in enumerate(lists):
        out[i, : len(x)] = x
    return out


# ----------------------------------------------------------------------------------------------
# The world: variables, entities, groups
# ----------------------------------------------------------------------------------------------
@dataclass
class World:
    """Every variable-entity pair, as NumPy arrays indexed by pair (pairs are contiguous per group)."""

    variables: np.ndarray  # int64 [P, C] digit labels
    entities: np.ndarray  # int64 [P, C] 0/1 labels (A/B)
    def_entities: np.ndarray  # int64 [P, C] what the pair's definition shows
    heldout: np.ndarray  # int64 [P] cell never asked in training QA
    group: np.ndarray  # int64 [P] index into groups
    groups: tuple[str, ...]  # group names with at least one pair, in MNIST_GROUPS order
    group_start: np.ndarray  # int64 [G]
    group_size: np.ndarray  # int64 [G]


def build_world(cfg: MnistData, seed: int) -> World:
    rng = np.random.default_rng([seed, 2])
    n_cells = cfg.grid_size**2
    sizes = {g: n for g, n in group_sizes(cfg).items() if n > 0}
    P = sum(sizes.values())
    # distinct variables: draw digit grids, redraw duplicates (rare for 3x3 = 10^9 grids)
    variables = rng.integers(0, 10, size=(P, n_cells))
    while True:
        _, first = np.unique(variables, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(P), first)
        if len(dup) == 0:
            break
        variables[dup] = rng.integers(0, 10, size=(len(dup), n_cells))
    entities = rng.integers(0, 2, size=(P, n_cells))
    heldout = rng.integers(0, n_cells, size=P)
    groups = tuple(sizes)
    group_size = np.array([sizes[g] for g in groups], dtype=np.int64)
    group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]]).astype(np.int64)
    group = np.repeat(np.arange(len(groups)), group_size)
    def_entities = entities.copy()
    for gi, g in enumerate(groups):
        if not GROUP_SPECS[g].consistent:
            s, n = group_start[gi], group_size[gi]
            def_entities[s : s + n] = entities[s + _derangement(n, rng)]
    return World(variables, entities, def_entities, heldout, group, groups, group_start, group_size)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2), by rejection."""
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
class Batch(NamedTuple):
    images: torch.Tensor  # float32 [B, 1, H, W] in [0, 1]
    targets: torch.Tensor  # int64 [B, C] in {0: A, 1: B, 2: no answer}
    pair: torch.Tensor  # int64 [B]
    group: torch.Tensor  # int64 [B] index into MnistGridTask.groups
    is_def: torch.Tensor  # bool [B]
    cell: torch.Tensor  # int64 [B] the highlighted cell of a QA example, -1 for definitions
    digit_index: torch.Tensor  # int64 [B, C] which image of the split's bank fills each cell


EVAL_KINDS = ("heldout", "all", "def")


class MnistGridTask:
    """Samples training batches and renders evaluation batches of the MNIST grid-QA task on ``device``."""

    def __init__(self, cfg: MnistData, seed: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.seed = seed
        self.device = torch.device(device)
        self.layout = GridLayout(cfg.grid_size, cfg.digit_size, cfg.border, cfg.tag_square)
        self.tag_bits = make_tag_patterns(seed, self.layout.tag_bits)
        self.world = build_world(cfg, seed)
        self.groups = self.world.groups
        self.banks = {split: DigitBank(*load_digits(cfg.digits, split, cfg.digit_size), self.device) for split in ("train", "test")}
        dev = self.device
        w = self.world
        self.variables = torch.as_tensor(w.variables, device=dev)
        self.entities = torch.as_tensor(w.entities, device=dev)
        self.def_entities = torch.as_tensor(w.def_entities, device=dev)
        self.heldout = torch.as_tensor(w.heldout, device=dev)
        self.pair_group = torch.as_tensor(w.group, device=dev)
        self.group_start = torch.as_tensor(w.group_start, device=dev)
        self.group_size = torch.as_tensor(w.group_size, device=dev)
        self.group_has_qa = torch.tensor([GROUP_SPECS[g].has_qa for g in self.groups], device=dev)
        self.pair_tag = torch.tensor([GROUP_SPECS[g].tag for g in self.groups], device=dev)[self.pair_group]
        if cfg.group_sampling == "uniform":
            probs = torch.ones(len(self.groups))
        else:
            probs = torch.as_tensor(w.group_size, dtype=torch.float)
        self.group_probs = (probs / probs.sum()).to(dev)
        self.overlays = make_overlays(self.layout, self.tag_bits)  # CPU, for reference and tests
        self.overlay_pixels = overlay_pixel_index(self.overlays).to(dev)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed * 1_000_003 + 3)

    @property
    def n_cells(self) -> int:
        return self.layout.n_cells

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 1, self.layout.height, self.layout.width

    # -- training ----------------------------------------------------------------------------
    def sample_train(self, batch_size: int) -> Batch:
        """A fresh training batch, sampled as in paper E.1 (see the module docstring)."""
        g, dev, C = self.generator, self.device, self.n_cells
        group = torch.multinomial(self.group_probs, batch_size, replacement=True, generator=g)
        u = torch.rand(batch_size, device=dev, generator=g)
        size = self.group_size[group]
        pair = self.group_start[group] + (u * size).long().clamp_max_(size - 1)
        coin = torch.rand(batch_size, device=dev, generator=g)
        is_def = ~self.group_has_qa[group] | (coin < self.cfg.p_def)
        if self.cfg.hold_out_cell:  # uniform over the C - 1 cells other than the held-out one
            r = torch.randint(0, C - 1, (batch_size,), device=dev, generator=g)
            cell = r + (r >= self.heldout[pair]).long()
        else:
            cell = torch.randint(0, C, (batch_size,), device=dev, generator=g)
        return self._render(pair, group, is_def, cell, "train", g)

    # -- evaluation --------------------------------------------------------------------------
    def eval_generator(self) -> torch.Generator:
        """A generator with a fixed seed: every evaluation renders the very same examples."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + 7)
        return g

    def eval_batch(self, group: str, kind: str, n: int, generator: torch.Generator, offset: int = 0) -> Batch:
        """``n`` test-split examples about the pairs of ``group`` (cycling through its pairs from
        ``offset``): ``heldout`` = QA on cells never asked in training QA (the held-out cell of a qd*
        pair; any cell of a d* pair, none of whose cells is ever asked), ``all`` = QA on any cell,
        ``def`` = the pair's definition."""
        if kind not in EVAL_KINDS:
            raise ValueError(f"kind must be one of {EVAL_KINDS}, got {kind!r}")
        gi = self.groups.index(group)
        dev, C = self.device, self.n_cells
        k = torch.arange(offset, offset + n, device=dev)
        pair = self.group_start[gi] + k % self.group_size[gi]
        group_idx = torch.full((n,), gi, device=dev)
        is_def = torch.full((n,), kind == "def", device=dev)
        cell = torch.randint(0, C, (n,), device=dev, generator=generator)
        if kind == "heldout" and GROUP_SPECS[group].has_qa and self.cfg.hold_out_cell:
            cell = self.heldout[pair]
        return self._render(pair, group_idx, is_def, cell, "test", generator)

    # -- rendering ---------------------------------------------------------------------------
    def _render(self, pair, group, is_def, cell, split: str, generator: torch.Generator) -> Batch:
        lay, bank = self.layout, self.banks[split]
        B, G, s, b, C = len(pair), lay.grid, lay.digit, lay.border, self.n_cells
        H, W = lay.height, lay.width
        digit_index = bank.sample_index(self.variables[pair], generator)  # [B, C]
        # one flat canvas per image plus one scratch pixel that absorbs the overlays' padding
        flat = torch.zeros(B, H * W + 1, dtype=torch.uint8, device=self.device)
        canvas = flat[:, : H * W].view(B, H, W)
        grid = canvas[:, lay.top : lay.top + G * lay.cell, : G * lay.cell].unflatten(1, (G, lay.cell)).unflatten(3, (G, lay.cell))
        # grid: [B, row, y, col, x]; digits land inside each cell's blank ring, in one strided copy
        digits = bank.images.view(len(bank.images), -1).index_select(0, digit_index.flatten())  # row copies: ~10x `[]`
        grid[:, :, b : b + s, :, b : b + s] = digits.view(B, G, G, s, s).permute(0, 1, 3, 2, 4)
        overlay = torch.where(is_def, C + self.pair_tag[pair], cell)  # ring of `cell`, or row of tag
        flat.scatter_(1, self.overlay_pixels[overlay], 255)  # only the few frame / tag pixels
        images = canvas.unsqueeze(1).float().mul_(1.0 / 255.0)  # [0, 1]; a mixed-dtype mul is ~25x slower on CPU

        qa_targets = torch.full((B, C), NO_ANSWER, device=self.device, dtype=torch.long)
        safe_cell = cell.clamp(min=0).unsqueeze(1)
        qa_targets.scatter_(1, safe_cell, self.entities[pair].gather(1, safe_cell))
        targets = torch.where(is_def.unsqueeze(1), self.def_entities[pair], qa_targets)
        cell = torch.where(is_def, torch.full_like(cell, -1), cell)
        return Batch(images, targets, pair, group, is_def, cell, digit_index)
