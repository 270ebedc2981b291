"""Documents sent to the Telegram bot: real python-telegram-bot, getFile and the file download from the fake,
the real core and storage. Private to their sender, only in DMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.retrieval import DenseIndex, Embedder, dense_directory
from storage.knowledge import Chunk, Document
from tests.e2e.conftest import Harness
from tests.e2e.test_telegram_bot import ask, command, eventually, reply
from tests.pdfs import flate_bomb_pdf, text_pdf

ALICE, BOB = 4242, 5151
GROUP = -1001234
SECRET = "Zanzibar incident runbook: rotate the quokka credentials, then page the night owl team."
QUESTION = "What do we rotate in the Zanzibar incident?"


async def send_document(
    h: Harness, chat: dict[str, Any], user: dict[str, Any], count: int, **kwargs: Any
) -> list[str]:
    """Send a document; return the texts of the bot's next `count` messages in that chat."""
    before = len(h.fake.bot_messages(chat["id"]))
    update_id = h.fake.send_document(chat=chat, user=user, **kwargs)
    messages = await reply(h.fake, chat["id"], before, final=False, count=count)
    await eventually(lambda: h.app.db.conversations.is_processed("telegram", str(update_id)))
    return [m.text for m in messages]


async def stored(h: Harness) -> tuple[int, int]:
    """(knowledge documents, chunks) in the database."""
    async with h.app.db.sessions() as session:
        docs = (await session.execute(select(func.count(Document.id)))).scalar_one()
        chunks = (await session.execute(select(func.count(Chunk.id)))).scalar_one()
    return int(docs), int(chunks)


async def test_an_uploaded_pdf_answers_its_owner_in_dms_only(bot_factory: Any) -> None:
    async with bot_factory(index={"shared.md": "# Shared\nGeneral notes about incident response."}) as h:
        fake = h.fake
        alice, alice_dm = fake.user(ALICE, "Alice"), fake.private_chat(ALICE)
        bob, bob_dm = fake.user(BOB, "Bob"), fake.private_chat(BOB)
        group = fake.group_chat(GROUP)
        pdf = text_pdf(["Cover page of the incident handbook.", SECRET], title="Runbook")
        texts = await send_document(
            h, alice_dm, alice, 2, data=pdf, file_name="runbook.pdf", mime_type="application/pdf"
        )
        assert texts[0] == "Indexing “runbook.pdf”… 2 chunks"
        assert texts[1].startswith("Indexed “runbook.pdf” (2 pages, 2 chunks). It is private to you")
        assert "Ask me about it here" in texts[1] and "/docs" in texts[1]
        assert [c.params["file_id"] for c in fake.calls_to("getFile")] == list(fake.files)
        assert fake.calls_to("download")

        # Alice, in her DM: the answer cites her document.
        answer = (await ask(h, alice_dm, alice, QUESTION))[-1].text
        assert "runbook.pdf#2" in answer
        assert any(p.ref == "runbook.pdf#2" for p in h.generator.specs[-1].passages)
        # Alice, in a group: never.
        answer = (await ask(h, group, alice, f"/ask {QUESTION}"))[-1].text
        assert "runbook.pdf" not in answer
        assert all("runbook" not in p.ref for p in h.generator.specs[-1].passages)
        # Bob, in his DM: never.
        answer = (await ask(h, bob_dm, bob, QUESTION))[-1].text
        assert "runbook.pdf" not in answer
        assert all("runbook" not in p.ref for p in h.generator.specs[-1].passages)

        listing = await command(h, alice_dm, alice, "/docs")
        assert "1. runbook.pdf — 2 chunks" in listing
        assert "no documents" in await command(h, bob_dm, bob, "/docs")
        assert "direct message" in await command(h, group, alice, "/docs")  # never listed in a group
        assert await command(h, alice_dm, alice, "/docs delete 2") == (
            "There is no document 2; /docs lists yours (1–1)."
        )
        assert await command(h, alice_dm, alice, "/docs delete 1") == "Deleted “runbook.pdf” (2 chunks)."
        assert await stored(h) == (1, 1)  # the shared folder's document stays
        answer = (await ask(h, alice_dm, alice, QUESTION))[-1].text
        assert "runbook.pdf" not in answer


async def test_a_caption_question_is_answered_from_the_new_document(bot_factory: Any) -> None:
    async with bot_factory() as h:
        fake = h.fake
        alice, alice_dm = fake.user(ALICE), fake.private_chat(ALICE)
        before = len(fake.bot_messages(ALICE))
        fake.send_document(
            chat=alice_dm, user=alice, data=SECRET.encode(), file_name="runbook.txt", caption=QUESTION
        )
        messages = await reply(fake, ALICE, before, count=3)  # progress, confirmation, the answer
        assert messages[1].text.startswith("Indexed “runbook.txt”")
        assert messages[-1].text.startswith(f"Answer to: {QUESTION}") and "runbook.txt#1" in messages[-1].text
        # a refused file gets no answer to its caption
        before = len(fake.bot_messages(ALICE))
        fake.send_document(chat=alice_dm, user=alice, data=b"MZ\x00\x00", file_name="x.pdf", caption=QUESTION)
        [refusal] = await reply(fake, ALICE, before, final=False)
        assert "Windows program" in refusal.text
        await ask(h, alice_dm, alice, "and what else?")
        assert [spec.question for spec in h.generator.specs] == [QUESTION, "and what else?"]


