"""The set-inclusion task of paper section 3.1 / appendix D, generated from a seed.

Each variable (a random 3-letter string) stands for an integer in 0..98. A definition states it,
``define1 abc % 42``; a QA pair asks whether the variable's number is in a list of 8 numbers,
``abc % 86 97 48 19 16 38 63 87 = true``. Subsets (fractions of variables):

- qd1consis: QA pairs in training + ``define1`` definitions naming the right number;
- qd2incons: QA pairs in training + ``define2`` definitions naming a wrong number;
- d1consis / d2consis / d3consis: no QA in training, only consistent definitions with tag 1 / 2 / 3
  (stage 2; tag 3 never appears in stage 1).

Every variable gets ``train_questions`` training and ``test_questions`` test questions, half of each
true, all lists distinct, so no test question is ever seen in training. Inconsistent definitions name
a number drawn uniformly from the numbers that are *not* the variable's own (always wrong).

X2 re-split (the authors' ``seed_stage2``): with ``x2_seed`` given, the X2 variables (those of
d1consis / d2consis / d3consis), in variable order, are shuffled by ``x2_seed`` alone and cut into
the three subsets again; every variable, number, question and the X1 subsets stay those of ``seed``.
A stage-2 seed thus decides only which X2 variables get which define tag.

The same seed gives the same dataset, word for word. Generation is vectorized with NumPy: the paper's
8000 variables take well under a second.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

from metaocl.configs.set_inclusion import SetInclusionData

STAGE1_SUBSETS = ("qd1consis", "qd2incons")
STAGE2_SUBSETS = ("d1consis", "d2consis", "d3consis")
SUBSETS = STAGE1_SUBSETS + STAGE2_SUBSETS
TAG_OF = {"qd1consis": "define1", "qd2incons": "define2", "d1consis": "define1", "d2consis": "define2", "d3consis": "define3"}
SPECIAL = ["<pad>", "<eos>", "<unk>"]
KEYWORDS = ["define1", "define2", "define3", "%", "=", "true", "false"]


@dataclass
class Question:
    words: list[str]  # "abc % 1 2 ... 8 = true"
    label: bool

    @property
    def prompt(self) -> list[str]:
        return self.words[:-1]  # up to and including "="


@dataclass
class SetInclusionDataset:
    """Everything one trial trains and tests on, as words; :mod:`metaocl.engine.set_inclusion` tokenizes."""

    numbers: dict[str, int]  # variable -> its integer
    subsets: dict[str, list[str]]  # subset -> variables
    definitions: dict[str, list[list[str]]]  # subset -> definition word lists (one per variable)
    train_qa: dict[str, list[Question]]  # subset -> training questions (qd subsets only)
    test_qa: dict[str, list[Question]]  # subset -> test questions (every non-empty subset)
    max_number: int
    vocab: list[str] = field(default_factory=list)

    def stage_examples(self, stage: int, joint: bool = False) -> list[list[str]]:
        """Training word lists of a stage: 1 = X1 definitions + QA, 2 = X2 definitions."""
        stage1 = [d for s in STAGE1_SUBSETS for d in self.definitions.get(s, [])]
        stage1 += [q.words for s in STAGE1_SUBSETS for q in self.train_qa.get(s, [])]
        stage2 = [d for s in STAGE2_SUBSETS for d in self.definitions.get(s, [])]
        if joint:
            return stage1 + stage2 if stage == 1 else []
        return stage1 if stage == 1 else stage2


def _random_variables(rng: np.random.Generator, n: int, length: int, reserved: set[str]) -> list[str]:
    letters = np.array(list(string.ascii_lowercase))
    out: list[str] = []
    seen = set(reserved)
    while len(out) < n:
        draws = rng.integers(0, 26, size=(2 * (n - len(out)) + 8, length))
        for row in draws:
            word = "".join(letters[row])
            if word not in seen:
                seen.add(word)
                out.append(word)
                if len(out) == n:
                    break
    return out


def _other_numbers(rng: np.random.Generator, own: np.ndarray, k: int, max_number: int) -> np.ndarray:
    """``k`` distinct numbers per row, none equal to that row's ``own`` number (shape [n, k])."""
    n = len(own)
    picks = np.argsort(rng.random((n, max_number)), axis=1)[:, :k]  # distinct in 0..max_number-1
    return picks + (picks >= own[:, None])  # skip over own: 0..max_number without own


def _questions(rng: np.random.Generator, own: np.ndarray, n_q: int, cfg: SetInclusionData) -> np.ndarray:
    """[n_vars, n_q, list_length] number lists; the first half contain ``own``, the second half don't."""
    n, k = len(own), cfg.list_length
    half = n_q // 2
    lists = np.empty((n, n_q, k), dtype=np.int64)
    for j in range(n_q):
        if j < half:  # own number plus k-1 others, shuffled within the row
            row = np.concatenate([own[:, None], _other_numbers(rng, own, k - 1, cfg.max_number)], axis=1)
            lists[:, j] = np.take_along_axis(row, np.argsort(rng.random((n, k)), axis=1), axis=1)
        else:
            lists[:, j] = _other_numbers(rng, own, k, cfg.max_number)
    return lists


def _qa(var: str, numbers: np.ndarray, label: bool) -> Question:
    return Question([var, "%", *map(str, numbers.tolist()), "=", "true" if label else "false"], label)


