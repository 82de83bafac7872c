"""The one settings tree of Forgehall.

Every setting is a field of :class:`Settings`. A value comes from the first layer that
has it, in this order:

1. the process environment (``FORGEHALL_<NAME>``; ``DATABASE_URL`` and ``PORT`` are also
   accepted unprefixed, the prefixed form winning),
2. a ``.env`` file in the working directory (same names),
3. a TOML config file (``--config`` or ``FORGEHALL_CONFIG``) whose keys are the field
   names in lower case,
4. the default declared here.

:func:`load_settings` records where each value came from so that ``forgehall config
show`` can say so. Settings are frozen: once read they never change (a component that
needs a derived value computes it, it does not write it back).

:func:`check_settings` returns every problem at once, each with the variable to change
and how; production start-up refuses to continue while any problem of severity
``error`` remains.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FORGEHALL_"
#: Conventional unprefixed names accepted for a few settings (the prefixed name wins).
UNPREFIXED_ALIASES: dict[str, str] = {"database_url": "DATABASE_URL", "port": "PORT"}
#: JWT secrets that are known to be placeholders and never acceptable in production.
PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "secret", "dev", "development", "forgehall", "please-change-me"}
)
MIN_SECRET_BYTES = 32


class SettingsError(Exception):
    """Settings could not be read (bad file, unknown key, invalid value).

    The message is one line meant for a person; the CLI prints it and exits non-zero.
    """


def _meta(
    group: str,
    *,
    secret: bool = False,
    example: str | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {"group": group}
    if secret:
        extra["secret"] = True
    if example is not None:
        extra["example"] = example
    return extra


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "forgehall"


class Settings(BaseSettings):
    """All configuration of a Forgehall process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

    # --- General -----------------------------------------------------------------
    env: Literal["development", "production"] = Field(
        "development",
        description="`development` or `production`. Production refuses to start with "
        "unsafe settings (placeholder secrets, plain-http origin, …).",
        json_schema_extra=_meta("General"),
    )
    public_origin: str | None = Field(
        None,
        description="The URL users open, e.g. `https://forgehall.example.com`. Cookies are "
        "`Secure` when it is https. Default: `http://localhost:<port>`.",
        json_schema_extra=_meta("General", example="https://forgehall.example.com"),
    )
    allow_insecure_origin: bool = Field(
        False,
        description="Allow a plain-http public origin in production (only behind a trusted "
        "network you control).",
        json_schema_extra=_meta("General"),
    )
    embedded_runtime: bool = Field(
        True,
        description="`forgehall up` also runs a runtime daemon in its own process (one per "
        "workspace, with the agent CLIs found on this machine), so assigned agents start "
        "work without a separate `forgehall daemon`. `serve` never does.",
        json_schema_extra=_meta("General"),
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the embedded SQLite database, generated development "
        "secrets and local state. Default: `~/.local/share/forgehall`.",
        json_schema_extra=_meta("General"),
    )

    # --- HTTP server ---------------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Address the API listens on. Use `0.0.0.0` in a container.",
        json_schema_extra=_meta("HTTP server"),
    )
    port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="Port the API listens on (`PORT` is also accepted).",
        json_schema_extra=_meta("HTTP server"),
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger bodies get 413.",
        json_schema_extra=_meta("HTTP server"),
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Comma-separated addresses or CIDR ranges of reverse proxies whose "
        "`X-Request-ID` and `X-Forwarded-*` headers are believed.",
        json_schema_extra=_meta("HTTP server", example="10.0.0.0/8,127.0.0.1"),
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take before the server "
        "closes them and stops background services.",
        json_schema_extra=_meta("HTTP server"),
    )

    # --- Database ------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="`postgresql://user:pass@host:5432/db` for PostgreSQL (`DATABASE_URL` is "
        "also accepted). Default: embedded SQLite at `<data_dir>/forgehall.db`.",
        json_schema_extra=_meta("Database", secret=True, example="postgresql://fh@db/forgehall"),
    )
    database_max_conns: int | None = Field(
        None,
        ge=1,
        description="Maximum PostgreSQL connections per process. Precedence: this variable, "
        "then `pool_max_conns` on the URL, then 25.",
        json_schema_extra=_meta("Database"),
    )
    database_min_conns: int | None = Field(
        None,
        ge=0,
        description="Connections kept open per process (clamped to the maximum). Precedence: "
        "this variable, then `pool_min_conns` on the URL, then 5.",
        json_schema_extra=_meta("Database"),
    )
    migrate_on_start: bool = Field(
        True,
        description="Apply pending migrations when the server starts (safe with many "
        "replicas: PostgreSQL serialises them with an advisory lock).",
        json_schema_extra=_meta("Database"),
    )

    database_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="At start-up, how long to keep retrying an unreachable database before "
        "giving up (useful when the database starts alongside Forgehall).",
        json_schema_extra=_meta("Database"),
    )

    # --- Background services -----------------------------------------------------------
    services_disabled: list[str] = Field(
        default_factory=list,
        description="Comma-separated names of background services not to run on this "
        "replica (see docs/operations.md for the list), or `all`.",
        json_schema_extra=_meta("Background services", example="job-history-retention"),
    )
    service_intervals: dict[str, float] = Field(
        default_factory=dict,
        description="Comma-separated `name=seconds` pairs overriding service intervals.",
        json_schema_extra=_meta("Background services", example="job-history-retention=600"),
    )

    # --- Security ------------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(
        None,
        description="Secret that signs session tokens; at least 32 bytes (`openssl rand -hex "
        "32`). Required in production; in development a random one is kept in the data "
        "directory.",
        json_schema_extra=_meta("Security", secret=True),
    )
    encryption_key: SecretStr | None = Field(
        None,
        description="Comma-separated Fernet keys encrypting credentials at rest; the first "
        "encrypts, all decrypt (add a new key in front to rotate). Generate one with "
        "`forgehall config new-key`.",
        json_schema_extra=_meta("Security", secret=True),
    )

    session_ttl_hours: int = Field(
        720,
        ge=1,
        description="How long a browser session lasts without signing in again.",
        json_schema_extra=_meta("Security"),
    )
    cookie_domain: str | None = Field(
        None,
        description="`Domain` attribute of the session cookie, only when the UI and API are "
        "on different subdomains of one domain (e.g. `.example.com`). Never an IP address.",
        json_schema_extra=_meta("Security", example=".example.com"),
    )
    cors_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Comma-separated origins allowed for CORS and for the WebSocket `Origin` "
        "check. Default: the public origin only.",
        json_schema_extra=_meta("Security", example="https://app.example.com"),
    )

    # --- Login --------------------------------------------------------------------------
    allow_signup: bool = Field(
        True,
        description="Allow new accounts. Existing accounts can always log in; addresses in "
        "FORGEHALL_ALLOWED_EMAILS are always admitted.",
        json_schema_extra=_meta("Login"),
    )
    allowed_email_domains: list[str] = Field(
        default_factory=list,
        description="Comma-separated domains whose addresses may sign up (empty: any).",
        json_schema_extra=_meta("Login", example="example.com,example.org"),
    )
    allowed_emails: list[str] = Field(
        default_factory=list,
        description="Comma-separated addresses that may always sign up.",
        json_schema_extra=_meta("Login"),
    )
    disable_workspace_creation: bool = Field(
        False,
        description="Only instance admins may create workspaces; everyone else joins by "
        "invitation.",
        json_schema_extra=_meta("Login"),
    )
    dev_login_code: str | None = Field(
        None,
        description="A fixed six-digit login code for local development. Refused in production.",
        json_schema_extra=_meta("Login", secret=True, example="888888"),
    )
    bootstrap_admins: list[str] = Field(
        default_factory=list,
        description="Comma-separated identities promoted to instance admin when they log in: "
        "`email:alice@example.com`, `github:12345`, `gitlab:<id>`, `google:<sub>`, "
        "`oidc:<issuer>:<sub>`.",
        json_schema_extra=_meta("Login", example="email:alice@example.com"),
    )
    bootstrap_token: SecretStr | None = Field(
        None,
        description="A one-time break-glass token: `POST /api/v1/admin/bootstrap` with it "
        "promotes the caller to instance admin while no admin exists.",
        json_schema_extra=_meta("Login", secret=True),
    )

    # --- Email ------------------------------------------------------------------------
    smtp_host: str | None = Field(
        None,
        description="SMTP relay host; setting it sends login codes and invitations by mail. "
        "Unset: codes are printed to the server log.",
        json_schema_extra=_meta("Email", example="smtp.example.com"),
    )
    smtp_port: int = Field(
        25,
        ge=1,
        le=65535,
        description="SMTP port (465 implies implicit TLS).",
        json_schema_extra=_meta("Email"),
    )
    smtp_username: str | None = Field(
        None, description="SMTP user (unset: no authentication).", json_schema_extra=_meta("Email")
    )
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password.", json_schema_extra=_meta("Email", secret=True)
    )
    smtp_tls: Literal["starttls", "implicit", "smtps", "ssl"] = Field(
        "starttls",
        description="`starttls` (upgrade when the server offers it) or `implicit` (aliases "
        "`smtps`, `ssl`: TLS from the first byte; automatic on port 465).",
        json_schema_extra=_meta("Email"),
    )
    smtp_tls_insecure: bool = Field(
        False,
        description="Skip TLS certificate verification (private CA or self-signed relay).",
        json_schema_extra=_meta("Email"),
    )
    smtp_ehlo_name: str | None = Field(
        None,
        description="Name announced in EHLO; set a real FQDN for strict relays.",
        json_schema_extra=_meta("Email"),
    )
    mail_from: str = Field(
        "Forgehall <forgehall@localhost>",
        description="Sender address of mail Forgehall sends.",
        json_schema_extra=_meta("Email", example="Forgehall <forgehall@example.com>"),
    )

    # --- OAuth / OIDC login ---------------------------------------------------------------
    github_client_id: str | None = Field(
        None,
        description="GitHub OAuth app client id.",
        json_schema_extra=_meta("OAuth / OIDC login"),
    )
    github_client_secret: SecretStr | None = Field(
        None,
        description="GitHub OAuth app client secret.",
        json_schema_extra=_meta("OAuth / OIDC login", secret=True),
    )
    github_url: str = Field(
        "https://github.com",
        description="GitHub web URL (GitHub Enterprise Server: your instance).",
        json_schema_extra=_meta("OAuth / OIDC login"),
    )
    github_api_url: str = Field(
        "https://api.github.com",
        description="GitHub REST API URL (GitHub Enterprise Server: `https://<host>/api/v3`).",
        json_schema_extra=_meta("OAuth / OIDC login"),
    )
    gitlab_url: str = Field(
        "https://gitlab.com",
        description="Default GitLab instance for login. Further "
        "self-hosted instances are added at runtime by an instance admin.",
        json_schema_extra=_meta("OAuth / OIDC login"),
    )
    gitlab_client_id: str | None = Field(
        None, description="GitLab application id.", json_schema_extra=_meta("OAuth / OIDC login")
    )
    gitlab_client_secret: SecretStr | None = Field(
        None,
        description="GitLab application secret.",
        json_schema_extra=_meta("OAuth / OIDC login", secret=True),
    )
    google_client_id: str | None = Field(
        None, description="Google OAuth client id.", json_schema_extra=_meta("OAuth / OIDC login")
    )
    google_client_secret: SecretStr | None = Field(
        None,
        description="Google OAuth client secret.",
        json_schema_extra=_meta("OAuth / OIDC login", secret=True),
    )
    oidc_issuer: str | None = Field(
        None,
        description="Issuer URL of an enterprise OIDC provider (Okta, Entra ID, "
        "Keycloak…); discovery is read from `<issuer>/.well-known/openid-configuration`.",
        json_schema_extra=_meta("OAuth / OIDC login", example="https://sso.example.com/realms/x"),
    )
    oidc_client_id: str | None = Field(
        None, description="OIDC client id.", json_schema_extra=_meta("OAuth / OIDC login")
    )
    oidc_client_secret: SecretStr | None = Field(
        None,
        description="OIDC client secret.",
        json_schema_extra=_meta("OAuth / OIDC login", secret=True),
    )
    oidc_display_name: str = Field(
        "Single sign-on",
        description="Button label for the OIDC provider.",
        json_schema_extra=_meta("OAuth / OIDC login"),
    )

    # --- Observability --------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="Minimum level of log lines.",
        json_schema_extra=_meta("Observability"),
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="`json` (one object per line), `console` (readable) or `auto`: JSON in "
        "production, console in development.",
        json_schema_extra=_meta("Observability"),
    )
    metrics_addr: str | None = Field(
        None,
        description="`host:port` of a separate listener serving Prometheus `/metrics`. Unset: "
        "no metrics listener. The public port never serves metrics.",
        json_schema_extra=_meta("Observability", example="127.0.0.1:9090"),
    )

    # --- Agents ----------------------------------------------------------------------
    model_prices: dict[str, tuple[float, float, float, float]] = Field(
        default_factory=dict,
        description="Prices used for a task's cost when the agent CLI reports tokens but no "
        "cost: comma-separated `model=input/output/cache_read/cache_write` in US dollars per "
        "million tokens. A model not listed, with no cost reported, counts 0 (shown as "
        "`unpriced`).",
        json_schema_extra=_meta(
            "Agents", example="claude-sonnet-4-5=3/15/0.3/3.75,gpt-5-codex=1.25/10/0.125/0"
        ),
    )

    gate_fix_rounds: int = Field(
        3,
        ge=0,
        le=100,
        description="After an agent's task, when the gates the workspace's tier requires do "
        "not pass, the agent is asked to fix them this many times in a row; then the issue "
        "goes to a blocked status. 0: blocked at the first failure.",
        json_schema_extra=_meta("Agents", example="3"),
    )

    @field_validator("model_prices", mode="before")
    @classmethod
    def _split_prices(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        prices: dict[str, list[str]] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            model, sep, figures = part.partition("=")
            numbers = figures.split("/")
            if not sep or not model.strip() or len(numbers) != 4:
                raise ValueError(
                    f"{part!r} is not model=input/output/cache_read/cache_write "
                    "(dollars per million tokens)"
                )
            prices[model.strip()] = [n.strip() for n in numbers]
        return prices

    @field_validator("model_prices")
    @classmethod
    def _non_negative_prices(
        cls, value: dict[str, tuple[float, float, float, float]]
    ) -> dict[str, tuple[float, float, float, float]]:
        for model, figures in value.items():
            if any(f < 0 for f in figures):
                raise ValueError(f"the prices of {model} must not be negative")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The layers are merged by load_settings (which records provenance); the
        # constructor only takes what it is given, so building Settings() directly in a
        # test never reads the developer's environment by accident.
        return (init_settings,)

    @field_validator("service_intervals", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for part in (p.strip() for p in value.split(",")):
                if not part:
                    continue
                name, sep, seconds = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r} is not name=seconds")
                pairs[name.strip()] = seconds.strip()
            return pairs
        return value

    @field_validator("service_intervals")
    @classmethod
    def _positive_intervals(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"interval of {name} must be positive")
        return value

    @field_validator(
        "trusted_proxies",
        "services_disabled",
        "cors_allowed_origins",
        "allowed_email_domains",
        "allowed_emails",
        "bootstrap_admins",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_origin")
    @classmethod
    def _normalise_origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL such as https://forge.example.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be an origin only (scheme, host and port), without a path")
        return f"{parts.scheme}://{parts.netloc}".lower()

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from exc
        return value

    # --- derived values (never stored back) -------------------------------------------
    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def origin(self) -> str:
        """The public origin, defaulting to the local listener."""
        return self.public_origin or f"http://localhost:{self.port}"

    @property
    def allowed_origins(self) -> list[str]:
        """Origins trusted for CORS, CSRF and WebSocket checks."""
        return [o.rstrip("/").lower() for o in self.cors_allowed_origins] or [self.origin]

    @property
    def cookie_secure(self) -> bool:
        return self.origin.startswith("https://")

    @property
    def smtp_implicit_tls(self) -> bool:
        return self.smtp_tls in ("implicit", "smtps", "ssl") or self.smtp_port == 465

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format == "auto":
            return "json" if self.is_production else "console"
        return self.log_format

    def secret_values(self) -> list[str]:
        """Every secret string in these settings, for log redaction."""
        values: list[str] = []
        for name, info in type(self).model_fields.items():
            if not _field_extra(info).get("secret"):
                continue
            raw = getattr(self, name)
            if raw is None:
                continue
            text = raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw)
            values.extend(_secret_fragments(name, text))
        return [v for v in values if len(v) >= 6]


def _secret_fragments(name: str, text: str) -> list[str]:
    """The parts of a secret that must never be logged.

    A database URL is only secret for its password; keys lists are secret per key.
    """
    if name == "database_url":
        password = urlsplit(text).password
        return [password] if password else []
    if name == "encryption_key":
        return [k.strip() for k in text.split(",") if k.strip()]
    return [text]


def _field_extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def env_names(name: str) -> list[str]:
    """Environment variable names for a field, highest precedence first."""
    names = [ENV_PREFIX + name.upper()]
    if name in UNPREFIXED_ALIASES:
        names.append(UNPREFIXED_ALIASES[name])
    return names


# --- loading -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedSettings:
    """Settings together with the origin of every value (`env`, `.env`, file, default)."""

    settings: Settings
    origins: Mapping[str, str] = field(default_factory=dict)
    config_file: Path | None = None


def _from_environment(source: Mapping[str, str | None], label: str) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name in Settings.model_fields:
        for var in env_names(name):
            value = source.get(var)
            if value is not None:
                found[name] = (value, f"{label} {var}")
                break
    return found


def _from_config_file(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} does not exist") from exc
    except PermissionError as exc:
        raise SettingsError(f"config file {path} is not readable (permission denied)") from exc
    except IsADirectoryError as exc:
        raise SettingsError(f"config file {path} is a directory, not a TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config file {path} is not UTF-8 text") from exc
    known = list(Settings.model_fields)
    found: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        if key not in Settings.model_fields:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise SettingsError(f"unknown setting '{key}' in config file {path}{suggestion}")
        found[key] = (value, f"config file {path}")
    return found


def load_settings(
    *,
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_file: Path | str | None = ".env",
) -> LoadedSettings:
    """Read settings from all layers, recording where each value came from.

    Raises:
        SettingsError: with one line naming the bad variable, file or value.
    """
    env = dict(os.environ if environ is None else environ)
    dotenv: dict[str, str | None] = {}
    if dotenv_file is not None and Path(dotenv_file).is_file():
        dotenv = dict(dotenv_values(dotenv_file))
    path_text = config_file or env.get(ENV_PREFIX + "CONFIG") or dotenv.get(ENV_PREFIX + "CONFIG")
    path = Path(path_text) if path_text else None

    layers: dict[str, tuple[Any, str]] = {}
    if path is not None:
        layers.update(_from_config_file(path))
    layers.update(_from_environment(dotenv, ".env"))
    layers.update(_from_environment(env, "env"))

    values = {name: value for name, (value, _) in layers.items()}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe_validation_error(exc, layers)) from None
    origins = {
        name: layers[name][1] if name in layers else "default" for name in Settings.model_fields
    }
    return LoadedSettings(settings=settings, origins=origins, config_file=path)