async def test_forget_removes_the_documents(bot_factory: Any) -> None:
    async with bot_factory() as h:
        fake = h.fake
        alice, alice_dm = fake.user(ALICE), fake.private_chat(ALICE)
        await send_document(h, alice_dm, alice, 2, data=SECRET.encode(), file_name="notes.md")
        await send_document(h, alice_dm, alice, 2, data=b"<html><p>more notes</p></html>", file_name="x")
        assert await stored(h) == (2, 2)
        reply_text = await command(h, alice_dm, alice, "/forget")
        assert "2 documents with their index" in reply_text
        assert await stored(h) == (0, 0)
        assert "runbook" not in (await ask(h, alice_dm, alice, QUESTION))[-1].text


async def test_a_group_document_needs_a_caption_that_addresses_the_bot(bot_factory: Any) -> None:
    async with bot_factory() as h:
        fake = h.fake
        alice, group = fake.user(ALICE), fake.group_chat(GROUP)
        fake.send_document(chat=group, user=alice, data=b"group chatter", file_name="a.txt", caption="fyi")
        fake.send_document(
            chat=group, user=alice, data=b"other bot", file_name="b.txt", caption="/ask@other_bot read"
        )
        # addressed: a caption mention
        texts = await send_document(
            h,
            group,
            alice,
            2,
            data=SECRET.encode(),
            file_name="c.txt",
            caption=f"@{fake.username} index this",
        )
        assert "in a direct message" in texts[1] and "never use your documents in group answers" in texts[1]
        texts = await send_document(
            h, group, alice, 2, data=b"more notes here", file_name="d.txt", caption="/ask"
        )
        assert texts[0].startswith("Indexing “d.txt”")
        assert len(fake.calls_to("getFile")) == 2  # the unaddressed ones were never even downloaded
        assert await stored(h) == (2, 2)


async def test_bad_files_get_a_clear_reply_and_store_nothing(bot_factory: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            dict(data=b"MZ\x90\x00" + b"\x00" * 64, file_name="invoice.pdf", mime_type="application/pdf"),
            "this file is a Windows program",
        ),
        (
            dict(data=text_pdf([SECRET], password="hunter2"), file_name="locked.pdf"),
            "password-protected",
        ),
        (dict(data=flate_bomb_pdf(), file_name="bomb.pdf"), "decompression bomb"),
        (dict(data=b"\xff\xfe broken", file_name="notes.txt"), "not valid UTF-8"),
        (dict(data=b"   \n", file_name="empty.txt"), "couldn't find any text"),
        (dict(data=b"small", file_name="big.txt", declared_size=50 * 1024 * 1024), "too large (50.0 MB)"),
        (
            dict(data=b"z" * (2 * 1024 * 1024), file_name="big2.txt", declared_size=10),
            "too large (more than 1 MB)",
        ),
    ]
    async with bot_factory(max_upload_mb=1) as h:
        fake = h.fake
        alice, alice_dm = fake.user(ALICE), fake.private_chat(ALICE)
        replies = []
        for kwargs, expected in cases:
            [text] = await send_document(h, alice_dm, alice, 1, **kwargs)
            replies.append(text)
            assert expected in text, (kwargs["file_name"], text)
        assert await stored(h) == (0, 0)
        assert "no documents" in await command(h, alice_dm, alice, "/docs")
        # the declared-too-large file was never fetched
        fetched = {c.params["file_id"] for c in fake.calls_to("getFile")}
        assert len(fetched) == len(cases) - 1


def tiny_encoder(folder: Path) -> Path:
    """A random 1-layer BERT with a letters-only WordPiece vocabulary, saved like a real encoder folder
    (EMBEDDER_PATH): the dense path and the embedding matrix run for real, in a second, offline."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.slow  # importing transformers takes several seconds
async def test_forget_removes_the_documents_chunks_and_embeddings(bot_factory: Any, tmp_path: Path) -> None:
    encoder = tiny_encoder(tmp_path / "encoder")
    async with bot_factory(dense_retrieval=True, embedder_path=encoder) as h:
        fake = h.fake
        alice, alice_dm = fake.user(ALICE), fake.private_chat(ALICE)
        bob, bob_dm = fake.user(BOB), fake.private_chat(BOB)
        await send_document(h, alice_dm, alice, 2, data=SECRET.encode(), file_name="runbook.txt")
        await send_document(h, bob_dm, bob, 2, data=b"bob keeps his own notes", file_name="bob.txt")
        matrix = DenseIndex(dense_directory(h.settings.data_dir, Embedder(encoder)))
        assert len(matrix.entries()) == 2 and await stored(h) == (2, 2)
        assert "runbook.txt#1" in (await ask(h, alice_dm, alice, QUESTION))[-1].text

        assert "1 documents with their index" in await command(h, alice_dm, alice, "/forget")
        assert await stored(h) == (1, 1)
        async with h.app.db.sessions() as session:
            [bob_chunk] = (await session.execute(select(Chunk.id))).scalars().all()
        assert set(matrix.entries()) == {bob_chunk}  # Alice's embeddings are gone, Bob's stay
        assert "runbook" not in (await ask(h, alice_dm, alice, QUESTION))[-1].text
