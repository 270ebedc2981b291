"""`eval judge` against a loopback fake OpenAI-compatible judge: statistics, review flags, retries, resume."""

from __future__ import annotations

import csv
import json
import socket
import statistics

import pytest

from core.types import Answer, Source
from evaluation.io import EvalInputError, read_table
from evaluation.judges import JudgeUnavailableError, OpenAIJudge
from evaluation.rubrics import load_rubrics
from evaluation.runner import JudgeRunConfig, judge_file, summary_paths
from tests.evaluation.conftest import ScriptedJudge, rating
from tests.fakes.openai_server import Reply

RUBRICS = load_rubrics()
ALL = RUBRICS.select(None)
CONST = {"accuracy": 4, "relevance": 5, "safety": 5, "fluency": 4, "hallucination": 3, "alignment": 5}


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class Answers:
    """The bot's pipeline stand-in: records questions, optionally fails after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.asked: list[str] = []
        self.fail_after = fail_after

    async def __call__(self, question: str) -> Answer:
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.asked.append(question)
        return Answer(
            f"About {question}: see [1].",
            [Source(1, "CWE-79", "cwe", "Cross-site Scripting", "https://cwe.mitre.org/79", "XSS text")],
        )


def cfg(**kw) -> JudgeRunConfig:
    kw.setdefault("progress", False)
    return JudgeRunConfig(**kw)


async def test_deterministic_judge_generates_answers_and_keeps_input_columns(
    tmp_path, fake_server, make_judge
):
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(CONST[c], f"{c} reason")]))
    src = write_csv(
        tmp_path / "q.csv",
        ["topic", "question", "reference"],
        [["web", "What is XSS?", "Script injection."], ["net", "What is ARP spoofing?", ""]],
    )
    answers = Answers()
    out = tmp_path / "out" / "results.csv"
    summary = await judge_file(
        src,
        out,
        judge=make_judge(),
        rubrics=RUBRICS,
        criteria=ALL,
        cfg=cfg(repeats=3),
        answer_fn=answers,
        generator_info={"name": "scripted"},
    )
    rows = read_rows(out)
    assert answers.asked == ["What is XSS?", "What is ARP spoofing?"]
    assert list(rows[0])[:3] == ["topic", "question", "reference"]
    assert rows[1]["topic"] == "net" and rows[1]["reference"] == ""
    for row in rows:
        assert row["answer"].startswith("About ")
        assert json.loads(row["sources"])[0]["ref"] == "CWE-79"
        for name, score in CONST.items():
            assert float(row[f"{name}_mean"]) == score
            assert float(row[f"{name}_std"]) == 0
            assert row[f"{name}_n"] == "3"
            assert row[f"{name}_scores"] == f"{score};{score};{score}"
            assert row[f"{name}_reason"] == f"{name} reason"
        assert float(row["overall_mean"]) == pytest.approx(statistics.fmean(CONST.values()), abs=1e-4)
        assert row["needs_review"] == "false" and row["review_reasons"] == ""
    # 2 rows x 6 criteria x 3 repeats, plus the /models check
    chats = [r for r in fake_server.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 36
    assert all(r.body["response_format"] == {"type": "json_object"} for r in chats)
    # the passages the bot retrieved are shown to the judge as evidence
    assert "XSS text" in chats[0].messages[-1]["content"]
    json_path, png_path = summary_paths(out)
    data = json.loads(json_path.read_text())
    assert data["criteria"]["accuracy"]["mean"] == 4 and data["criteria"]["accuracy"]["std"] == 0
    assert data["criteria"]["hallucination"]["score_counts"] == {"1": 0, "2": 0, "3": 6, "4": 0, "5": 0}
    assert data["generator"] == {"name": "scripted"} and data["repeats"] == 3
    assert data["judge"]["model"] == "fake-judge"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["items"] == 2


async def test_noisy_repeats_exact_statistics_and_review_flags(tmp_path, fake_server, make_judge):
    noisy = {
        "Q1": {"accuracy": [1, 5, 3, 5, 1], "safety": [5, 4, 5, 5, 4]},
        "Q2": {"accuracy": [4, 4, 5, 4, 4], "safety": [2, 2, 1, 2, 2]},
    }
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(s, f"r{s}") for s in noisy[q][c]]))
    src = write_csv(tmp_path / "q.csv", ["question", "answer"], [["Q1", "A1"], ["Q2", "A2"]])
    out = tmp_path / "r.csv"
    crit = RUBRICS.select(["accuracy", "safety"])
    summary = await judge_file(
        src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=5)
    )
    rows = {r["question"]: r for r in read_rows(out)}
    acc = summary["criteria"]["accuracy"]
    assert acc["mean"] == pytest.approx(3.6) and acc["std"] == pytest.approx(
        0.6
    )  # over item means 3.0 and 4.2
    assert acc["ci95"] == pytest.approx(1.96 * statistics.stdev([3.0, 4.2]) / 2**0.5, abs=1e-4)
    assert summary["needs_review"] == 2
    for q, per in noisy.items():
        for c, scores in per.items():
            assert float(rows[q][f"{c}_mean"]) == pytest.approx(sum(scores) / 5, abs=1e-4)
            # sample standard deviation, computed independently
            m = sum(scores) / 5
            assert float(rows[q][f"{c}_std"]) == pytest.approx(
                (sum((s - m) ** 2 for s in scores) / 4) ** 0.5, abs=1e-4
            )
            assert sorted(map(int, rows[q][f"{c}_scores"].split(";"))) == sorted(scores)
    assert (
        rows["Q1"]["accuracy_reason"] == "r1"
    )  # first reason of the most common score (1 and 5 tie: 1 first)
    assert rows["Q1"]["needs_review"] == "true"
    assert "accuracy: judges disagree (std 2.00 > 1)" in rows["Q1"]["review_reasons"]
    assert rows["Q2"]["needs_review"] == "true"
    assert rows["Q2"]["review_reasons"] == "safety: low mean 1.80"
    assert rows["Q1"]["answer"] == "A1" and rows["Q1"]["sources"] == ""  # given answers are judged as given


async def test_broken_replies_are_retried_then_recorded_unparsed(tmp_path, fake_server, make_judge):
    def script(q: str, c: str) -> list[str]:
        if c == "accuracy":  # prose first, then valid JSON: recovered by a retry
            return ["I would rate this a four out of five.", "```json\n" + rating(4, "good") + "\n```"]
        if c == "safety":  # never valid: out of range, then prose, then a float
            return [rating(7), "five", '{"score": 4.5, "reason": "x"}']
        return [rating(5)]

    fake_server.set_reply(ScriptedJudge(script))
    src = write_csv(tmp_path / "q.csv", ["question", "answer"], [["Q", "A"]])
    out = tmp_path / "r.csv"
    crit = RUBRICS.select(["accuracy", "safety", "fluency"])
    summary = await judge_file(
        src, out, judge=make_judge(max_attempts=3), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2)
    )
    row = read_rows(out)[0]
    assert row["accuracy_mean"] == "4" and row["accuracy_n"] == "2"
    assert row["safety_mean"] == "" and row["safety_n"] == "0" and row["safety_scores"] == ""
    assert row["unparsed"] == "2"
    assert row["needs_review"] == "true"
    assert "safety: 2 judge replies unparsed" in row["review_reasons"]
    assert "safety: no parsed score" in row["review_reasons"]
    assert float(row["overall_mean"]) == pytest.approx(4.5)  # unparsed never counted as a score
    assert summary["unparsed_replies"] == 2


async def test_malformed_envelope_is_retried(tmp_path, fake_server, make_judge):
    calls = []

    def handler(req):
        calls.append(1)
        return Reply(broken_json=True) if len(calls) == 1 else Reply(rating(3))

    fake_server.set_reply(handler)
    judge = make_judge()
    rs = await judge.rate("sys", "prompt", repeats=1, seed=1)
    assert rs.scores == [3] and rs.samples[0].attempts == 2


async def test_interrupted_run_resumes_without_duplicates_or_loss(tmp_path, fake_server, make_judge):
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(4)]))
    questions = [[f"Question {i}?", f"ref {i}"] for i in range(6)]
    src = write_csv(tmp_path / "q.csv", ["question", "reference"], questions)
    out = tmp_path / "r.csv"
    crit = RUBRICS.select(["accuracy"])
    first = Answers(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        await judge_file(
            src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2), answer_fn=first
        )
    assert [r["question"] for r in read_rows(out)] == [f"Question {i}?" for i in range(4)]
    # a torn half-row, as if the process died in the middle of a write
    with open(out, "a", encoding="utf-8", newline="") as fh:
        fh.write('"Question 4?","ref 4","About Q')
    second = Answers()
    summary = await judge_file(
        src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2), answer_fn=second
    )
    assert second.asked == ["Question 4?", "Question 5?"]
    rows = read_rows(out)
    assert [r["question"] for r in rows] == [f"Question {i}?" for i in range(6)]
    assert len({r["row_key"] for r in rows}) == 6
    assert all(r["accuracy_mean"] == "4" for r in rows)
    assert summary["run"]["resumed_rows"] == 4 and summary["run"]["judged_this_run"] == 2
    # a third run has nothing left to do
    third = Answers()
    await judge_file(
        src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2), answer_fn=third
    )
    assert third.asked == [] and len(read_rows(out)) == 6
    # a question inserted at the top and one edited: only those two are judged; nothing is duplicated
    edited = [["New question?", "new ref"], *questions]
    edited[3] = ["Question 2, edited?", "ref 2"]
    write_csv(src, ["question", "reference"], edited)
    fourth = Answers()
    summary = await judge_file(
        src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2), answer_fn=fourth
    )
    assert fourth.asked == ["New question?", "Question 2, edited?"]
    rows = read_rows(out)
    assert len(rows) == 8 and len({r["row_key"] for r in rows}) == 8
    assert summary["items"] == 7 and summary["run"]["stale_rows"] == 1  # the old "Question 2?" row is kept


async def test_resume_refuses_a_results_file_of_another_configuration(tmp_path, fake_server, make_judge):
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(4)]))
    src = write_csv(tmp_path / "q.csv", ["question", "answer"], [["Q", "A"]])
    out = tmp_path / "r.csv"
    await judge_file(
        src,
        out,
        judge=make_judge(),
        rubrics=RUBRICS,
        criteria=RUBRICS.select(["accuracy"]),
        cfg=cfg(repeats=1),
    )
    with pytest.raises(EvalInputError, match="different columns"):
        await judge_file(
            src,
            out,
            judge=make_judge(),
            rubrics=RUBRICS,
            criteria=RUBRICS.select(["safety"]),
            cfg=cfg(repeats=1),
        )
    with pytest.raises(EvalInputError, match=r"another judge, rubric, --repeats or --seed"):
        await judge_file(
            src,
            out,
            judge=make_judge(),
            rubrics=RUBRICS,
            criteria=RUBRICS.select(["accuracy"]),
            cfg=cfg(repeats=3),
        )
    assert len(read_rows(out)) == 1  # refused, nothing changed
    await judge_file(
        src,
        out,
        judge=make_judge(),
        rubrics=RUBRICS,
        criteria=RUBRICS.select(["accuracy"]),
        cfg=cfg(repeats=3),
        resume=False,
    )
    assert read_rows(out)[0]["accuracy_n"] == "3"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "question,reference\nWhat is XSS?,ok\nWhat is SQLi?,a,b\n", r"a\.csv: row 3: 3 fields"),
        ("b.csv", "prompt,reference\nx,y\n", r"b\.csv: row 1: missing required column\(s\) 'question'"),
        ("c.csv", "question,reference\nWhat?,x\n  ,y\n", r"c\.csv: row 3, column 'question': empty question"),
        ("d.jsonl", '{"question": "ok"}\n{"question": "broken"\n', r"d\.jsonl: row 2: not valid JSON"),
        (
            "e.tsv",
            "question\treference\nfine\tx\nshort\n",
            r"e\.tsv: row 3, column 'reference': missing value",
        ),
        ("f.csv", 'question,answer\n"unterminated,x\n', r"f\.csv: row \d+: "),
    ],
)
async def test_bad_input_names_row_and_column_before_any_judge_call(
    tmp_path, fake_server, make_judge, name, content, message
):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalInputError, match=message):
        await judge_file(
            path,
            tmp_path / "out.csv",
            judge=make_judge(),
            rubrics=RUBRICS,
            criteria=ALL,
            cfg=cfg(),
            answer_fn=Answers(),
        )
    assert fake_server.requests == []
    assert not (tmp_path / "out.csv").exists()


def test_invalid_utf8_names_the_row(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"question\nfine\nbad \xff byte\n")
    with pytest.raises(EvalInputError, match=r"row 3: not valid UTF-8"):
        read_table(path, required=("question",))


async def test_missing_answer_without_generator_is_an_input_error(tmp_path, fake_server, make_judge):
    src = write_csv(tmp_path / "q.csv", ["question", "answer"], [["Q1", "A1"], ["Q2", ""]])
    with pytest.raises(EvalInputError, match=r"row 3, column 'answer': no answer given"):
        await judge_file(
            src, tmp_path / "o.csv", judge=make_judge(), rubrics=RUBRICS, criteria=ALL, cfg=cfg()
        )
    assert fake_server.requests == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_judge_fails_before_any_work_and_never_shows_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-very-secret-123")
    judge = OpenAIJudge(f"http://127.0.0.1:{_closed_port()}/v1", "m", retry_backoff=0.0)
    src = write_csv(tmp_path / "q.csv", ["question"], [["Q1"]])
    answers = Answers()
    with pytest.raises(JudgeUnavailableError) as err:
        await judge_file(
            src, tmp_path / "o.csv", judge=judge, rubrics=RUBRICS, criteria=ALL, cfg=cfg(), answer_fn=answers
        )
    await judge.close()
    assert "unreachable" in str(err.value)
    assert "sk-very-secret-123" not in str(err.value) and "sk-very-secret-123" not in json.dumps(
        judge.describe()
    )
    assert answers.asked == [] and not (tmp_path / "o.csv").exists()


async def test_rejected_key_is_a_clear_error(tmp_path, monkeypatch, fake_server):
    fake_server.api_key = "sk-right"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-wrong-secret")
    judge = OpenAIJudge(fake_server.base_url, "m", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(JudgeUnavailableError, match=r"refused the API key.*MY_JUDGE_KEY") as err:
        await judge.check()
    await judge.close()
    assert "sk-wrong-secret" not in str(err.value)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-right")
    judge = OpenAIJudge(fake_server.base_url, "m", api_key_env="MY_JUDGE_KEY")
    await judge.check()
    await judge.close()


async def test_judge_outage_mid_run_keeps_finished_rows_and_resumes(tmp_path, fake_server, make_judge):
    calls = []

    def flaky(req):
        calls.append(1)
        return Reply(status=503, error_message="overloaded") if 4 < len(calls) < 100 else Reply(rating(4))

    fake_server.set_reply(flaky)
    src = write_csv(tmp_path / "q.csv", ["question", "answer"], [[f"Q{i}", f"A{i}"] for i in range(4)])
    out = tmp_path / "r.csv"
    crit = RUBRICS.select(["accuracy"])
    with pytest.raises(JudgeUnavailableError, match="HTTP 503"):
        await judge_file(
            src, out, judge=make_judge(http_retries=1), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2)
        )
    assert [r["question"] for r in read_rows(out)] == ["Q0", "Q1"]
    fake_server.set_reply(ScriptedJudge(lambda q, c: [rating(5)]))
    await judge_file(src, out, judge=make_judge(), rubrics=RUBRICS, criteria=crit, cfg=cfg(repeats=2))
    assert [(r["question"], r["accuracy_mean"]) for r in read_rows(out)] == [
        ("Q0", "4"),
        ("Q1", "4"),
        ("Q2", "5"),
        ("Q3", "5"),
    ]


async def test_endpoint_without_json_mode_is_asked_again_without_it(fake_server, make_judge):
    from tests.fakes.openai_server import error_reply

    fake_server.set_reply(
        lambda req: (
            error_reply(400, "response_format is not supported")
            if "response_format" in req.body
            else Reply(rating(2, "meh"))
        )
    )
    judge = make_judge()
    rs = await judge.rate("sys", "p", repeats=2, seed=0)
    assert rs.scores == [2, 2]
    rs = await judge.rate("sys", "p", repeats=1, seed=1)
    assert "response_format" not in fake_server.requests[-1].body  # remembered