def _describe_validation_error(exc: ValidationError, layers: Mapping[str, tuple[Any, str]]) -> str:
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        where = layers[name][1] if name in layers else "default"
        parts.append(f"{where}: {error['msg']}")
    return "invalid setting: " + "; ".join(parts)


# --- checks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, and how to fix it."""

    setting: str
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    @property
    def variable(self) -> str:
        return env_names(self.setting)[0]

    def render(self) -> str:
        return f"{self.severity.upper()} {self.variable}: {self.message}. Fix: {self.fix}"


Check = Callable[[Settings], Iterable[Problem]]


def _check_jwt_secret(s: Settings) -> Iterable[Problem]:
    if not s.is_production:
        return
    secret = s.jwt_secret.get_secret_value() if s.jwt_secret else None
    fix = "set it to a random value of at least 32 bytes, e.g. `openssl rand -hex 32`"
    if secret is None:
        yield Problem("jwt_secret", "is not set (required in production)", fix)
    elif secret.strip().lower() in PLACEHOLDER_SECRETS:
        yield Problem("jwt_secret", "is a known placeholder value", fix)
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        yield Problem("jwt_secret", f"is shorter than {MIN_SECRET_BYTES} bytes", fix)


def _check_origin(s: Settings) -> Iterable[Problem]:
    if not s.is_production:
        return
    if s.public_origin is None:
        yield Problem(
            "public_origin",
            "is not set (required in production)",
            "set it to the https URL your users open, e.g. https://forgehall.example.com",
        )
    elif not s.public_origin.startswith("https://") and not s.allow_insecure_origin:
        yield Problem(
            "public_origin",
            f"{s.public_origin} is not https, so session cookies would travel in clear text",
            "serve Forgehall over https (e.g. behind a TLS reverse proxy), or set "
            "FORGEHALL_ALLOW_INSECURE_ORIGIN=true if the network is trusted",
        )


