"""Chunked bags (``--chunk_size N``): instance baselines trained and evaluated on random chunks of a slide.

A slide with tens of thousands of patches makes one very large bag; with ``--chunk_size N`` each slide's
instances (the model's flat bag: real 20x patches, or 5x patches for the ``<name>_5x`` types) are
shuffled and cut into ``ceil(n / N)`` chunks of near-equal size (sizes differ by at most one, none above
``N``: no one-instance remainder chunk), and every chunk is a training bag with the slide's label. Only
models that take a flat bag can be chunked (registry fact ``ModelInfo.hierarchy`` false: ABMIL,
TransMIL, LiteMIL, mean/max pooling, MIL_fc and their ``_5x`` forms); HiVE-MIL and the other
hierarchical models need the whole slide's 5x/20x graph and are refused (:func:`check_chunkable`).

Training (:func:`train_chunked_epoch`): the slides are visited in the released order (the draws of
:class:`training.loop.ReleasedLoaderDraws` are unchanged); the chunks of one slide follow each other in
shuffled order, one optimiser step per chunk. Seeding: at the start of every training epoch one int64 is
drawn from torch's global generator -- the run's RNG, reset by ``--seed`` at every fold -- and seeds the
generator of that epoch's permutations, so a run reproduces exactly and every epoch cuts new chunks.

Evaluation (:func:`evaluate_chunked`): every slide is cut the same way with a generator seeded from
``--seed`` and the slide id (no draw from the run's RNG, so validation does not move training's draws,
and a slide's chunks are the same in every epoch). The slide's class probabilities are the mean of its
chunks' softmax probabilities weighted by chunk size (every instance counts once; with near-equal sizes
this is nearly the plain mean). Why the mean of probabilities: every chunk is a random sample of the
slide trained to predict the slide's label, so the chunk predictions are an ensemble over subsamples,
and averaging probabilities is the usual, bounded way to combine an ensemble (one overconfident chunk
cannot dominate as it can with summed logits; a max would favour whichever class fires on any chunk).
The slide's loss is the bag loss on the log of that mean probability. Slide-level ``acc``/``auc``/``f1``
are computed from these probabilities as for whole slides; ``chunk_acc`` is the fraction of all chunks
of the evaluated slides whose own prediction is the slide's label (results.csv: ``test_chunk_acc``,
``val_chunk_acc`` beside the usual columns).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from datasets.bag import SlideBag
from models.baselines.common import bag_instances
from models.passes import evaluating
from models.registry import model_info
from training.loop import check_finite_logits
from utils.amp import grad_scaler
from utils.errors import InputError
from utils.metrics import classification_metrics
from utils.prefetch import prefetch
from utils.run_logging import bar

CHUNK_METRIC_COLUMNS = ("test_chunk_acc", "val_chunk_acc")


def check_chunkable(model_type: str, chunk_size: int) -> None:
    """One :class:`InputError` line when ``--chunk_size`` is set for a model that needs the whole slide."""
    if chunk_size and model_info(model_type).hierarchy:
        raise InputError(
            f"--chunk_size: --model_type {model_type} needs the whole slide (its 5x/20x graph), so it cannot "
            "train on chunks; use an instance baseline (ABMIL, TransMIL, LiteMIL, mean_pool, max_pool, MIL_fc)"
        )


def chunk_positions(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation of ``0..n-1`` cut into ``ceil(n / size)`` parts of near-equal size (each at
    most ``size``; none when ``n`` is 0)."""
    if n == 0:
        return []
    perm = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(perm, math.ceil(n / size)))


def chunk_bags(bag: SlideBag, size: int, generator: torch.Generator, mag: str = "20x") -> Iterator[SlideBag]:
    """``bag``'s flat instances at ``mag`` cut into chunks (:func:`chunk_positions`), each a bag of its
    own with the slide's id and label: ``x5`` the chunk [n, D] and ``x20`` the same rows as one real child
    each, so an instance baseline of either magnification reads exactly the chunk. The chunks are made
    one at a time as they are consumed (only one chunk's copy of the features is alive at once)."""
    x = bag_instances(bag, mag)
    for rows in chunk_positions(int(x.shape[0]), size, generator):
        part = x[rows.to(x.device)]
        yield SlideBag(
            slide_id=bag.slide_id,
            x5=part,
            x20=part.unsqueeze(1),
            child_mask=torch.ones(part.shape[0], 1, dtype=torch.bool, device=part.device),
            label=bag.label,
        )


def epoch_generator() -> torch.Generator:
    """The generator of one training epoch's chunks, seeded by one int64 drawn from torch's global
    generator (the run's RNG, reset by ``--seed`` at the start of every fold)."""
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return torch.Generator().manual_seed(seed)


