"""Tests for generate_text_prompts.py against a fake OpenAI-compatible server on 127.0.0.1 (no real network)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import generate_text_prompts as gen
from datasets.prompt_file import load_prompt_file
from datasets.tasks import PROJECT_ROOT
from utils.errors import InputError, run_cli

CURATED = PROJECT_ROOT / "text_prompt" / "HiVE_MIL" / "curated"


def prompt_dict(classes=("IDC", "ILC")) -> dict:
    data = {}
    for cls in classes:
        body = {f"{cls} coarse {j}": f"Coarse feature {j} of {cls}." for j in range(4)}
        body.update(
            {f"{cls} fine {j}.{k}": f"Fine feature {j}.{k} of {cls}." for j in range(4) for k in range(3)}
        )
        data[cls] = body
    return data


class FakeChatServer:
    """OpenAI-style ``POST /v1/chat/completions`` that answers from a list of scripted replies."""

    def __init__(
        self, replies: list[str], status: int = 200, error_body: bytes = b"", raw_body: bytes | None = None
    ):
        self.replies = list(replies)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                if status != 200:
                    payload = error_body
                elif raw_body is not None:  # a 200 answer that is not a chat completion
                    payload = raw_body
                else:
                    reply = server.replies.pop(0)
                    payload = json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_and_key(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_KEY", "test-key")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(gen.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def gen_args(server_url: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--task", "tcga_brca", "--base-url", server_url, "--model", "fake-model", "--api-key-env", "FAKE_KEY",
        "--llm-name", "fake", "--prompt-dir", str(tmp_path), *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- pieces


def test_extract_json_text_tolerates_fences_and_prose():
    obj = {"A": {"t": "e {with braces}."}}
    fenced = f"Here you go:\n```json\n{json.dumps(obj, indent=2)}\n```\nHope this helps {{really}}."
    assert json.loads(gen.extract_json_text(fenced)) == obj
    prose = f"Format {{class: {{term: explanation}}}} follows. {json.dumps(obj)} Done."
    assert json.loads(gen.extract_json_text(prose)) == obj
    assert json.loads(gen.extract_json_text(f"```\n{json.dumps(obj)}```")) == obj
    with pytest.raises(InputError, match="LLM reply: no JSON object found"):
        gen.extract_json_text("Sorry, I cannot help with that [1, 2].")


def test_generation_prompt_states_structure_and_order():
    text = gen.build_generation_prompt("TCGA-RCC", ["CCRCC", "CHRCC", "PRCC"])
    assert '"CCRCC" (clear cell renal cell carcinoma)' in text and "TCGA-RCC dataset" in text
    assert 'keys are exactly "CCRCC", "CHRCC", "PRCC", in this order' in text
    assert "4 representative morphological features visible at 5x" in text
    assert "3 finer sub-features visible at 20x" in text
    assert "exactly 16 entries" in text and "the 12 fine 20x features grouped by the coarse feature" in text
    other = gen.build_generation_prompt("my set", ["x", "y"], n_coarse=2, n_fine_per_coarse=2)
    assert "exactly 6 entries" in other and '"x", "y"' in other


def test_generate_prompts_retries_with_the_problem():
    bad = prompt_dict(("A", "B"))
    bad["A"].pop("A fine 0.0")
    replies = [json.dumps(bad), "no json here", f"```json\n{json.dumps(prompt_dict(('A', 'B')))}\n```"]
    seen: list[list[dict]] = []

    def ask(messages):
        seen.append(list(messages))
        return replies[len(seen) - 1]

    prompts = gen.generate_prompts(ask, "set", ["A", "B"], retries=2, log=lambda line: None)
    assert prompts.classes == ("A", "B") and prompts.fine["B"][11] == ("B fine 3.2", "Fine feature 3.2 of B.")
    assert [len(m) for m in seen] == [2, 4, 6]
    assert "class 'A' has 15 entries, expected 4 + 4x3 = 16" in seen[1][-1]["content"]
    assert seen[1][-2] == {"role": "assistant", "content": json.dumps(bad)}
    assert "no JSON object found" in seen[2][-1]["content"]
    with pytest.raises(InputError, match=r"no valid prompt JSON after 2 attempts \(--retries 1\)"):
        gen.generate_prompts(lambda m: "nothing", "set", ["A", "B"], retries=1, log=lambda line: None)


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_malformed_then_valid(tmp_path, capsys):
    bad = prompt_dict()
    bad["ILC"]["ILC extra"] = "One entry too many."
    good = prompt_dict()
    valid_reply = f"Sure! Here is the JSON:\n```json\n{json.dumps(good, indent=2)}\n```\nLet me know."
    with FakeChatServer([json.dumps(bad), valid_reply]) as server:
        code, out, err = run(gen_args(server.url, tmp_path, "--temperature", "0.3"), capsys)
    assert code == 0, err
    out_path = tmp_path / "HiVE_MIL" / "fake" / "tcga_brca.json"
    assert f"wrote {out_path}" in out
    assert json.loads(out_path.read_text(encoding="utf-8")) == good
    assert list(json.loads(out_path.read_text(encoding="utf-8"))) == ["IDC", "ILC"]
    assert load_prompt_file(out_path, ["IDC", "ILC"]).entries("ILC")[4] == (
        "ILC fine 0.0",
        "Fine feature 0.0 of ILC.",
    )
    assert len(server.requests) == 2
    first, second = server.requests
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer test-key"
    assert first["body"]["model"] == "fake-model" and first["body"]["temperature"] == 0.3
    assert [m["role"] for m in first["body"]["messages"]] == ["system", "user"]
    assert "TCGA-BRCA" in first["body"]["messages"][1]["content"]
    follow_up = second["body"]["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert "class 'ILC' has 17 entries, expected 4 + 4x3 = 16" in follow_up[3]["content"]
    assert "malformed answer" in err
    assert not list(out_path.parent.glob(".*tmp"))  # no temporary files left


def test_no_overwrite_without_flag_then_overwrite(tmp_path, capsys):
    out_path = tmp_path / "HiVE_MIL" / "fake" / "tcga_brca.json"
    out_path.parent.mkdir(parents=True)
    out_path.write_text("old content\n", encoding="utf-8")
    with FakeChatServer([json.dumps(prompt_dict())]) as server:
        code, _, err = run(gen_args(server.url, tmp_path), capsys)
        assert code == 2 and server.requests == []
        assert err.strip().count("\n") == 0 and "already exists (pass --overwrite" in err
        assert out_path.read_text(encoding="utf-8") == "old content\n"
        code, _, err = run(gen_args(server.url, tmp_path, "--overwrite"), capsys)
    assert code == 0, err
    assert json.loads(out_path.read_text(encoding="utf-8")) == prompt_dict()


def test_retries_exhausted_writes_nothing(tmp_path, capsys):
    with FakeChatServer(["not json", '{"IDC": {}}']) as server:
        code, _, err = run(gen_args(server.url, tmp_path, "--retries", "1"), capsys)
    assert code == 2 and len(server.requests) == 2
    assert err.strip().splitlines()[-1].startswith("error: no valid prompt JSON after 2 attempts")
    assert not (tmp_path / "HiVE_MIL").exists() or not list((tmp_path / "HiVE_MIL").rglob("*.json"))


def test_classes_and_dataset_name(tmp_path, capsys):
    with FakeChatServer([json.dumps(prompt_dict(("tumor", "normal")))]) as server:
        args = ["--classes", "tumor, normal", "--dataset-name", "my_cohort", "--base-url", server.url,
                "--api-key-env", "FAKE_KEY", "--prompt-dir", str(tmp_path), "--model", "org/model:v1"]  # fmt: skip
        code, _, err = run(args, capsys)
    assert code == 0, err
    assert '"tumor", "normal"' in server.requests[0]["body"]["messages"][1]["content"]
    written = tmp_path / "HiVE_MIL" / "org_model_v1" / "my_cohort.json"  # folder name from --model
    assert list(json.loads(written.read_text(encoding="utf-8"))) == ["tumor", "normal"]


def test_http_error_is_one_line(tmp_path, capsys):
    body = json.dumps({"error": {"message": "Incorrect API key provided"}}).encode()
    with FakeChatServer([], status=401, error_body=body) as server:
        code, _, err = run(gen_args(server.url, tmp_path), capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1
    assert (
        "HTTP 401" in lines[0]
        and "Incorrect API key provided" in lines[0]
        and "/v1/chat/completions" in lines[0]
    )


def test_unreachable_endpoint_and_missing_key(tmp_path, capsys, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    code, _, err = run(gen_args(f"http://127.0.0.1:{port}/v1", tmp_path, "--timeout", "5"), capsys)
    assert code == 2 and err.count("\n") == err.count("requesting") + 1 and "cannot reach the endpoint" in err
    monkeypatch.delenv("FAKE_KEY")
    code, _, err = run(gen_args(f"http://127.0.0.1:{port}/v1", tmp_path), capsys)
    assert code == 2 and err.strip() == "error: --api-key-env: environment variable FAKE_KEY is not set"


def test_server_errors_are_retried_by_the_sdk_then_one_line(tmp_path, capsys):
    body = json.dumps({"error": {"message": "model overloaded"}}).encode()
    with FakeChatServer([], status=503, error_body=body) as server:
        code, _, err = run(gen_args(server.url, tmp_path), capsys)
    assert len(server.requests) == 1 + gen.NETWORK_RETRIES  # one attempt, NETWORK_RETRIES retries
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "HTTP 503" in lines[0] and "model overloaded" in lines[0]
    assert not (tmp_path / "HiVE_MIL").exists()


def test_non_chat_completion_answer_is_one_line(tmp_path, capsys):
    for raw in (b'{"id": "x", "object": "list"}', b'{"choices": []}', b"<html>proxy login</html>"):
        with FakeChatServer([], raw_body=raw) as server:
            code, _, err = run(gen_args(server.url, tmp_path), capsys)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and len(server.requests) == 1, err
        assert "not an OpenAI-style chat completion response" in lines[0]


def test_json_mode_is_requested_only_with_the_flag(tmp_path, capsys):
    with FakeChatServer([json.dumps(prompt_dict())] * 2) as server:
        code, _, err = run(gen_args(server.url, tmp_path), capsys)
        assert code == 0, err
        code, _, err = run(gen_args(server.url, tmp_path, "--json-mode", "--overwrite"), capsys)
        assert code == 0, err
    plain, json_mode = (request["body"] for request in server.requests)
    assert "response_format" not in plain and "temperature" not in plain
    assert json_mode["response_format"] == {"type": "json_object"}


def test_without_the_openai_package_one_line_and_dry_run_and_check_still_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with FakeChatServer([json.dumps(prompt_dict())]) as server:
        code, out, err = run(gen_args(server.url, tmp_path), capsys)
    assert code == 2 and out == "" and server.requests == []
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "pip install openai" in err
    assert not (tmp_path / "HiVE_MIL").exists()
    code, out, _ = run(["--task", "tcga_brca", "--dry-run"], capsys)
    assert code == 0 and out.startswith("[system]")
    code, out, _ = run(["--check", str(CURATED / "tcga_brca.json")], capsys)
    assert code == 0 and out.startswith("ok: ")


def test_bad_base_url_is_one_line(tmp_path, capsys):
    for url in ("::bad", "localhost:8000/v1", "ftp://host/v1", "http://[bad/v1"):
        code, out, err = run(gen_args(url, tmp_path), capsys)
        assert (
            code == 2
            and out == ""
            and err.strip()
            == f"error: --base-url {url!r}: give an http(s) API root such as https://api.openai.com/v1"
        )


def test_bad_flags(tmp_path, capsys):
    code, _, err = run(["--classes", "A,B"], capsys)
    assert code == 2 and "give --task, or --classes together with --dataset-name" in err
    code, _, err = run(["--classes", "A,,B", "--dataset-name", "x", "--dry-run"], capsys)
    assert code == 2 and "--classes" in err and "non-empty" in err
    code, _, err = run(["--task", "tcga_brca", "--classes", "ILC,IDC", "--dry-run"], capsys)
    assert code == 2 and "task 'tcga_brca' has the classes IDC, ILC" in err
    code, _, err = run(["--task", "tcga_brca", "--retries", "-1"], capsys)
    assert code == 2 and "--retries -1" in err


def test_dry_run_prints_prompt_without_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FAKE_KEY")
    code, out, _ = run(["--task", "tcga_nsclc", "--dry-run", "--api-key-env", "FAKE_KEY"], capsys)
    assert code == 0
    assert out.startswith("[system]") and '"LUAD" (lung adenocarcinoma)' in out and "visible at 20x" in out


# ----------------------------------------------------------------------------- --check


def test_check_curated_files(capsys):
    for task, n in (("tcga_brca", 2), ("tcga_nsclc", 2), ("tcga_rcc", 3)):
        path = CURATED / f"{task}.json"
        before = path.read_bytes()
        code, out, _ = run(["--check", str(path)], capsys)
        assert code == 0
        assert out.startswith(f"ok: {path}: {n} classes x 16 entries (4 coarse + 4x3 fine); classes match")
        assert "CLIP BPE: PLIP, QuiltNet (77)" in out and out.strip().endswith("0 warning(s)")
        assert path.read_bytes() == before


def test_check_bad_file_exit_2_and_untouched(tmp_path, capsys):
    data = prompt_dict()
    data["IDC"]["IDC coarse 1"] = ""
    path = tmp_path / "tcga_brca.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    before = path.read_bytes()
    code, out, err = run(["--check", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {path}: class 'IDC' entry 2 ('IDC coarse 1') has an empty explanation"
    assert path.read_bytes() == before
    # Class names: inferred from a built-in file name, or given by --task / --classes.
    path.write_text(json.dumps(prompt_dict(("LUAD", "LUSC"))), encoding="utf-8")
    code, _, err = run(["--check", str(path)], capsys)
    assert code == 2 and "missing 'IDC', 'ILC'; unexpected 'LUAD', 'LUSC'" in err
    other = tmp_path / "other.json"
    other.write_bytes(path.read_bytes())
    code, out, _ = run(["--check", str(other)], capsys)
    assert code == 0 and "class names not checked" in out
    code, _, err = run(["--check", str(other), "--classes", "LUSC,LUAD,X"], capsys)
    assert code == 2 and "missing 'X'" in err


def test_check_warns_on_long_prompts_and_duplicates(tmp_path, capsys):
    data = prompt_dict(("A", "B"))
    data["A"]["A fine 1.1"] = " ".join(["adenocarcinoma"] * 40) + "."
    data["B"]["B fine 2.2"] = data["B"]["B coarse 0"]
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    code, out, _ = run(["--check", str(path), "--classes", "A,B"], capsys)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert any(
        "[CLIP BPE: PLIP, QuiltNet]" in w and "term 'A fine 1.1'" in w and "context length 77" in w
        for w in warnings
    )
    assert any("repeats the explanation of class 'B' term 'B coarse 0'" in w for w in warnings)
    assert out.strip().endswith(f"{len(warnings)} warning(s)")
    # Without context tokens the long prompt still does not fit CLIP's context.
    code, out, _ = run(["--check", str(path), "--classes", "A,B", "--n-ctx", "0"], capsys)
    assert code == 0 and "with n_ctx=0)" in out and "[CLIP BPE: PLIP, QuiltNet]" in out
