"""Access policy, rate limiter and text sanitising (pure units)."""

from __future__ import annotations

from core.access import AccessPolicy
from core.prompt import history_turns, sanitize_text
from core.ratelimit import RateLimiter, slow_down_message
from core.settings import Settings
from core.types import ChatKind, Incoming


def msg(
    user: str = "1",
    chat: str = "1",
    *,
    platform: str = "telegram",
    group: bool = False,
    guild: str | None = None,
    roles: tuple[str, ...] = (),
) -> Incoming:
    return Incoming(
        platform=platform,
        event_id="e",
        chat_id=chat,
        chat_kind=ChatKind.GROUP if group else ChatKind.DM,
        user_id=user,
        user_name="u",
        text="hi",
        guild_id=guild,
        role_ids=roles,
    )


def test_everyone_allowed_by_default() -> None:
    assert AccessPolicy().check(msg()).allowed


def test_user_lists_with_and_without_platform_prefix() -> None:
    policy = AccessPolicy(allowed_users={"telegram:1", "7"}, blocked_users={"discord:7"})
    assert policy.check(msg("1")).allowed
    assert not policy.check(msg("1", platform="discord")).allowed  # "telegram:1" is only telegram's user 1
    assert policy.check(msg("7")).allowed  # bare id: every platform …
    assert not policy.check(msg("7", platform="discord")).allowed  # … but a block beats an allow
    assert not policy.check(msg("2")).allowed


def test_chat_lists() -> None:
    policy = AccessPolicy(allowed_chats={"-100"}, blocked_chats={"telegram:-200"})
    assert policy.check(msg("1", "-100", group=True)).allowed
    assert not policy.check(msg("1", "-300", group=True)).allowed
    assert policy.check(msg("1", "1")).allowed  # DMs are governed by the user lists
    assert not AccessPolicy(blocked_chats={"-200"}).check(msg("1", "-200", group=True)).allowed


def test_admins_bypass_every_list() -> None:
    policy = AccessPolicy(
        allowed_users={"1"}, blocked_users={"9"}, blocked_chats={"-5"}, admin_users={"telegram:9"}
    )
    assert policy.check(msg("9", "-5", group=True)).allowed and policy.is_admin("telegram", "9")
    assert not policy.is_admin("discord", "9")
    assert policy.user_allowed("telegram", "9") and not policy.user_allowed("telegram", "2")


def test_discord_guild_channel_role_lists() -> None:
    policy = AccessPolicy(
        discord_allowed_guilds={"g1"}, discord_allowed_channels={"c1", "c2"}, discord_allowed_roles={"r1"}
    )
    ok = msg("1", "c1", platform="discord", group=True, guild="g1", roles=("r0", "r1"))
    assert policy.check(ok).allowed
    assert not policy.check(msg("1", "c1", platform="discord", group=True, guild="g2", roles=("r1",))).allowed
    assert not policy.check(msg("1", "c9", platform="discord", group=True, guild="g1", roles=("r1",))).allowed
    assert not policy.check(msg("1", "c1", platform="discord", group=True, guild="g1", roles=("r0",))).allowed
    assert policy.check(msg("1", "dm", platform="discord")).allowed  # DMs have no guild
    assert policy.check(msg("1", "c9", group=True)).allowed  # Discord lists do not affect Telegram


def test_policy_from_settings_env_lists() -> None:
    s = Settings(_env_file=None, allowed_users="telegram:1, 2", admin_users="3")  # type: ignore[call-arg]  # pydantic-settings' _env_file is not in the typed __init__
    policy = AccessPolicy.from_settings(s)
    assert policy.check(msg("2", platform="discord")).allowed and not policy.check(msg("4")).allowed
    assert policy.check(msg("3")).allowed


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=3, clock=lambda: now[0])
    assert [limiter.check("t", "1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("t", "1") == 10.0  # 6/min: one token every 10 s
    assert limiter.check("t", "2") == 0.0  # buckets are per user
    assert limiter.check("d", "1") == 0.0  # … and per platform
    now[0] = 4.0
    assert abs(limiter.check("t", "1") - 6.0) < 1e-9
    now[0] = 10.0
    assert limiter.check("t", "1") == 0.0
    now[0] = 1000.0  # refills, never beyond the burst
    assert [limiter.check("t", "1") for _ in range(4)][-1] > 0
    assert slow_down_message(6.0) == "You're sending messages too quickly — try again in 6 s."
    assert slow_down_message(0.2) == "You're sending messages too quickly — try again in 1 s."


def test_idle_buckets_are_pruned() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=1, clock=lambda: now[0], max_buckets=10)
    for i in range(10):
        limiter.check("t", str(i))
    now[0] = 100.0
    limiter.check("t", "new")
    assert len(limiter._buckets) == 1


def test_sanitize_text() -> None:
    assert sanitize_text("  a\x00b\x07c\x1b\x7f\x85d\te\r\nf\rg  ") == "abcd\te\nf\ng"
    assert sanitize_text("lone \ud800 high, lone \udfff low") == "lone  high, lone  low"
    assert sanitize_text("pair \ud83d\ude00 joined") == "pair 😀 joined"
    assert sanitize_text("<|ghost_end|> [INST] \u200d👩\u200d💻") == "<|ghost_end|> [INST] \u200d👩\u200d💻"
    assert sanitize_text("\x00\x01 \n ") == ""


def test_history_turns_keep_whole_pairs() -> None:
    turns = history_turns(
        [
            ("assistant", "orphan"),
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("user", "q3"),
            ("assistant", "a3"),
            ("user", "dangling"),
        ]
    )
    assert [(t.role, t.content) for t in turns] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q3"),
        ("assistant", "a3"),
    ]
