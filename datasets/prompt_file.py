"""Hierarchical text prompts: load, validate and render ``{class: {term: explanation}}`` files.

A prompt file (``text_prompt/HiVE_MIL/<LLM>/<task>.json``) holds, per class and in file order,
``n_coarse`` coarse (5x) entries followed by ``n_coarse * n_fine_per_coarse`` fine (20x) entries;
fine entries ``n_fine_per_coarse*j .. n_fine_per_coarse*j + n_fine_per_coarse - 1`` refine coarse
entry ``j``. These are the paper's T5 = 4 and T20 = 12 texts per class (method step 2: the prompt
learner splices context vectors into ``"<ctx tokens> <term> : <explanation>"``), and the fine->coarse
grouping is what the hierarchical text edges and HTCL (step 7) are built on.

Errors in the file are :class:`~utils.errors.InputError` (one line naming the file); softer problems
(duplicate explanations, terms shared across classes, prompts longer than a text tower's context)
are returned as warning lines.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.errors import InputError

Entry = tuple[str, str]  # (term, explanation)


def render_description(term: str, explanation: str) -> str:
    """The text of one prompt entry, ``"<term> : <explanation>"`` (released format)."""
    return f"{term} : {explanation}"


def with_context_placeholders(text: str, n_ctx: int, ctx_token: str = "X") -> str:
    """``"X X ... X <text>"``: ``n_ctx`` placeholder tokens that the prompt learner replaces by context
    vectors; with ``n_ctx == 0`` the text itself."""
    if n_ctx < 0:
        raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
    return " ".join([*([ctx_token] * n_ctx), text])


@dataclass(frozen=True)
class HierarchicalPrompts:
    """Validated prompts of one task.

    Attributes:
        classes: class names in task order.
        coarse: per class, the ``n_coarse`` coarse (5x) ``(term, explanation)`` entries.
        fine: per class, the ``n_coarse * n_fine_per_coarse`` fine (20x) entries; the j-th group of
            ``n_fine_per_coarse`` consecutive entries refines ``coarse[cls][j]``.
        n_coarse: coarse entries per class (4 in the paper).
        n_fine_per_coarse: fine entries per coarse entry (3 in the paper).
        path: where the prompts came from (a file, or a label such as ``"LLM reply"``).
    """

    classes: tuple[str, ...]
    coarse: dict[str, list[Entry]]
    fine: dict[str, list[Entry]]
    n_coarse: int
    n_fine_per_coarse: int
    path: Path | str

    @property
    def n_fine(self) -> int:
        return self.n_coarse * self.n_fine_per_coarse

    @property
    def n_per_class(self) -> int:
        return self.n_coarse + self.n_fine

    def entries(self, cls: str) -> list[Entry]:
        """All entries of ``cls``: coarse then fine, in file order."""
        self._require(cls)
        return [*self.coarse[cls], *self.fine[cls]]

    def descriptions(self, cls: str, scale: str = "all") -> list[str]:
        """Rendered entries of ``cls`` (:func:`render_description`): ``coarse``, ``fine`` or ``all`` (coarse first)."""
        self._require(cls)
        entries = {"coarse": self.coarse[cls], "fine": self.fine[cls], "all": self.entries(cls)}[scale]
        return [render_description(term, explanation) for term, explanation in entries]

    def fine_parent(self, fine_index: int) -> int:
        """Index of the coarse entry that fine entry ``fine_index`` (0-based among fine) refines."""
        return fine_index // self.n_fine_per_coarse

    def prompt_texts(self, cls: str, n_ctx: int, ctx_token: str = "X") -> list[str]:
        """Texts the prompt learner tokenizes: ``"X X ... X <term> : <explanation>"`` per entry.

        ``n_ctx`` placeholder tokens (later replaced by learned context vectors) precede each
        description; with ``n_ctx == 0`` there is no leading space.
        """
        return [with_context_placeholders(text, n_ctx, ctx_token) for text in self.descriptions(cls)]

    def to_json_dict(self) -> dict[str, dict[str, str]]:
        """The ``{class: {term: explanation}}`` form, classes and entries in order."""
        return {cls: dict(self.entries(cls)) for cls in self.classes}

    def _require(self, cls: str) -> None:
        if cls not in self.coarse:
            raise KeyError(
                f"class {cls!r} not in prompts from {self.path} (classes: {', '.join(self.classes)})"
            )


class JsonPairs(list):
    """A JSON object kept as its ordered ``(key, value)`` pairs, so duplicate keys stay visible."""


def parse_json_object(text: str, source: Path | str, shape: str) -> JsonPairs:
    """The non-empty top-level JSON object of prompt file ``text`` as :class:`JsonPairs` (nested objects
    too); one :class:`InputError` line naming ``source`` for invalid JSON, or ``"<source>: <shape>"``
    when the top level is not a non-empty object."""
    try:
        data = json.loads(text, object_pairs_hook=JsonPairs)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(data, JsonPairs) or not data:
        raise InputError(f"{source}: {shape}")
    return data


def read_prompt_text(path: Path, not_found: str = "prompt file not found") -> str:
    """The UTF-8 text of prompt file ``path`` (only read); one :class:`InputError` line naming it when it
    is missing (``"<path>: <not_found>"``), not UTF-8 or unreadable."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: {not_found}") from None
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: not valid JSON (not UTF-8 text: {err.reason} at byte {err.start})"
        ) from None
    except OSError as err:
        raise InputError(f"{path}: cannot read prompt file ({err.strerror or err})") from None


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_prompt_text(
    text: str,
    source: Path | str,
    class_names: Sequence[str] | None = None,
    n_coarse: int = 4,
    n_fine_per_coarse: int | None = 3,
) -> HierarchicalPrompts:
    """Parse and validate prompt JSON ``text``; ``source`` names it in error messages.

    ``n_fine_per_coarse=None`` reads the file as the released HiVE-MIL slices it (docs/divergences.md
    §17): every class holds the same number n of entries, the first ``n_coarse`` are coarse and *all*
    the others fine, ``(n - n_coarse) / n_coarse`` per coarse entry (which must be whole: the released
    HTCL groups them so).

    Raises :class:`InputError` for invalid JSON, a wrong shape, duplicate classes or terms, empty
    strings, a wrong entry count per class, or class names that do not match ``class_names``.
    Classes are ordered as ``class_names`` when given, else as in the file.
    """
    if n_coarse < 1 or (n_fine_per_coarse is not None and n_fine_per_coarse < 0):
        raise InputError(
            f"{source}: need n_coarse >= 1 and n_fine_per_coarse >= 0, got {n_coarse} and {n_fine_per_coarse}"
        )
    shape = "expected a JSON object {class: {term: explanation}}"
    data = parse_json_object(text, source, shape)
    if n_fine_per_coarse is None:
        n_fine_per_coarse = _released_fine_per_coarse(data, source, n_coarse)
    n_fine = n_coarse * n_fine_per_coarse
    expected = n_coarse + n_fine
    per_class: dict[str, list[Entry]] = {}
    for cls, body in data:
        if cls in per_class:
            raise InputError(f"{source}: class {cls!r} appears twice")
        if not cls.strip():
            raise InputError(f"{source}: empty class name")
        if not isinstance(body, JsonPairs):
            raise InputError(f"{source}: class {cls!r} is not an object of term: explanation pairs ({shape})")
        if len(body) != expected:
            raise InputError(
                f"{source}: class {cls!r} has {len(body)} entries, expected {n_coarse} + {n_coarse}x"
                f"{n_fine_per_coarse} = {expected} ({n_coarse} coarse 5x entries, then {n_fine} fine 20x entries)"
            )
        seen: dict[str, int] = {}
        for index, (term, explanation) in enumerate(body):
            where = f"class {cls!r} entry {index + 1}"
            if not term.strip():
                raise InputError(f"{source}: {where} has an empty term")
            if not isinstance(explanation, str):
                kind = "object" if isinstance(explanation, JsonPairs) else type(explanation).__name__
                raise InputError(
                    f"{source}: {where} ({_short(term)!r}): explanation must be a string, got {kind}"
                )
            if not explanation.strip():
                raise InputError(f"{source}: {where} ({_short(term)!r}) has an empty explanation")
            key = term.strip()
            if key in seen:
                raise InputError(
                    f"{source}: class {cls!r} has the term {_short(key)!r} twice "
                    f"(entries {seen[key] + 1} and {index + 1}); terms must be unique within a class"
                )
            seen[key] = index
        per_class[cls] = [(term, explanation) for term, explanation in body]

    order = tuple(per_class)
    if class_names is not None:
        order = tuple(class_names)
        missing = [c for c in order if c not in per_class]
        unexpected = [c for c in per_class if c not in order]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing))}")
            if unexpected:
                parts.append(f"unexpected {', '.join(map(repr, unexpected))}")
            raise InputError(
                f"{source}: class names do not match the task ({'; '.join(parts)}; "
                f"expected {', '.join(map(repr, order))})"
            )
    return HierarchicalPrompts(
        classes=order,
        coarse={c: per_class[c][:n_coarse] for c in order},
        fine={c: per_class[c][n_coarse:] for c in order},
        n_coarse=n_coarse,
        n_fine_per_coarse=n_fine_per_coarse,
        path=source,
    )