def generate(cfg: SetInclusionData, seed: int, x2_seed: int | None = None) -> SetInclusionDataset:
    """Build the whole dataset of one trial from ``seed``; ``x2_seed`` re-splits X2 (module docstring;
    None: the split of ``seed``'s one permutation, as before re-splitting existed)."""
    rng = np.random.default_rng(seed)
    numbers_vocab = [str(i) for i in range(cfg.max_number + 1)]
    variables = _random_variables(rng, cfg.n_variables, cfg.var_length, set(KEYWORDS) | set(numbers_vocab))
    own = rng.integers(0, cfg.max_number + 1, size=cfg.n_variables)
    n_q = cfg.train_questions + cfg.test_questions
    lists = _questions(rng, own, n_q, cfg)
    # train/test: the first train_questions/2 of each half go to training
    half, tr_half = n_q // 2, cfg.train_questions // 2
    train_idx = list(range(tr_half)) + list(range(half, half + tr_half))
    test_idx = [j for j in range(n_q) if j not in train_idx]

    fractions = {s: getattr(cfg, s) for s in SUBSETS}
    counts = {s: int(round(f * cfg.n_variables)) for s, f in fractions.items()}
    order = rng.permutation(cfg.n_variables)
    subsets: dict[str, list[int]] = {}
    start = 0
    for s in SUBSETS:
        subsets[s] = sorted(order[start : start + counts[s]].tolist())
        start += counts[s]
    if x2_seed is not None:
        _resplit_x2(subsets, x2_seed)
    wrong = _other_numbers(rng, own, 1, cfg.max_number)[:, 0]

    definitions, train_qa, test_qa = {}, {}, {}
    for s, idxs in subsets.items():
        if not idxs:
            continue
        shown = wrong if s == "qd2incons" else own
        definitions[s] = [[TAG_OF[s], variables[i], "%", str(int(shown[i]))] for i in idxs]
        test_qa[s] = [_qa(variables[i], lists[i, j], j < half) for i in idxs for j in test_idx]
        if s in STAGE1_SUBSETS:
            train_qa[s] = [_qa(variables[i], lists[i, j], j < half) for i in idxs for j in train_idx]
    _ensure_disjoint(train_qa, test_qa)
    vocab = SPECIAL + KEYWORDS + numbers_vocab + variables
    if cfg.vocabulary == "all_names":  # the authors' tokenizer: every name, letters, numbers to 99 (unused rows)
        vocab += _unused_names(cfg, set(vocab))
    return SetInclusionDataset(
        numbers={variables[i]: int(own[i]) for i in range(cfg.n_variables)},
        subsets={s: [variables[i] for i in idxs] for s, idxs in subsets.items()},
        definitions=definitions,
        train_qa=train_qa,
        test_qa=test_qa,
        max_number=cfg.max_number,
        vocab=vocab,
    )


def _unused_names(cfg: SetInclusionData, used: set[str]) -> list[str]:
    """The tokens of the authors' tokenizer (``src/lm_training_utils.py`` ``create_tokenizer``) that the
    data never uses, in their order: numbers to 99, the 26 letters, every ``var_length``-letter name."""
    import itertools

    letters = string.ascii_lowercase
    extra = [str(i) for i in range(100)] + list(letters)
    extra += ["".join(t) for t in itertools.product(letters, repeat=cfg.var_length)]
    return [w for w in extra if w not in used]


def subsample(questions: list[Question], k: int | None, seed: int) -> list[Question]:
    """At most ``k`` of ``questions``, order kept: the authors' ``enforce_max_data_size``
    (``sorted(random.Random(seed).sample(range(n), k))``, a fresh generator per split, so equal-size
    splits keep the same positions)."""
    import random

    if k is None or len(questions) <= k:
        return questions
    return [questions[i] for i in sorted(random.Random(seed).sample(range(len(questions)), k))]


def _resplit_x2(subsets: dict[str, list[int]], x2_seed: int) -> None:
    """Re-assign the X2 variables to d1/d2/d3consis (sizes kept) from ``x2_seed`` alone: the authors'
    ``random.Random(seed_stage2).shuffle(sorted(stage2 indices))`` then a cut in subset order
    (``numeric_experiment.py`` ``make_num_selection_dataset``). Draws nothing from the dataset's RNG."""
    import random

    x2 = sorted(i for s in STAGE2_SUBSETS for i in subsets[s])
    random.Random(x2_seed).shuffle(x2)
    start = 0
    for s in STAGE2_SUBSETS:
        n = len(subsets[s])
        subsets[s] = sorted(x2[start : start + n])
        start += n


def _ensure_disjoint(train_qa: dict[str, list[Question]], test_qa: dict[str, list[Question]]) -> None:
    """Drop any test question whose exact text is also a training question.

    At the paper's size (lists of 8 from 0..98) two random lists coincide with probability ~1e-11, so
    this practically never fires there; at the quickstart's lists of 4 from 0..19 it drops a few test
    questions in ten thousand. Either way it turns "no test question in training" into a guarantee.
    """
    seen = {tuple(q.words[:-1]) for qs in train_qa.values() for q in qs}
    for s, qs in test_qa.items():
        test_qa[s] = [q for q in qs if tuple(q.words[:-1]) not in seen]