def _check_encryption_key(s: Settings) -> Iterable[Problem]:
    if s.encryption_key is None:
        # Credentials are always stored somewhere (login providers added at runtime, agent
        # secrets, the ledger's signing key), so production needs the key; development
        # generates one in the data directory.
        if s.is_production:
            yield Problem(
                "encryption_key",
                "is not set (required in production: credentials are encrypted at rest)",
                "generate a key with `forgehall config new-key`, keep it in your secret "
                "manager and set it",
            )
        return
    for index, key in enumerate(s.encryption_key.get_secret_value().split(",")):
        try:
            Fernet(key.strip().encode())
        except (ValueError, TypeError):
            yield Problem(
                "encryption_key",
                f"key #{index + 1} is not a valid Fernet key (32 url-safe base64 bytes)",
                "generate a key with `forgehall config new-key`",
            )


def _check_database(s: Settings) -> Iterable[Problem]:
    from forgehall.db.url import DatabaseUrlError, resolve_database

    try:
        resolve_database(s)
    except DatabaseUrlError as exc:
        yield Problem("database_url", str(exc), "use postgresql://user:pass@host:5432/db")
    if (
        s.database_min_conns is not None
        and s.database_max_conns is not None
        and s.database_min_conns > s.database_max_conns
    ):
        yield Problem(
            "database_min_conns",
            f"{s.database_min_conns} is above the maximum {s.database_max_conns}; it is clamped",
            "lower FORGEHALL_DATABASE_MIN_CONNS or raise FORGEHALL_DATABASE_MAX_CONNS",
            severity="warning",
        )