def _released_fine_per_coarse(data: JsonPairs, source: Path | str, n_coarse: int) -> int:
    """Fine entries per coarse entry when all entries after the first ``n_coarse`` are fine (released)."""
    cls, body = data[0]
    n = len(body) if isinstance(body, JsonPairs) else 0
    if n <= n_coarse or (n - n_coarse) % n_coarse:
        raise InputError(
            f"{source}: class {cls!r} has {n} entries; with {n_coarse} coarse (5x) entries the other "
            f"{n - n_coarse} are its fine (20x) entries, as released, and must split evenly over the "
            f"{n_coarse} coarse ones (the released HTCL needs it; it crashes otherwise)"
        )
    return (n - n_coarse) // n_coarse


def released_slicing_notice(prompts: HierarchicalPrompts, n_fine_asked: int) -> str | None:
    """One notice line when the released slicing (``n_fine_per_coarse=None``) reads ``prompts`` other than
    ``n_coarse x (1 + n_fine_asked)`` entries per class would say; None when they agree."""
    if prompts.n_fine_per_coarse == n_fine_asked:
        return None
    n, low = prompts.n_per_class, prompts.n_coarse
    asked = low * (1 + n_fine_asked)
    return (
        f"notice: {prompts.path}: {n} descriptions per class, --num-low-mag-texts {low} x "
        f"(1 + --num-high-mag-subtexts {n_fine_asked}) = {asked}; as released, the first {low} are the "
        f"5x texts and all {n - low} others the 20x texts ({prompts.n_fine_per_coarse} per 5x text in HTCL; "
        f"hierarchical text edges every {n_fine_asked}): 0 descriptions left unused, "
        f"{n - asked:+d} against the flags"
    )


