"""Typed options of HiVE-MIL, including the released-code behaviours (docs/divergences.md §1-§6).

``--variant reference`` (default) reproduces the authors' released code; ``--variant corrected``
fixes every item. Each item is also its own switch, so one behaviour can be studied in isolation:

=====================  ===================  ==========================================================
switch                 reference            corrected
=====================  ===================  ==========================================================
``--text-encoding``    ``released``         ``causal``: batch-first, causal mask, pooled where the
                                            tower pools, the tower's own projection
``--hier-attention``   ``dense``            ``sparse``: attention only along true parent-child edges
``--attn-residual``    ``double``           ``single``: the attention residual is added once
``--logit-scale``      ``raw``              ``exp``: slide logits use exp(logit_scale)
``--htcl-negatives``   ``zero``             ``real``: HTCL pushes anchors of other classes away
``--padded-children``  ``keep``             ``mask``: zero-padded 20x children are not graph nodes
=====================  ===================  ==========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from datasets.hierarchy import children_per_parent
from utils.flags import flag

VARIANTS = ("reference", "corrected")

# switch name -> (reference value, corrected value)
SWITCHES: dict[str, tuple[str, str]] = {
    "text_encoding": ("released", "causal"),
    "hier_attention": ("dense", "sparse"),
    "attn_residual": ("double", "single"),
    "logit_scale": ("raw", "exp"),
    "htcl_negatives": ("zero", "real"),
    "padded_children": ("keep", "mask"),
}


@dataclass(frozen=True)
class VariantSwitches:
    """One value per released-code behaviour (see the module table)."""

    text_encoding: str = "released"
    hier_attention: str = "dense"
    attn_residual: str = "double"
    logit_scale: str = "raw"
    htcl_negatives: str = "zero"
    padded_children: str = "keep"

    @classmethod
    def for_variant(cls, variant: str, **overrides: str | None) -> VariantSwitches:
        """Defaults of ``variant`` with any non-None ``overrides`` applied."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        column = VARIANTS.index(variant)
        values = {name: pair[column] for name, pair in SWITCHES.items()}
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in SWITCHES:
                raise ValueError(f"unknown switch {name!r}")
            if value not in SWITCHES[name]:
                raise ValueError(f"switch {name} must be one of {SWITCHES[name]}, got {value!r}")
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class HiveMILOptions:
    """Constructor options of HiVE-MIL (published defaults).

    The fields made with :func:`utils.flags.flag` are ``main.py`` flags (published names; the flag key,
    e.g. ``num_context_tokens`` for ``n_ctx``, is the ``config.json`` key). The prompt layout and context
    options are shared by every vision-language model. ``low_mag``/``high_mag`` come from ``--low_mag``/
    ``--high_mag`` and ``switches`` from ``--variant`` and its switches (``RunConfig.model_spec``).
    """

    n_ctx: int = flag(
        "--num-context-tokens", dest="num_context_tokens", default=16, group="hivemil",
        help="learnable context tokens",
    )  # fmt: skip
    class_specific_context: bool = flag(
        "--class-specific-token", dest="class_specific_token", default=False, group="hivemil",
        help="one context per class",
    )  # fmt: skip
    class_token_position: str = flag(
        "--class-token-position", default="end", choices=("front", "middle", "end"), group="hivemil",
        help="where the context goes",
    )  # fmt: skip
    num_low_mag_texts: int = flag(
        "--num-low-mag-texts", default=4, group="hivemil", help="coarse texts per class"
    )
    num_high_mag_subtexts: int = flag(
        "--num-high-mag-subtexts", default=3, group="hivemil", help="fine texts per coarse text"
    )
    filter_alpha: float = flag("--filter-alpha", default=0.5, group="hivemil", help="TGDF alpha")
    contrastive_lambda: float = flag("--contrastive_lambda", default=0.5, group="hivemil", help="HTCL weight")
    max_children: int = flag(
        "--max-children", default=0, group="hivemil",
        help="use at most this many 20x children per kept 5x patch (seeded subset; 0 = all)",
    )  # fmt: skip
    attention_chunk: int = flag(
        "--attention-chunk", default=0, group="hivemil",
        help="dense hierarchical attention in query chunks of this size, recomputed in backward (0 = one block)",
    )  # fmt: skip
    exact_order: bool = flag(
        "--exact-order", default=False, group="hivemil",
        help="GNN in the released code's op order: its logits bit for bit, slower on large slides "
        "(docs/divergences.md §15)",
    )  # fmt: skip
    low_mag: float = 5.0
    high_mag: float = 20.0
    num_heads: int = 2
    topk_high: int = 100
    topk_low: int = 2
    switches: VariantSwitches = VariantSwitches()

    @property
    def children_per_parent(self) -> int:
        """(high / low)^2: 16 children per 5x patch for 5x -> 20x."""
        return children_per_parent(self.low_mag, self.high_mag)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "switches"}
        out["switches"] = self.switches.to_dict()
        return out