def _check_metrics_addr(s: Settings) -> Iterable[Problem]:
    if s.metrics_addr is None:
        return
    try:
        parse_host_port(s.metrics_addr)
    except ValueError as exc:
        yield Problem("metrics_addr", str(exc), "use host:port, e.g. 127.0.0.1:9090")
        return
    host, port = parse_host_port(s.metrics_addr)
    if port == s.port and host in (s.host, "0.0.0.0", "::"):  # noqa: S104 - comparison only
        yield Problem(
            "metrics_addr",
            "is the same listener as the public API",
            "choose another port so metrics stay off the public port",
        )


def _check_dev_data_dir(s: Settings) -> Iterable[Problem]:
    if s.data_dir.exists() and not s.data_dir.is_dir():
        yield Problem(
            "data_dir",
            f"{s.data_dir} exists and is not a directory",
            "point it at a directory Forgehall may create files in",
        )


def _check_login(s: Settings) -> Iterable[Problem]:
    if s.dev_login_code is not None:
        if s.is_production:
            yield Problem(
                "dev_login_code",
                "a fixed login code is set in production, so anyone could log in as anyone",
                "unset FORGEHALL_DEV_LOGIN_CODE",
            )
        elif not (len(s.dev_login_code) == 6 and s.dev_login_code.isdigit()):
            yield Problem("dev_login_code", "must be six digits", "use e.g. 888888")
    if s.cookie_domain is not None:
        try:
            ipaddress.ip_address(s.cookie_domain.strip(".[]"))
        except ValueError:
            pass
        else:
            yield Problem(
                "cookie_domain",
                "is an IP address, which browsers refuse as a cookie Domain (RFC 6265)",
                "unset it for single-host deployments",
            )
    for origin in s.cors_allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            yield Problem(
                "cors_allowed_origins",
                f"{origin!r} is not an origin",
                "list origins like https://app.example.com, comma-separated",
            )
    for entry in s.bootstrap_admins:
        kind, _, rest = entry.partition(":")
        if kind not in ("email", "github", "gitlab", "google", "oidc") or not rest:
            yield Problem(
                "bootstrap_admins",
                f"{entry!r} is not kind:value",
                "use email:alice@example.com, github:12345 or oidc:<issuer>:<sub>",
            )


