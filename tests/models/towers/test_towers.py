"""Tower adapters (HF CLIP, CONCH, open_clip): loading, frozen state, both text layouts, image side.

Tiny random towers are written to disk once per module in each library's own format and loaded
through ``load_towers``, exactly like real weights. References are the libraries' own functions
(``get_text_features``, ``encode_text``, ``encode_image``) or literal re-statements of the released
HiVE-MIL text encoder.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

from models.towers import load_towers
from models.towers import loading as tower_loading
from models.towers.tiny import ensure_demo_text_tower, save_tiny_conch, save_tiny_hf_clip, save_tiny_open_clip
from tests.paths import GOLDEN, GOLDEN_TOWER, missing
from utils.errors import InputError

TEXTS = [
    "a photo of cancer",
    "Crowded glands : back-to-back gland profiles fill the field with little intervening stroma.",
    "x",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Paths of tiny towers of each kind (the HF one is the demo tower, built through its cache)."""
    root = tmp_path_factory.mktemp("towers")
    return {
        "hf": ensure_demo_text_tower(root / "cache"),
        "conch": save_tiny_conch(root / "conch"),
        "open_clip": save_tiny_open_clip(root / "open_clip"),
        "root": root,
    }


@pytest.fixture(scope="module")
def loaded(tiny):
    return {
        "hf": load_towers("plip", tiny["hf"], sides=("text", "image")),
        "conch": load_towers("conch", tiny["conch"].parent, sides=("text", "image")),
        "open_clip": load_towers("my_open_clip", tiny["open_clip"], sides=("text", "image")),
    }


def _conch_reference(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from conch.open_clip_custom import create_model
    cfg = json.loads((tiny["conch"].parent / "conch_config.json").read_text())
    return create_model(cfg, checkpoint_path=str(tiny["conch"])).eval()  # conch-fork's own factory


def _replace_token_embeddings(module, embeddings):
    """Forward hook making ``module`` (a token-embedding table) return ``embeddings`` instead."""
    return module.register_forward_hook(lambda mod, args, out: embeddings)


def _spliced(tower, ids, seed=0):
    """Token embeddings with random 'learned context' spliced after the start token (like CoOp)."""
    gen = torch.Generator().manual_seed(seed)
    emb = tower.token_embedding(ids).detach().clone()
    emb[:, 1:5] = 0.02 * torch.randn(emb.shape[0], 4, emb.shape[2], generator=gen)
    return emb


# ----------------------------------------------------------------------------- loading, shapes, frozen


@pytest.mark.parametrize(
    "key, kind, ctx_len", [("hf", "hf_clip", 77), ("conch", "conch", 128), ("open_clip", "open_clip", 77)]
)
def test_load_shapes_and_frozen(loaded, key, kind, ctx_len):
    towers = loaded[key]
    assert towers.kind == kind
    text, image = towers.text, towers.image
    assert (text.width, text.embed_dim, text.context_length) == (64, 64, ctx_len)
    ids = text.tokenize(TEXTS)
    assert ids.shape == (3, ctx_len) and ids.dtype == torch.long
    emb = text.token_embedding(ids)
    assert emb.shape == (3, ctx_len, 64)
    for released in (False, True):
        assert text.encode_embeddings(emb, ids, released_layout=released).shape == (3, 64)
    assert image.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert (image.embed_dim, image.image_size) == (64, 32)
    for module in (text, image):
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 for p in module.parameters())
    assert isinstance(text.logit_scale, torch.nn.Parameter) and text.logit_scale.dim() == 0
    assert text.logit_scale.item() == pytest.approx(4.6052, abs=1e-4)


def test_sides_select_what_is_built(tiny):
    towers = load_towers("plip", tiny["hf"], sides=("image",))
    assert towers.text is None and towers.image is not None
    towers = load_towers("conch", tiny["conch"], sides=("text",))
    assert towers.image is None and towers.text is not None


def test_gradients_reach_spliced_context(loaded):
    """Context vectors get gradients, except in the released HF layout (see below)."""
    for key in ("hf", "conch", "open_clip"):
        text = loaded[key].text
        ids = text.tokenize(TEXTS[:2])
        ctx = torch.zeros(4, 64, requires_grad=True)
        emb = torch.cat(
            [text.token_embedding(ids[:, :1]), ctx.expand(2, -1, -1), text.token_embedding(ids[:, 5:])], 1
        )
        for released in (False, True):
            (grad,) = torch.autograd.grad(
                text.encode_embeddings(emb, ids, released).sum(), ctx, allow_unused=True
            )
            if key == "hf" and released:
                # Released HF layout: each token position is processed on its own, so the output at the
                # end-token position never sees the context positions: no gradient reaches them at all.
                assert grad is None or grad.abs().sum() == 0
            else:
                assert grad.abs().sum() > 0, (key, released)