def load_prompt_file(
    path: str | Path,
    class_names: Sequence[str] | None = None,
    n_coarse: int = 4,
    n_fine_per_coarse: int | None = 3,
) -> HierarchicalPrompts:
    """Read and validate a prompt file (see :func:`parse_prompt_text`); the file is only read."""
    path = Path(path)
    return parse_prompt_text(read_prompt_text(path), path, class_names, n_coarse, n_fine_per_coarse)


def content_warnings(prompts: HierarchicalPrompts) -> list[str]:
    """Soft problems: duplicate explanations, terms repeated across classes or differing only in case."""
    warnings: list[str] = []
    src = prompts.path
    explanation_owner: dict[str, tuple[str, str]] = {}
    term_classes: dict[str, list[str]] = {}
    for cls in prompts.classes:
        folded = Counter(term.strip().casefold() for term, _ in prompts.entries(cls))
        for term, count in folded.items():
            if count > 1:
                warnings.append(
                    f"{src}: class {cls!r} has {count} terms that differ only in case or spacing "
                    f"({_short(term)!r})"
                )
        for term, explanation in prompts.entries(cls):
            key = " ".join(explanation.split()).casefold()
            if key in explanation_owner:
                other_cls, other_term = explanation_owner[key]
                warnings.append(
                    f"{src}: class {cls!r} term {_short(term)!r} repeats the explanation of class "
                    f"{other_cls!r} term {_short(other_term)!r}"
                )
            else:
                explanation_owner[key] = (cls, term)
            owners = term_classes.setdefault(term.strip().casefold(), [])
            if cls not in owners:
                owners.append(cls)
    for term, owners in term_classes.items():
        if len(owners) > 1:
            warnings.append(
                f"{src}: term {_short(term)!r} is used by several classes ({', '.join(owners)}); "
                "class-specific terms separate the classes better"
            )
    return warnings


