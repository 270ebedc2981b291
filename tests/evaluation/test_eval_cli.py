"""`ghostbot eval …` end to end through the real argparse wiring (bots/cli.py mounts evaluation/cli.py)."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from bots.cli import build_parser
from core.settings import Settings
from core.types import Answer, Source
from evaluation.cli import run_eval
from evaluation.io import read_table
from tests.evaluation.conftest import ScriptedJudge, rating
from tests.fakes.openai_server import Reply

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class FakeApp:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.generator = type("G", (), {"name": "scripted", "context_length": 512})()
        self.assistant = self

    async def ask(self, question: str) -> Answer:
        self.asked.append(question)
        return Answer(f"Answer: {question}", [Source(1, "CWE-79", "cwe", "XSS", None, "passage")])


@asynccontextmanager
async def _no_app(settings):
    raise AssertionError("this command must not open the application")
    yield


def main(argv: list[str]) -> int:
    """`ghostbot ARGV` through the real parser (bots/cli.py) and our runner, without opening the app."""
    return asyncio.run(run_eval(build_parser().parse_args(argv), Settings(), _no_app))


def fake_open_app(app: FakeApp, opened: list):
    @asynccontextmanager
    async def open_app(settings):
        opened.append(settings)
        yield app

    return open_app


async def test_judge_example_questions_with_the_bots_pipeline(tmp_path, fake_server, capsys):
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(5 if c != "hallucination" else 4, "fine")]))
    out = tmp_path / "results.csv"
    args = build_parser().parse_args(
        [
            "eval",
            "judge",
            "--input",
            str(EXAMPLES / "questions.csv"),
            "--out",
            str(out),
            "--judge-url",
            fake_server.base_url,
            "--repeats",
            "2",
            "--no-progress",
            "--criteria",
            "accuracy,hallucination",
        ]
    )
    app, opened = FakeApp(), []
    assert await run_eval(args, Settings(), fake_open_app(app, opened)) == 0
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    questions = [r["question"] for r in read_table(EXAMPLES / "questions.csv").rows]
    assert app.asked == questions and len(rows) == len(questions) >= 8
    assert all(r["topic"] and r["reference"] for r in rows)  # input columns kept
    assert all(json.loads(r["sources"])[0]["ref"] == "CWE-79" for r in rows)
    summary = json.loads((tmp_path / "results.summary.json").read_text())
    assert summary["criteria"]["hallucination"]["mean"] == 4
    assert summary["generator"]["name"] == "scripted"
    printed = capsys.readouterr().out
    assert "hallucination" in printed and "results.summary.json" in printed and "results.png" in printed
    assert (tmp_path / "results.png").exists()


def test_judge_given_answers_via_main_never_prints_the_key(
    tmp_path, fake_server, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-topsecret-999")
    fake_server.api_key = "sk-topsecret-999"
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(3)]))
    src = tmp_path / "q.jsonl"
    src.write_text(
        json.dumps({"question": "What is XSS?", "answer": "Script injection."}) + "\n", encoding="utf-8"
    )
    out = tmp_path / "r.csv"
    rc = main(
        [
            "eval",
            "judge",
            "--input",
            str(src),
            "--out",
            str(out),
            "--judge-url",
            fake_server.base_url,
            "--repeats",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    (row,) = csv.DictReader(out.read_text(encoding="utf-8").splitlines())
    assert row["overall_mean"] == "3" and row["answer"] == "Script injection."
    seen = capsys.readouterr()
    text = seen.out + seen.err + caplog.text + (tmp_path / "r.summary.json").read_text()
    assert "sk-topsecret-999" not in text
    assert all(r.headers.get("Authorization") == "Bearer sk-topsecret-999" for r in fake_server.requests)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_judge_error_before_the_app_opens(tmp_path, capsys):
    out = tmp_path / "r.csv"
    args = build_parser().parse_args(
        [
            "eval",
            "judge",
            "--input",
            str(EXAMPLES / "questions.csv"),
            "--out",
            str(out),
            "--judge-url",
            f"http://user:pw@127.0.0.1:{_closed_port()}/v1?key=sk-in-query",
        ]
    )
    opened: list = []
    assert await run_eval(args, Settings(), fake_open_app(FakeApp(), opened)) == 2
    err = capsys.readouterr().err
    assert re.match(r"error: judge at http://127\.0\.0\.1:\d+/v1 is unreachable", err)
    assert "pw" not in err and "sk-in-query" not in err and opened == [] and not out.exists()


def test_bad_criteria_and_bad_file_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "q.csv"
    bad.write_text('question,reference\nok,fine\n"broken,x\n', encoding="utf-8")
    assert (
        main(
            [
                "eval",
                "judge",
                "--input",
                str(bad),
                "--out",
                str(tmp_path / "o.csv"),
                "--judge-url",
                "http://127.0.0.1:9/v1",
            ]
        )
        == 2
    )
    assert "q.csv: row" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "judge",
                "--input",
                str(EXAMPLES / "questions.csv"),
                "--out",
                str(tmp_path / "o.csv"),
                "--judge-url",
                "http://127.0.0.1:9/v1",
                "--criteria",
                "accuracy,politeness",
            ]
        )
        == 2
    )
    assert "unknown criteria politeness" in capsys.readouterr().err


def test_local_judge_via_cli_reports_geval_and_sampled_repeats(tmp_path, tiny_ghostlm):
    _, _, model_dir = tiny_ghostlm
    src = tmp_path / "q.csv"
    src.write_text("question,answer\nWhat is XSS?,Script injection into pages.\n", encoding="utf-8")
    out = tmp_path / "local.csv"
    rc = main(
        [
            "eval",
            "judge",
            "--input",
            str(src),
            "--out",
            str(out),
            "--judge",
            "local",
            "--judge-model-path",
            str(model_dir),
            "--repeats",
            "3",
            "--no-progress",
            "--criteria",
            "accuracy,safety",
        ]
    )
    assert rc == 0
    (row,) = csv.DictReader(out.read_text(encoding="utf-8").splitlines())
    assert 1 <= float(row["accuracy_geval"]) <= 5 and row["accuracy_n"] == "3"
    summary = json.loads((tmp_path / "local.summary.json").read_text())
    assert summary["judge"]["kind"] == "local" and summary["criteria"]["safety"]["geval_mean"] is not None


def test_mcq_local_cli(tmp_path, tiny_ghostlm, capsys):
    _, _, model_dir = tiny_ghostlm
    items = tmp_path / "items.csv"
    rc = main(
        [
            "eval",
            "mcq",
            "--input",
            str(EXAMPLES / "mcq_sample.jsonl"),
            "--model-path",
            str(model_dir),
            "--out",
            str(items),
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 6 and rep["chance"] == 0.25 and len(rep["per_order_accuracy"]) == 2
    assert rep["correct"] == round(rep["accuracy"] * 6)
    rows = list(csv.DictReader(items.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 6 and all(len(json.loads(r["scores"])) == 4 for r in rows)


def test_mcq_column_mapping_and_bad_answer_letter(tmp_path, capsys, fake_server):
    src = tmp_path / "bench.tsv"
    src.write_text(
        "prompt\to1\to2\to3\to4\tgold\nWhich port is HTTPS?\t80\t443\t22\t25\tB\n"
        "Which CWE is XSS?\tCWE-79\tCWE-89\tCWE-22\tCWE-20\tA\n",
        encoding="utf-8",
    )

    def letter_for(req) -> Reply:
        text = req.messages[-1]["content"]
        right = "443" if "HTTPS" in text else "CWE-79"
        if "CWE" in text and "A. CWE-20" in text:
            return Reply("I think the answer is D")  # prose: strictly unparsed
        return Reply(re.search(rf"([A-D])\. {right}\n", text + "\n").group(1))

    fake_server.set_reply(letter_for)
    rc = main(
        [
            "eval",
            "mcq",
            "--input",
            str(src),
            "--backend",
            "openai",
            "--url",
            fake_server.base_url,
            "--question-col",
            "prompt",
            "--option-cols",
            "o1,o2,o3,o4",
            "--answer-col",
            "gold",
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["accuracy"] == 1.0 and rep["unparsed_replies"] == 1 and rep["per_order_accuracy"] == [1.0, 0.5]
    src.write_text("prompt\to1\to2\to3\to4\tgold\nQ\ta\tb\tc\td\tE\n", encoding="utf-8")
    assert (
        main(
            [
                "eval",
                "mcq",
                "--input",
                str(src),
                "--question-col",
                "prompt",
                "--option-cols",
                "o1,o2,o3,o4",
                "--answer-col",
                "gold",
                "--model-path",
                "x",
            ]
        )
        == 2
    )
    assert "bench.tsv: row 2, column 'gold': answer must be one of A, B, C, D" in capsys.readouterr().err


def test_compare_two_result_files_via_cli(tmp_path, fake_server, capsys):
    fake_server.set_reply(lambda req: Reply(json.dumps({"winner": "A", "reason": "first"})))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("question,answer\nQ1,x\nQ2,y\n", encoding="utf-8")
    b.write_text("question,answer\nQ2,z\nQ1,w\n", encoding="utf-8")
    out = tmp_path / "cmp.csv"
    assert (
        main(
            [
                "eval",
                "compare",
                "--a",
                str(a),
                "--b",
                str(b),
                "--out",
                str(out),
                "--judge-url",
                fake_server.base_url,
                "--criteria",
                "accuracy",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "cmp.summary.json").read_text())
    assert summary["criteria"]["accuracy"] == {
        "win": 0,
        "tie": 2,
        "loss": 0,
        "unparsed": 0,
        "a_win_rate": 0.5,
    }
    assert "accuracy" in capsys.readouterr().out


async def test_compare_two_generator_configurations(tmp_path, fake_server):
    """--a-set/--b-set: each configuration answers every question through its own app; then pairwise judging."""

    def prefer_extractive(req) -> Reply:
        text = req.messages[-1]["content"]
        first = re.search(r"ANSWER A:\n(.*?)\n", text).group(1)
        return Reply(json.dumps({"winner": "A" if first.startswith("extractive") else "B", "reason": "r"}))

    fake_server.set_reply(prefer_extractive)
    seen: list[str] = []

    @asynccontextmanager
    async def open_app(settings):
        seen.append(settings.generator)
        app = FakeApp()

        async def ask(q: str) -> Answer:
            return Answer(f"{settings.generator} says {q}")

        app.ask = ask  # type: ignore[method-assign]
        yield app

    src = tmp_path / "q.csv"
    src.write_text("question\nWhat is XSS?\nWhat is SSRF?\n", encoding="utf-8")
    args = build_parser().parse_args(
        [
            "eval",
            "compare",
            "--input",
            str(src),
            "--a-set",
            "generator=extractive",
            "--b-set",
            "generator=openai",
            "--out",
            str(tmp_path / "c.csv"),
            "--judge-url",
            fake_server.base_url,
            "--criteria",
            "accuracy,safety",
            "--no-progress",
        ]
    )
    assert await run_eval(args, Settings(), open_app) == 0
    assert seen == ["extractive", "openai"]
    summary = json.loads((tmp_path / "c.summary.json").read_text())
    assert summary["criteria"]["overall"]["win"] == 2 and summary["criteria"]["accuracy"]["win"] == 2
    assert summary["a"]["generator"] == "extractive" and summary["b"]["generator"] == "openai"
    args.a_set = ["nonsense=1"]
    assert await run_eval(args, Settings(), open_app) == 2


async def _seed_feedback(url: str) -> None:
    from storage import ConversationKey, Database, UserRef

    db = await Database.open(url)
    try:
        for n, (platform, q, a, r) in enumerate(
            [
                ("telegram", "What is XSS?", "Script injection.", 1),
                ("discord", "What is CSRF?", "Forged requests.", -1),
            ]
        ):
            key = ConversationKey(platform, f"chat{n}", f"user{n}")
            await db.conversations.commit_exchange(
                platform=platform,
                event_id=f"e{n}",
                key=key,
                user=UserRef(platform, f"user{n}", "U"),
                user_text=q,
                user_tokens=3,
                assistant_text=a,
                assistant_tokens=3,
                sources=[],
                user_platform_message_id=None,
                assistant_platform_message_ids=[f"m{n}"],
            )
            msg = await db.conversations.last_assistant(key)
            await db.feedback.record(platform=platform, user_id=f"user{n}", message_id=msg.id, rating=r)
    finally:
        await db.close()


def test_export_feedback_is_a_judge_input(tmp_path, capsys):
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    asyncio.run(_seed_feedback(url))
    out = tmp_path / "feedback.csv"
    assert main(["eval", "export-feedback", "--out", str(out), "--database-url", url]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["written"] == 2 and counts["thumbs_down"] == 1
    table = read_table(out, required=("question", "answer"))
    assert [(r["question"], r["answer"], r["rating"], r["platform"]) for r in table.rows] == [
        ("What is XSS?", "Script injection.", "+1", "telegram"),
        ("What is CSRF?", "Forged requests.", "-1", "discord"),
    ]
    assert all(r["created_at"] for r in table.rows)
    assert main(["eval", "export-feedback", "--out", str(out), "--database-url", url, "--only", "down"]) == 0
    assert [r["question"] for r in read_table(out).rows] == ["What is CSRF?"]


async def test_answers_come_from_the_real_pipeline_with_retrieval(tmp_path, fake_server):
    """The real Assistant (FTS retrieval + extractive generator) answers; its sources are recorded."""
    from core.assistant import Assistant
    from core.generators import build_generator
    from core.retrieval import create_retrieval
    from storage import Database

    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "xss.md").write_text(
        "# Cross-site scripting\nCWE-79: untrusted input placed in a page runs as script. "
        "Prevent it with output encoding and a Content Security Policy.\n",
        encoding="utf-8",
    )
    settings = Settings(
        generator="extractive",
        dense_retrieval=False,
        packs=[],
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
    )

    @asynccontextmanager
    async def open_app(s):
        db = await Database.open(s.database_url)
        try:
            retriever, indexer = create_retrieval(s, db.sessions)
            await indexer.index_paths([kb])
            app = FakeApp()
            app.generator = build_generator(s)
            app.assistant = Assistant(retriever, app.generator, s)
            yield app
        finally:
            await db.close()

    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(4)]))
    src = tmp_path / "q.csv"
    src.write_text("question\nHow do I prevent cross-site scripting?\n", encoding="utf-8")
    out = tmp_path / "r.csv"
    args = build_parser().parse_args(
        [
            "eval",
            "judge",
            "--input",
            str(src),
            "--out",
            str(out),
            "--judge-url",
            fake_server.base_url,
            "--repeats",
            "1",
            "--criteria",
            "hallucination",
            "--no-progress",
        ]
    )
    assert await run_eval(args, settings, open_app) == 0
    (row,) = csv.DictReader(out.read_text(encoding="utf-8").splitlines())
    assert "Content Security Policy" in row["answer"]
    assert json.loads(row["sources"])[0]["title"] == "Cross-site scripting"
    judge_prompt = next(r for r in fake_server.requests if r.body and "messages" in r.body).messages[-1][
        "content"
    ]
    assert "RETRIEVED PASSAGES" in judge_prompt and "CWE-79: untrusted input" in judge_prompt