# ----------------------------------------------------------------------------- HF CLIP


def test_hf_corrected_matches_get_text_features(loaded, tiny):
    from transformers import CLIPModel

    text = loaded["hf"].text
    ref = CLIPModel.from_pretrained(str(tiny["hf"])).eval()
    ids = text.tokenize(TEXTS)
    emb = _spliced(text, ids)
    hook = _replace_token_embeddings(ref.text_model.embeddings.token_embedding, emb)
    with torch.no_grad():
        expected = ref.get_text_features(input_ids=ids).pooler_output
        got = text.encode_embeddings(emb, ids, released_layout=False)
    hook.remove()
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with torch.no_grad():  # plain tokens through encode_text
        torch.testing.assert_close(
            text.encode_text(TEXTS), ref.get_text_features(input_ids=ids).pooler_output, atol=ATOL, rtol=0
        )


def test_hf_released_gathered_positions_equal_all_positions(loaded):
    text = loaded["hf"].text
    ids = text.tokenize(TEXTS + ["solid sheets : broad sheets of cells without lumens"])
    emb = _spliced(text, ids)
    # The released code, literally: all 77 positions, axes swapped, no mask, weight (not transposed).
    x = emb + text.embeddings.position_embedding.weight
    x = text.encoder(x.permute(1, 0, 2)).last_hidden_state.permute(1, 0, 2)
    x = text.final_layer_norm(x)
    naive = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ text.text_projection.weight
    with torch.no_grad():
        torch.testing.assert_close(
            text.encode_embeddings(emb, ids, released_layout=True), naive, atol=ATOL, rtol=0
        )
        # attention really mixes the prompts of one class: dropping one prompt changes the others
        alone = text.encode_embeddings(emb[:2], ids[:2], released_layout=True)
    assert (alone - naive[:2]).abs().max() > 1e-4


def test_hf_released_needs_width_equal_projection(tmp_path):
    folder = save_tiny_hf_clip(tmp_path / "narrow", width=64, projection=32, with_processor=False)
    text = load_towers("plip", folder).text
    ids = text.tokenize(TEXTS)
    assert text.encode_embeddings(text.token_embedding(ids), ids).shape == (3, 32)
    with pytest.raises(InputError, match="width 64 and projection 32"):
        text.encode_embeddings(text.token_embedding(ids), ids, released_layout=True)


def test_hf_token_counts_and_pooling(loaded):
    text = loaded["hf"].text
    ids = text.tokenize(TEXTS)
    for t, row in zip(TEXTS, ids):
        assert text.count_tokens(t) == int((row != 0).sum())
    assert text.count_tokens("a b") == 4
    assert ids[0, 0] == 49406 and (text.pool_positions(ids) == ids.argmax(-1)).all()
    assert ids[0, text.pool_positions(ids)[0]] == 49407


# ----------------------------------------------------------------------------- CONCH


def test_conch_own_path_matches_encode_text(loaded, tiny):
    text = loaded["conch"].text
    ref = _conch_reference(tiny)
    texts = TEXTS + ["word " * 200]  # the last fills all 127 slots (cls then sees itself)
    ids = text.tokenize(texts)
    assert ids[-1, -2] == text.tokenizer.end_id and ids[-1, -1] == 0
    with torch.no_grad():
        torch.testing.assert_close(
            text.encode_text(texts), ref.encode_text(ids, normalize=False), atol=ATOL, rtol=0
        )
        emb = _spliced(text, ids)
        hook = _replace_token_embeddings(ref.text.token_embedding, emb[:, :-1])
        expected = ref.encode_text(ids, normalize=False)
        hook.remove()
        torch.testing.assert_close(text.encode_embeddings(emb, ids), expected, atol=ATOL, rtol=0)