def slide_generator(seed: int, slide_id: str) -> torch.Generator:
    """The generator of a slide's evaluation chunks: from ``--seed`` and the slide id only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(slide_id.encode())) % 2**63)


def train_chunked_epoch(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    options,
    chunk_size: int,
    step: Callable,
    mag: str = "20x",
    desc: str = "train",
) -> tuple[float, float]:
    """One epoch over the slides ``indices`` (in visiting order), one optimiser step per chunk
    (``step(model, bag, optimizer, loss_fn, scaler, device, amp, step, item) -> (loss, correct)``, the
    whole-slide step, which stops training at a loss that is not finite); returns the chunk-level mean loss and training error."""
    model.train()
    generator = epoch_generator()
    scaler = grad_scaler(options.amp, device)
    total_loss, wrong, steps = 0.0, 0, 0
    bags = prefetch(load, indices, depth=options.prefetch_depth, workers=options.workers)
    for bag in bar(bags, total=len(indices), desc=desc, enabled=options.progress, leave=False):
        for chunk in chunk_bags(bag.to(device), chunk_size, generator, mag):
            loss, correct = step(
                model, chunk, optimizer, loss_fn, scaler, device, options.amp, steps,
                f"slide {bag.slide_id}, chunk of {chunk.num_5x}",
            )  # fmt: skip
            total_loss += loss
            wrong += int(not correct)
            steps += 1
    n = max(steps, 1)
    return total_loss / n, wrong / n


def aggregate_chunks(chunk_probs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """A slide's class probabilities: the mean of its chunks' probabilities [k, C] weighted by their
    sizes [k] (see the module docstring for why)."""
    weights = np.asarray(sizes, dtype=np.float64)
    return (np.asarray(chunk_probs, dtype=np.float64) * weights[:, None]).sum(axis=0) / weights.sum()


def evaluate_chunked(
    model: nn.Module,
    load: Callable[[int], SlideBag],
    indices: Sequence[int],
    loss_fn: nn.Module,
    device: torch.device,
    num_classes: int,
    chunk_size: int,
    seed: int,
    *,
    mag: str = "20x",
    prefetch_depth: int = 2,
    workers: int = 1,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "off",
) -> tuple[list[str], np.ndarray, np.ndarray, float, dict[str, float]]:
    """Slide-level ``(slide_ids, labels [n], probabilities [n, C], mean loss, metrics)`` from chunk
    predictions (:func:`aggregate_chunks`), ``chunk_acc`` among the metrics."""
    slide_ids: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    total_loss, chunks_right, chunks_seen = 0.0, 0, 0
    with evaluating(model, device, amp):
        bags = prefetch(load, indices, depth=prefetch_depth, workers=workers)
        for bag in bar(bags, total=len(indices), desc=desc, enabled=progress, leave=False):
            bag = bag.to(device)
            chunks = list(chunk_bags(bag, chunk_size, slide_generator(seed, bag.slide_id), mag))
            if not chunks:  # an empty slide: one pass over the empty bag, as a whole-slide run would do
                chunks = [bag]
            chunk_logits = np.stack([model(c).logits.float().reshape(-1).cpu().numpy() for c in chunks])
            check_finite_logits(chunk_logits, desc, f"slide {bag.slide_id}")
            shifted = np.exp(chunk_logits - chunk_logits.max(axis=1, keepdims=True))
            chunk_probs = shifted / shifted.sum(axis=1, keepdims=True)
            sizes = np.array([max(c.num_5x, 1) for c in chunks])
            slide_prob = aggregate_chunks(chunk_probs, sizes)
            target = torch.tensor([bag.label], device=device)
            log_prob = torch.as_tensor(slide_prob, dtype=torch.float32, device=device).clamp_min(1e-12).log()
            total_loss += float(loss_fn(log_prob.unsqueeze(0), target))
            chunks_right += int((chunk_probs.argmax(axis=1) == bag.label).sum())
            chunks_seen += len(chunks)
            probs.append(slide_prob)
            labels.append(int(bag.label))
            slide_ids.append(bag.slide_id)
    label_arr = np.asarray(labels, dtype=np.int64)
    prob_arr = np.stack(probs) if probs else np.zeros((0, num_classes))
    metrics = classification_metrics(label_arr, prob_arr)
    metrics["chunk_acc"] = chunks_right / chunks_seen if chunks_seen else math.nan
    loss = total_loss / len(labels) if labels else math.nan
    return slide_ids, label_arr, prob_arr, loss, metrics
