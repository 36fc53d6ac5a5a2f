"""Generate the hierarchical text prompts of a task with an LLM, or check an existing prompt file.

The paper asks an LLM (GPT-4o) for, per class, 4 morphological features visible at 5x and, for each,
3 finer sub-features visible at 20x, answered as ``{class: {term: explanation}}``. This script sends
such a request to any OpenAI-compatible chat endpoint, extracts and validates the JSON answer
(asking again with the problem spelled out when it is malformed) and writes
``text_prompt/HiVE_MIL/<llm-name>/<task>.json`` atomically.

Requests go through the ``openai`` SDK (an optional extra, ``pip install openai``; see
requirements-optional.txt), which also retries dropped connections, rate limits and server errors.
``--dry-run`` and ``--check`` do not need it.

    python generate_text_prompts.py --task tcga_brca --model gpt-4o --dry-run
    OPENAI_API_KEY=... python generate_text_prompts.py --task tcga_brca --model gpt-4o
    python generate_text_prompts.py --classes A,B --dataset-name my_task --base-url http://localhost:8000/v1
    python generate_text_prompts.py --check text_prompt/HiVE_MIL/curated/tcga_rcc.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from datasets.prompt_file import HierarchicalPrompts, parse_prompt_text, validate_prompt_file
from datasets.tasks import DEFAULT_PROMPT_DIR, builtin_task_names, get_task
from utils.atomic_io import atomic_write_text
from utils.errors import InputError, run_cli

N_COARSE = 4
N_FINE_PER_COARSE = 3
LOW_MAG, HIGH_MAG = 5, 20
NETWORK_RETRIES = 2  # SDK retries of one request (connection errors, 408/409/429/5xx), with backoff

# Readable names for the prompt; the JSON keys stay the short class names.
DATASET_DESCRIPTIONS = {
    "tcga_brca": "TCGA-BRCA (breast invasive carcinoma)",
    "tcga_nsclc": "TCGA-NSCLC (non-small cell lung cancer: TCGA-LUAD and TCGA-LUSC)",
    "tcga_rcc": "TCGA-RCC (renal cell carcinoma: TCGA-KIRC, TCGA-KICH and TCGA-KIRP)",
}
CLASS_DESCRIPTIONS = {
    "IDC": "invasive ductal carcinoma",
    "ILC": "invasive lobular carcinoma",
    "LUAD": "lung adenocarcinoma",
    "LUSC": "lung squamous cell carcinoma",
    "CCRCC": "clear cell renal cell carcinoma",
    "CHRCC": "chromophobe renal cell carcinoma",
    "PRCC": "papillary renal cell carcinoma",
}
COARSE_ASPECTS = ("tissue architecture", "growth pattern", "stroma", "cytology as seen at low power")

SYSTEM_MESSAGE = (
    "You are an experienced surgical pathologist. You describe what is visible on hematoxylin and "
    "eosin (H&E) stained whole-slide images precisely and concisely, and you answer in strict JSON."
)


# ----------------------------------------------------------------------------- the request


def build_generation_prompt(
    dataset_name: str,
    class_names: Sequence[str],
    n_coarse: int = N_COARSE,
    n_fine_per_coarse: int = N_FINE_PER_COARSE,
    low_mag: int = LOW_MAG,
    high_mag: int = HIGH_MAG,
) -> str:
    """The user message asking for ``{class: {term: explanation}}`` with the hierarchical order spelled out."""
    n_fine = n_coarse * n_fine_per_coarse
    total = n_coarse + n_fine
    named = [f'"{c}" ({CLASS_DESCRIPTIONS[c]})' if c in CLASS_DESCRIPTIONS else f'"{c}"' for c in class_names]
    keys = ", ".join(f'"{c}"' for c in class_names)
    aspects = (
        f"one each for {', '.join(COARSE_ASPECTS)}"
        if n_coarse == len(COARSE_ASPECTS)
        else "covering architecture, growth pattern, stroma and low-power cytology"
    )
    example_cls = class_names[0]
    return "\n".join(
        [
            f"Summarize the morphological features of the {dataset_name} dataset for the classes "
            f"{', '.join(named)}, as they appear on H&E whole-slide images.",
            "",
            f"For each class, give {n_coarse} representative morphological features visible at {low_mag}x "
            f"magnification ({aspects}). For each of these {low_mag}x features, give "
            f"{n_fine_per_coarse} finer sub-features visible at {high_mag}x magnification that refine it "
            "(cellular and nuclear detail, cytoplasm, small structures).",
            "",
            "Rules:",
            "- Every feature is a concise morphological term (2 to 5 words) with a one-sentence explanation "
            "(at most 25 words) of its defining visual appearance in that class.",
            "- Features must be specific to their class and help tell it apart from the other classes; "
            "avoid statements that fit every tumor.",
            "- Terms must be unique within a class. Plain text only: no markdown, numbering or line breaks.",
            "",
            f"Answer with ONE JSON object and nothing else. Its keys are exactly {keys}, in this order. "
            f"Each value is an object mapping term to explanation with exactly {total} entries, in this order:",
            f"1. the {n_coarse} coarse {low_mag}x features;",
            f"2. then the {n_fine} fine {high_mag}x features grouped by the coarse feature they refine: "
            f"the {n_fine_per_coarse} sub-features of coarse feature 1, then the {n_fine_per_coarse} of "
            "coarse feature 2, and so on.",
            "",
            "Shape of the answer:",
            f'{{"{example_cls}": {{"<{low_mag}x term 1>": "<explanation>", ..., "<{low_mag}x term {n_coarse}>": '
            f'"<explanation>", "<{high_mag}x term 1.1>": "<explanation>", ..., "<{high_mag}x term '
            f'{n_coarse}.{n_fine_per_coarse}>": "<explanation>"}}, ...}}',
        ]
    )


def build_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": prompt}]


def retry_message(problem: str, class_names: Sequence[str], n_coarse: int, n_fine_per_coarse: int) -> str:
    """Follow-up message after a malformed answer: the validation error and the required structure."""
    n_fine = n_coarse * n_fine_per_coarse
    keys = ", ".join(f'"{c}"' for c in class_names)
    return (
        f"Your answer could not be used: {problem}. Reply again with only the complete, corrected JSON "
        f"object: keys exactly {keys} in this order, each with exactly {n_coarse + n_fine} unique terms "
        f"({n_coarse} coarse {LOW_MAG}x features first, then {n_fine} fine {HIGH_MAG}x features in groups "
        f"of {n_fine_per_coarse}), every explanation a non-empty single sentence."
    )


# ----------------------------------------------------------------------------- the endpoint


def _error_detail(body: bytes) -> str:
    """The most useful single line of an error response body."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        if isinstance(message, str):
            text = message
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:200]


