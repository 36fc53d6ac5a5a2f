"""Offline tokenizers for the text towers (docs/method.md §1).

* :class:`ClipBpeTokenizer` - the OpenAI CLIP byte-pair encoding bundled with ``open_clip`` (start 49406,
  end 49407, zero padding, truncation keeps the end token). PLIP and QuiltNet use this vocabulary, and
  the released HiVE-MIL code tokenises their prompts with it (``clip.tokenize``), so the ids equal
  the golden ``tokenized_prompts``.
* :class:`ConchTokenizer` - the byte-level BPE that ``conch-fork`` ships in
  ``conch/open_clip_custom/tokenizers/``. conch-fork's ``tokenize`` helper calls
  ``batch_encode_plus``, which transformers 5 removed; we call the tokenizer with the same settings:
  127 tokens (start/end included, truncated, padded with ``<pad>`` = 0), then one extra ``<pad>`` at
  the end as the placeholder that CoCa's ``encode_text`` drops to make room for its cls embedding.
* :class:`OpenClipTokenizer` - whatever ``open_clip.get_tokenizer`` gives for a model when it works
  offline, else the bundled CLIP BPE.

:func:`installed_prompt_tokenizers` lists the first two where installed, for checking prompt files
(``generate_text_prompts.py``, :func:`datasets.prompt_file.validate_prompt_file`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


class ClipBpeTokenizer:
    """OpenAI CLIP BPE (open_clip's bundled ``SimpleTokenizer``): ids [N, context_length], zero padded."""

    def __init__(self, context_length: int = 77):
        SimpleTokenizer = clip_bpe_tokenizer_class()
        self.context_length = int(context_length)
        self._tok = SimpleTokenizer(context_length=self.context_length)
        self.start_id = int(self._tok.sot_token_id)
        self.end_id = int(self._tok.eot_token_id)
        self.pad_id = 0

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tok(list(texts), context_length=self.context_length).long()

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` needs, start and end tokens included, before truncation."""
        return len(self._tok.encode(text)) + 2


def clip_bpe_tokenizer_class() -> type:
    """open_clip's ``SimpleTokenizer`` class. Its module stands alone (it imports no other part of
    open_clip), so it is loaded from its file without running the package's ``__init__``, which imports
    timm and every open_clip model (about 1 s of every run's start-up); the ordinary import otherwise."""
    import importlib.util
    import sys

    name = "_open_clip_tokenizer_module"
    module = sys.modules.get(name)
    if module is None:
        package = importlib.util.find_spec("open_clip")
        try:
            spec = importlib.util.spec_from_file_location(name, Path(package.origin).parent / "tokenizer.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except (ImportError, AttributeError, OSError, TypeError):
            from open_clip.tokenizer import SimpleTokenizer

            return SimpleTokenizer
        sys.modules[name] = module
    return module.SimpleTokenizer


class ConchTokenizer:
    """CONCH's bundled byte-level BPE, laid out as conch-fork's ``tokenize`` intends (127 + 1 placeholder)."""

    def __init__(self, context_length: int = 128):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # timm deprecation warning on conch import
            from conch.open_clip_custom.custom_tokenizer import get_tokenizer

        self.context_length = int(context_length)
        self._tok = get_tokenizer()  # reads the json file shipped inside conch-fork; no download
        self.pad_id = int(self._tok.pad_token_id)
        self.start_id = int(self._tok.bos_token_id)
        self.end_id = int(self._tok.eos_token_id)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self._tok(
            list(texts),
            max_length=self.context_length - 1,
            add_special_tokens=True,
            return_token_type_ids=False,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]
        return F.pad(ids, (0, 1), value=self.pad_id).long()

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=True, truncation=False)["input_ids"])


class OpenClipTokenizer:
    """``open_clip.get_tokenizer(model_name)`` when it loads offline, else the bundled CLIP BPE."""

    def __init__(self, model_name: str, context_length: int):
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = int(context_length)
        try:
            tok = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        except Exception:  # e.g. an HF tokenizer that is not cached: fall back to the bundled BPE
            tok = SimpleTokenizer(context_length=self.context_length)
        self._tok = tok
        self._is_bpe = isinstance(tok, SimpleTokenizer)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tok(list(texts), context_length=self.context_length).long()

    def count_tokens(self, text: str) -> int:
        if self._is_bpe:
            return len(self._tok.encode(text)) + 2
        inner = getattr(self._tok, "tokenizer", None)
        if inner is not None:
            return len(inner(text, add_special_tokens=True)["input_ids"])
        return int((self(text) != 0).sum())  # last resort: non-pad tokens after truncation


def installed_prompt_tokenizers() -> list[tuple[str, Callable[[str], int], int]]:
    """``(label, count_tokens, context_length)`` of each text tower's tokenizer that is installed: the CLIP
    BPE (PLIP, QuiltNet; 77 tokens) and CONCH's (127: its last position is the placeholder of CoCa's cls
    token). ``count_tokens`` counts start and end tokens, before truncation."""
    found = []
    try:
        found.append(("CLIP BPE: PLIP, QuiltNet", ClipBpeTokenizer().count_tokens, 77))
    except ImportError:
        pass
    try:
        conch = ConchTokenizer()
    except ImportError:
        pass
    else:
        found.append(("CONCH", conch.count_tokens, conch.context_length - 1))
    return found