def check_token_lengths(
    prompts: HierarchicalPrompts,
    count_tokens: Callable[[str], int],
    context_length: int,
    n_ctx: int,
    label: str = "",
) -> list[str]:
    """Warning lines for prompt texts that a text tower would truncate.

    ``count_tokens(text)`` must return the full sequence length including start and end tokens.
    ``label`` (e.g. the tokenizer name) is put in front of each line.
    """
    warnings = []
    lead = f"[{label}] " if label else ""
    for cls in prompts.classes:
        entries = prompts.entries(cls)
        for (term, _), text in zip(entries, prompts.prompt_texts(cls, n_ctx)):
            n_tokens = count_tokens(text)
            if n_tokens > context_length:
                warnings.append(
                    f"{lead}{prompts.path}: class {cls!r} term {_short(term)!r} needs {n_tokens} tokens "
                    f"> context length {context_length} (with n_ctx={n_ctx}); its end would be truncated"
                )
    return warnings


def clip_token_counter() -> Callable[[str], int]:
    """Token counter of the OpenAI CLIP BPE (PLIP, QuiltNet), via open_clip's bundled vocabulary (offline)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return lambda text: len(tokenizer.encode(text)) + 2  # + start and end tokens


def validate_prompt_file(
    path: str | Path,
    class_names: Sequence[str] | None = None,
    n_coarse: int = 4,
    n_fine_per_coarse: int = 3,
    count_tokens: Callable[[str], int] | None = None,
    context_length: int = 77,
    n_ctx: int = 16,
    tokenizers: Sequence[tuple[str, Callable[[str], int], int]] | None = None,
) -> tuple[HierarchicalPrompts, list[str]]:
    """Load ``path`` strictly and collect warnings (content duplicates and over-long prompts).

    ``count_tokens`` defaults to the CLIP BPE counter (:func:`clip_token_counter`) with
    ``context_length`` 77, the text context of PLIP and QuiltNet. ``tokenizers`` instead: check against
    each ``(label, count_tokens, context_length)`` (e.g.
    :func:`models.towers.tokenizers.installed_prompt_tokenizers`), each warning labelled.
    """
    prompts = load_prompt_file(path, class_names, n_coarse, n_fine_per_coarse)
    warnings = content_warnings(prompts)
    if tokenizers is not None:
        for label, count, length in tokenizers:
            warnings += check_token_lengths(prompts, count, length, n_ctx, label=label)
        if not tokenizers:
            warnings.append(
                f"{path}: token lengths not checked (neither open_clip nor conch-fork is installed)"
            )
        return prompts, warnings
    if count_tokens is None:
        try:
            count_tokens = clip_token_counter()
        except ImportError:
            warnings.append(f"{path}: token lengths not checked (open_clip is not installed)")
            return prompts, warnings
    warnings += check_token_lengths(prompts, count_tokens, context_length, n_ctx)
    return prompts, warnings