def _check_groups(s: Settings) -> Iterable[Problem]:
    """Settings that only work together."""
    pairs = [
        ("github_client_id", "github_client_secret"),
        ("gitlab_client_id", "gitlab_client_secret"),
        ("google_client_id", "google_client_secret"),
        ("oidc_client_id", "oidc_client_secret"),
        ("smtp_username", "smtp_password"),
    ]
    for first, second in pairs:
        if bool(getattr(s, first)) != bool(getattr(s, second)):
            present, missing = (first, second) if getattr(s, first) else (second, first)
            yield Problem(
                missing,
                f"is required because {env_names(present)[0]} is set",
                f"set both {env_names(first)[0]} and {env_names(second)[0]}, or neither",
            )
    if bool(s.oidc_issuer) != bool(s.oidc_client_id):
        missing = "oidc_client_id" if s.oidc_issuer else "oidc_issuer"
        yield Problem(
            missing,
            "OIDC login needs the issuer, client id and secret together",
            "set FORGEHALL_OIDC_ISSUER, _CLIENT_ID and _CLIENT_SECRET",
        )
    if s.smtp_host is None:
        for name in ("smtp_username", "smtp_ehlo_name"):
            if getattr(s, name):
                yield Problem(
                    name,
                    "has no effect without FORGEHALL_SMTP_HOST",
                    "set FORGEHALL_SMTP_HOST or remove it",
                    severity="warning",
                )