def _import_openai():
    """The ``openai`` SDK, imported only when a request is made; one-line error when it is missing."""
    try:
        import openai
    except ImportError:
        raise InputError(
            "the openai package is needed to call the endpoint (pip install openai); "
            "--dry-run and --check work without it"
        ) from None
    return openai


def make_client(base_url: str, api_key: str, timeout: float = 120.0, max_retries: int = NETWORK_RETRIES):
    """An ``openai.OpenAI`` client for the OpenAI-compatible API root ``base_url``."""
    openai = _import_openai()
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


def chat_completion(
    client,
    model: str,
    messages: list[dict[str, str]],
    temperature: float | None = None,
    json_mode: bool = False,
) -> str:
    """One chat completion through ``client`` (:func:`make_client`); the first choice's text.

    Every failure (HTTP error status, unreachable endpoint, timeout, a response that is not a chat
    completion) is an :class:`InputError` naming the URL.
    """
    openai = _import_openai()
    url = str(client.base_url).rstrip("/") + "/chat/completions"
    options: dict = {}
    if temperature is not None:
        options["temperature"] = temperature
    if json_mode:
        options["response_format"] = {"type": "json_object"}
    try:
        completion = client.chat.completions.create(model=model, messages=messages, **options)
    except openai.APIStatusError as err:
        detail = _error_detail(err.response.content or b"")
        suffix = f": {detail}" if detail else ""
        reason = f" {err.response.reason_phrase}" if err.response.reason_phrase else ""
        raise InputError(f"--base-url {url}: HTTP {err.status_code}{reason}{suffix}") from None
    except openai.APITimeoutError:
        raise InputError(f"--base-url {url}: no answer within --timeout {client.timeout:g} s") from None
    except openai.APIConnectionError as err:
        cause = " ".join(str(err.__cause__ or err).split())[:200] or type(err).__name__
        raise InputError(f"--base-url {url}: cannot reach the endpoint ({cause})") from None
    except (openai.OpenAIError, ValueError):  # a body that is not JSON (JSONDecodeError) or not a completion
        raise InputError(f"--base-url {url}: not an OpenAI-style chat completion response") from None
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        raise InputError(f"--base-url {url}: not an OpenAI-style chat completion response") from None
    if isinstance(content, list):  # content given as parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise InputError(f"--base-url {url}: the response has no message text")
    return content