def test_conch_released_path_is_the_released_encoder(loaded):
    text = loaded["conch"].text
    ids = text.tokenize(TEXTS)
    emb = _spliced(text, ids)
    t = text.text
    x = emb + t.positional_embedding  # released TextEncoder for CONCH, literally
    x = t.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = t.ln_final(x)
    naive = x[torch.arange(3), ids.argmax(dim=-1)] @ t.text_projection
    with torch.no_grad():
        got = text.encode_embeddings(emb, ids, released_layout=True)
        torch.testing.assert_close(got, naive, atol=ATOL, rtol=0)
        assert (got - text.encode_embeddings(emb, ids)).abs().max() > 1e-4  # a different computation
    assert (ids.argmax(-1) != (ids == text.tokenizer.end_id).int().argmax(-1)).all()  # pools a word, not eot


def test_conch_tokenizer_matches_conch_fork_helper(loaded):
    """conch-fork's ``tokenize`` (calls the removed ``batch_encode_plus``) run through a shim."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from conch.open_clip_custom import get_tokenizer, tokenize

    class Shim:
        def __init__(self, tok):
            self.tok, self.pad_token_id = tok, tok.pad_token_id

        def batch_encode_plus(self, texts, **kwargs):
            return self.tok(texts, **kwargs)

    texts = TEXTS + ["word " * 200]
    expected = tokenize(Shim(get_tokenizer()), texts)
    tower = loaded["conch"].text
    assert torch.equal(tower.tokenize(texts), expected)
    assert expected.shape == (4, 128)
    for t, row in zip(TEXTS, expected):
        assert tower.count_tokens(t) == int((row != 0).sum())


# ----------------------------------------------------------------------------- open_clip


def test_open_clip_own_path_matches_encode_text(loaded, tiny):
    import open_clip

    text = loaded["open_clip"].text
    ref, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny['open_clip']}")
    ref.eval()
    ids = text.tokenize(TEXTS)
    emb = _spliced(text, ids)
    with torch.no_grad():
        torch.testing.assert_close(text.encode_text(TEXTS), ref.encode_text(ids), atol=ATOL, rtol=0)
        hook = _replace_token_embeddings(ref.token_embedding, emb)
        expected = ref.encode_text(ids)
        hook.remove()
        torch.testing.assert_close(text.encode_embeddings(emb, ids), expected, atol=ATOL, rtol=0)
        x = ref.transformer(emb + ref.positional_embedding)  # released layout: no mask
        naive = ref.ln_final(x)[torch.arange(3), ids.argmax(-1)] @ ref.text_projection
        torch.testing.assert_close(
            text.encode_embeddings(emb, ids, released_layout=True), naive, atol=ATOL, rtol=0
        )


def test_open_clip_arch_and_checkpoint_spec(tmp_path, tiny):
    """``ARCH:/path/to/weights`` with a registered architecture (a tiny one, registered like a built-in)."""
    import open_clip

    cfg = json.loads((tiny["open_clip"] / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "hivemil-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "hivemil-tiny-test.json")
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes((tiny["open_clip"] / "open_clip_pytorch_model.bin").read_bytes())
    towers = load_towers("openclip", f"hivemil-tiny-test:{ckpt}", sides=("text",))
    assert towers.kind == "open_clip" and towers.text.embed_dim == 64
    model = open_clip.create_model("hivemil-tiny-test", pretrained=str(ckpt)).eval()
    ids = towers.text.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(towers.text.encode_text(TEXTS), model.encode_text(ids), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- image side


def test_image_features_match_libraries(loaded, tiny):
    import open_clip
    from transformers import CLIPModel

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hf = CLIPModel.from_pretrained(str(tiny["hf"])).eval()
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny['open_clip']}")
    conch = _conch_reference(tiny)
    with torch.no_grad():
        pairs = [
            (loaded["hf"].image, hf.get_image_features(pixel_values=images).pooler_output),
            (loaded["open_clip"].image, oc.eval().encode_image(images)),
            (loaded["conch"].image, conch.encode_image(images, proj_contrast=True, normalize=False)),
        ]
        for tower, expected in pairs:
            torch.testing.assert_close(tower.encode_image(images), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("key", ["hf", "conch", "open_clip"])
def test_preprocess_pil(loaded, key):
    image = Image.new("RGBA", (48, 40), (200, 120, 90, 255))
    tower = loaded[key].image
    x = tower.preprocess(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert tower.encode_image(x[None]).shape == (1, 64)


# ----------------------------------------------------------------------------- golden (released code)


GOLDEN_CASE_ABSENT = missing(
    GOLDEN / "case_two_n30_s1.pt", GOLDEN / "prompts_2class.json", GOLDEN_TOWER / "config.json"
)


@pytest.mark.skipif(bool(GOLDEN_CASE_ABSENT), reason=str(GOLDEN_CASE_ABSENT))
def test_golden_tokens_and_text_features():
    case = torch.load(GOLDEN / "case_two_n30_s1.pt", weights_only=False)
    prompts = json.loads((GOLDEN / "prompts_2class.json").read_text())
    towers = load_towers("plip", GOLDEN_TOWER, sides=("text", "image"))
    text = towers.text
    assert towers.kind == "hf_clip"
    assert towers.image.preprocess(Image.new("RGB", (40, 40))).shape == (3, 32, 32)  # no processor file
    ctx = case["state_dict"]["custom_vlm.prompt_learner.ctx"]
    for cls, entries in prompts.items():
        texts = [" ".join(["X"] * 16) + f" {term} : {explanation}" for term, explanation in entries.items()]
        ids = text.tokenize(texts)
        assert torch.equal(ids, case["tokenized_prompts"][cls].long())
        emb = text.token_embedding(ids).detach().clone()
        emb[:, 1:17] = ctx
        with torch.no_grad():
            got = text.encode_embeddings(emb, ids, released_layout=True)
        torch.testing.assert_close(got, case["text_features"][cls], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- errors and demo cache


def test_missing_conch_checkpoint_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setattr(tower_loading, "DEFAULT_CONCH_CHECKPOINT", tmp_path / "conch" / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"conch/pytorch_model\.bin.*--text_tower") as err:
        load_towers("conch")
    assert "\n" not in str(err.value)


def test_uncached_hub_name_gives_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for args, name in [
        (("plip",), "vinid/plip"),
        (("quiltnet",), "wisdomik/QuiltNet-B-32"),
        (("x", "hf-hub:org/model"), "org/model"),
        (("plip", "org/not-here"), "org/not-here"),
    ]:
        with pytest.raises(InputError, match="--text_tower /path/to/local/folder") as err:
            load_towers(*args)
        assert name in str(err.value) and "download it once" in str(err.value) and "\n" not in str(err.value)


def test_bad_inputs_are_reported_and_left_untouched(tmp_path, tiny):
    corrupt = tmp_path / "pytorch_model.bin"
    corrupt.write_bytes(b"not a checkpoint")
    no_weights = tmp_path / "clip_no_weights"
    no_weights.mkdir()
    (tmp_path / "empty").mkdir()
    (no_weights / "config.json").write_text((tiny["hf"] / "config.json").read_text())
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(2)}, wrong)
    before = {p: p.read_bytes() for p in (corrupt, no_weights / "config.json", wrong)}
    cases = [
        (("conch", corrupt), "not a readable PyTorch checkpoint"),
        (("plip", no_weights), "could not load a Hugging Face CLIP model"),
        (("conch", wrong), "not a CONCH checkpoint"),
        (("plip", tmp_path / "missing_dir" / "x"), "not an existing folder"),
        (("plip", no_weights.parent / "empty"), "no Hugging Face CLIP"),
        (("x", "ViT-B-32:/no/such/file.pt"), "not found"),
        (("no_such_extractor",), "--feature_extractor no_such_extractor: not plip, quiltnet or conch"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match=message) as err:
            load_towers(*args)
        assert "\n" not in str(err.value)
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(InputError, match="^--weights /no/such: not an existing folder"):
        load_towers("plip", "/no/such", sides=("image",), source_flag="--weights")


def test_demo_tower_is_built_once(tiny):
    folder = tiny["hf"]
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert ensure_demo_text_tower(folder.parent) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_clip_bpe_tokenizer_loads_without_the_open_clip_package():
    """The bundled BPE is read without open_clip's __init__ (timm and every model: ~1 s of start-up),
    and tokenises exactly as open_clip's own SimpleTokenizer."""
    import subprocess
    import sys
    import textwrap

    from tests.paths import PROJECT

    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(PROJECT)!r})
        from models.towers.tokenizers import ClipBpeTokenizer
        ids = ClipBpeTokenizer(77)(["X X X X term : a description, with punctuation & numbers 42 ."])
        print("open_clip" in sys.modules)
        from open_clip.tokenizer import SimpleTokenizer
        ref = SimpleTokenizer(context_length=77)(["X X X X term : a description, with punctuation & numbers 42 ."])
        print(bool((ids == ref.long()).all()))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