#: Every check run by ``forgehall config check`` and at server start-up.
CHECKS: tuple[Check, ...] = (
    _check_jwt_secret,
    _check_origin,
    _check_encryption_key,
    _check_database,
    _check_metrics_addr,
    _check_dev_data_dir,
    _check_login,
    _check_groups,
)


def check_settings(settings: Settings) -> list[Problem]:
    """Run every check; return all problems (errors first)."""
    problems = [p for check in CHECKS for p in check(settings)]
    return sorted(problems, key=lambda p: p.severity != "error")


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ValueError with a clear reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host.strip("[]"), port


# --- documentation --------------------------------------------------------------------


def render_configuration_markdown() -> str:
    """The text of ``docs/configuration.md``, generated from the settings tree."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `forgehall config docs` from src/forgehall/settings.py;"
        " do not edit by hand. -->",
        "",
        "Forgehall reads each setting from, in order of precedence: the environment "
        "(`FORGEHALL_<NAME>`), a `.env` file in the working directory, a TOML config file "
        "(`--config forgehall.toml` or `FORGEHALL_CONFIG`, keys are the lower-case names "
        "below without the prefix), and finally the default.",
        "",
        "`forgehall config check` reports every problem with its fix; `forgehall config show` "
        "prints the effective values (secrets masked) and where each came from. In "
        "production the server refuses to start while `config check` reports an error.",
        "",
    ]
    groups: dict[str, list[tuple[str, FieldInfo]]] = {}
    for name, info in Settings.model_fields.items():
        groups.setdefault(_field_extra(info).get("group", "Other"), []).append((name, info))
    for group, fields in groups.items():
        lines += [f"## {group}", "", "| Variable | Default | Description |", "|---|---|---|"]
        for name, info in fields:
            extra = _field_extra(info)
            variables = " / ".join(f"`{v}`" for v in env_names(name))
            default = _render_default(name, info)
            description = str(info.description or "")
            if extra.get("secret"):
                description += " *Secret: never logged, masked by `config show`.*"
            if extra.get("example"):
                description += f" Example: `{extra['example']}`."
            lines.append(f"| {variables} | {default} | {description} |")
        lines.append("")
    return "\n".join(lines)


def _render_default(name: str, info: FieldInfo) -> str:
    if name == "data_dir":
        return "`~/.local/share/forgehall`"
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict) and not value:
        return "—"
    if isinstance(value, list):
        return "`" + ",".join(str(v) for v in value) + "`"
    return f"`{value}`"