# ----------------------------------------------------------------------------- the answer


def _first_json_object(text: str) -> str | None:
    """The first substring of ``text`` that decodes as a JSON object, or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return text[match.start() : end]
    return None


def extract_json_text(reply: str, source: str = "LLM reply") -> str:
    """The JSON object in an LLM answer: inside ```json fences if present, else anywhere in the prose."""
    fenced = re.findall(r"```[A-Za-z]*[ \t]*\n?(.*?)```", reply, flags=re.S)
    for candidate in [*fenced, reply]:
        found = _first_json_object(candidate)
        if found is not None:
            return found
    raise InputError(f"{source}: no JSON object found in the answer")


def generate_prompts(
    ask: Callable[[list[dict[str, str]]], str],
    dataset_name: str,
    class_names: Sequence[str],
    retries: int = 3,
    n_coarse: int = N_COARSE,
    n_fine_per_coarse: int = N_FINE_PER_COARSE,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> HierarchicalPrompts:
    """Ask ``ask(messages) -> reply`` for prompts; on a malformed reply, ask again with the problem.

    At most ``retries + 1`` requests. Raises :class:`InputError` when no reply validates.
    """
    messages = build_messages(build_generation_prompt(dataset_name, class_names, n_coarse, n_fine_per_coarse))
    problem = ""
    for attempt in range(1, retries + 2):
        log(f"requesting prompts (attempt {attempt} of {retries + 1})")
        reply = ask(messages)
        source = f"LLM reply (attempt {attempt})"
        try:
            return parse_prompt_text(
                extract_json_text(reply, source), source, class_names, n_coarse, n_fine_per_coarse
            )
        except InputError as err:
            problem = str(err)
            log(f"malformed answer: {problem}")
            messages = [
                *messages,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": retry_message(problem, class_names, n_coarse, n_fine_per_coarse)},
            ]
    raise InputError(
        f"no valid prompt JSON after {retries + 1} attempts (--retries {retries}); last: {problem}"
    )


def render_prompt_json(prompts: HierarchicalPrompts) -> str:
    """The prompt file text: ``{class: {term: explanation}}`` in order, UTF-8, trailing newline."""
    return json.dumps(prompts.to_json_dict(), indent=1, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- checking


def check_prompt_file(
    path: Path, class_names: Sequence[str] | None, n_ctx: int
) -> tuple[HierarchicalPrompts, list[str], list[str]]:
    """Validate ``path`` strictly (:func:`datasets.prompt_file.validate_prompt_file`) against every
    installed text-tower tokenizer; return the prompts, warning lines and the tokenizers checked."""
    from models.towers.tokenizers import installed_prompt_tokenizers

    tokenizers = installed_prompt_tokenizers()
    prompts, warnings = validate_prompt_file(
        path, class_names, N_COARSE, N_FINE_PER_COARSE, n_ctx=n_ctx, tokenizers=tokenizers
    )
    return prompts, warnings, [f"{label} ({length})" for label, _, length in tokenizers]


# ----------------------------------------------------------------------------- CLI


def _parse_classes(text: str) -> tuple[str, ...]:
    classes = tuple(part.strip() for part in text.split(","))
    if not classes or any(not c for c in classes):
        raise InputError(f"--classes {text!r}: give comma-separated, non-empty class names")
    if len(set(classes)) != len(classes):
        raise InputError(f"--classes {text!r}: class names repeat")
    if len(classes) < 2:
        raise InputError(f"--classes {text!r}: need at least two classes")
    return classes


def _check_base_url(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise InputError(f"--base-url {text!r}: give an http(s) API root such as https://api.openai.com/v1")
    return text


def _llm_folder(args: argparse.Namespace) -> str:
    if args.llm_name is None:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", args.model).strip("._") or "llm"
    name = args.llm_name
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise InputError(f"--llm-name {name!r}: must be a plain folder name")
    return name


def _resolve_classes(args: argparse.Namespace) -> tuple[str, ...] | None:
    """Class names from --classes, else from --task, else None."""
    if args.classes is not None:
        classes = _parse_classes(args.classes)
        if args.task is not None and args.task in builtin_task_names() and args.task != "demo":
            builtin = get_task(args.task).class_names
            if classes != builtin:
                raise InputError(f"--classes: task {args.task!r} has the classes {', '.join(builtin)}")
        return classes
    if args.task is not None:
        return get_task(args.task, prompt_dir=args.prompt_dir).class_names
    return None


def _run_check(args: argparse.Namespace) -> int:
    path = Path(args.check)
    classes = _resolve_classes(args)
    if classes is None and path.stem in builtin_task_names() and path.stem != "demo":
        classes = get_task(path.stem).class_names
    prompts, warnings, checked = check_prompt_file(path, classes, args.n_ctx)
    for line in warnings:
        print(f"warning: {line}")
    against = f"; classes match {', '.join(classes)}" if classes is not None else "; class names not checked"
    tokens = f"; token lengths checked with n_ctx={args.n_ctx} for {', '.join(checked)}" if checked else ""
    print(
        f"ok: {path}: {len(prompts.classes)} classes x {prompts.n_per_class} entries "
        f"({prompts.n_coarse} coarse + {prompts.n_coarse}x{prompts.n_fine_per_coarse} fine){against}{tokens}; "
        f"{len(warnings)} warning(s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="task name (classes from datasets.tasks.get_task)")
    parser.add_argument(
        "--classes", help="comma-separated class names (instead of, or checked against, --task)"
    )
    parser.add_argument(
        "--dataset-name", help="dataset name used in the request (and file name without --task)"
    )
    parser.add_argument("--base-url", default="https://api.openai.com/v1", help="OpenAI-compatible API root")
    parser.add_argument("--model", default="gpt-4o", help="chat model name")
    parser.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"
    )
    parser.add_argument("--llm-name", help="output folder under text_prompt/HiVE_MIL (default: from --model)")
    parser.add_argument("--prompt-dir", default=str(DEFAULT_PROMPT_DIR), help="root of the prompt files")
    parser.add_argument("--retries", type=int, default=3, help="extra requests after a malformed answer")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each answer")
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: server's)"
    )
    parser.add_argument(
        "--json-mode",
        action="store_true",
        help='ask the endpoint for JSON mode (response_format {"type": "json_object"}); not every '
        "OpenAI-compatible server supports it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prompt file")
    parser.add_argument("--dry-run", action="store_true", help="print the request and exit")
    parser.add_argument("--check", metavar="PATH", help="validate an existing prompt file and exit")
    parser.add_argument("--n-ctx", type=int, default=16, help="context tokens assumed by --check (16)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_ctx < 0:
        raise InputError(f"--n-ctx {args.n_ctx}: must be >= 0")
    if args.check is not None:
        return _run_check(args)
    if args.retries < 0:
        raise InputError(f"--retries {args.retries}: must be >= 0")
    if args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout:g}: must be positive")
    if args.task is None and (args.classes is None or args.dataset_name is None):
        raise InputError("give --task, or --classes together with --dataset-name")
    classes = _resolve_classes(args)
    stem = args.task or args.dataset_name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stem) or stem in {".", ".."}:
        raise InputError(f"{'--task' if args.task else '--dataset-name'} {stem!r}: not usable as a file name")
    dataset_name = args.dataset_name or DATASET_DESCRIPTIONS.get(stem, stem)
    prompt = build_generation_prompt(dataset_name, classes)
    if args.dry_run:
        print(f"[system]\n{SYSTEM_MESSAGE}\n\n[user]\n{prompt}")
        return 0

    base_url = _check_base_url(args.base_url)
    out_path = Path(args.prompt_dir) / "HiVE_MIL" / _llm_folder(args) / f"{stem}.json"
    if out_path.exists() and not args.overwrite:
        raise InputError(f"{out_path}: already exists (pass --overwrite to replace it)")
    api_key = os.environ.get(args.api_key_env, "").strip()
    if not api_key:
        raise InputError(f"--api-key-env: environment variable {args.api_key_env} is not set")

    client = make_client(base_url, api_key, args.timeout)

    def ask(messages: list[dict[str, str]]) -> str:
        return chat_completion(client, args.model, messages, args.temperature, args.json_mode)

    prompts = generate_prompts(ask, dataset_name, classes, args.retries)
    prompts = parse_prompt_text(render_prompt_json(prompts), out_path, classes)  # re-check what is written
    atomic_write_text(out_path, render_prompt_json(prompts))
    _, warnings, _ = check_prompt_file(out_path, classes, args.n_ctx)
    for line in warnings:
        print(f"warning: {line}")
    print(f"wrote {out_path} ({len(classes)} classes x {prompts.n_per_class} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
