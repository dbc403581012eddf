"""The d2-server command on both databases (serve is tested end to end in
tests-integration and by the replica test)."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from d2.server import ServerConfig, SQLStorage, schema
from d2.server.cli import Algorithm, main, parse_args
from d2.server.database import open_engine
from d2.server.signing import ALGORITHMS
from d2.server.tokens import hash_token
from hypothesis import given, settings
from hypothesis import strategies as st


def _plain(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _init(db: str | Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, str]:
    assert main(["init", "--db", str(db), "--json", *extra]) == 0
    data: dict[str, str] = json.loads(capsys.readouterr().out)
    return data


def _everything(db: str) -> str:
    """Every value of every table, as text."""
    engine = open_engine(db)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return repr([conn.execute(t.select()).all() for t in meta.sorted_tables])
    finally:
        engine.dispose()


def _has_schema(db: str) -> bool:
    if "://" not in db and not Path(db).exists():
        return False
    engine = open_engine(db)
    try:
        return bool(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_creates_an_account_an_app_and_two_tokens_stored_as_hashes(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _init(db, capsys, "--app-name", "shop", "--alg", "ES256", "--max-tools", "7")
    assert out["app_name"] == "shop" and out["signing_key"].startswith("ES256 ")
    storage = SQLStorage(db)
    try:
        runtime = storage.find_token(hash_token(out["runtime_token"]))
        developer = storage.find_token(hash_token(out["developer_token"]))
        assert runtime is not None and developer is not None
        assert runtime.scopes == ("policy:read", "events:write")
        assert "policy:write" in developer.scopes
        assert runtime.account.quotas.max_tools == 7
    finally:
        storage.close()
    stored = _everything(db)
    assert hash_token(out["runtime_token"]) in stored
    assert out["runtime_token"] not in stored and out["developer_token"] not in stored
    if "://" not in db:
        assert out["runtime_token"].encode() not in Path(db).read_bytes()


def test_init_prints_readable_lines_without_json(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "runtime_token:" in out and "shown once" in out


def test_init_refuses_an_initialized_database(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _init(db, capsys)
    assert main(["init", "--db", db]) == 1
    assert "already has an account" in capsys.readouterr().err


def test_token_create_scopes_a_token_to_an_app(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _init(db, capsys)
    monkeypatch.setenv("D2_SERVER_DB", db)  # the default --db
    assert main(["token", "create", "--scope", "policy:read", "--app-name", "other", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scopes"] == "policy:read" and out["app_name"] == "other"
    assert main(["token", "create", "--scope", "admin"]) == 1
    assert "unknown scope" in capsys.readouterr().err


def test_token_revoke_deletes_a_token_read_from_stdin_or_given(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _init(db, capsys, "--app-name", "shop")
    runtime, developer = out["runtime_token"], out["developer_token"]
    monkeypatch.setattr("sys.stdin", io.StringIO(runtime + "\n"))
    assert main(["token", "revoke", "--db", db, "--json"]) == 0
    revoked = json.loads(capsys.readouterr().out)
    assert revoked == {
        "revoked": True,
        "account_id": out["account_id"],
        "app_name": "shop",
        "scopes": "policy:read events:write",
    }
    assert main(["token", "revoke", "--db", db, developer]) == 0
    assert re.search(r"revoked:\s+True\n", capsys.readouterr().out)
    storage = SQLStorage(db)
    try:
        assert storage.find_token(hash_token(runtime)) is None
        assert storage.find_token(hash_token(developer)) is None
    finally:
        storage.close()
    assert main(["token", "revoke", "--db", db, runtime]) == 1  # once only
    assert "no such token" in capsys.readouterr().err
    assert main(["token", "revoke", "--db", db, "not-a-token"]) == 1
    assert "not a d2-server token" in capsys.readouterr().err


def test_token_create_needs_an_account(databases: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = databases.location(migrated=True)
    assert main(["token", "create", "--db", db]) == 1
    assert "d2-server init" in capsys.readouterr().err


def test_rotate_key_adds_a_key_and_keeps_the_old_one_for_the_overlap(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(db, capsys)
    assert main(["rotate-key", "--db", db, "--alg", "RS256", "--overlap", "120"]) == 0
    assert "RS256" in capsys.readouterr().out
    storage = SQLStorage(db)
    try:
        keys = storage.published_signing_keys(0.0)
        assert [k.alg for k in keys] == ["RS256", "EdDSA"]
        assert keys[1].remove_at is not None and keys[1].retired_at is not None
        assert keys[1].remove_at - keys[1].retired_at == 120
    finally:
        storage.close()


def test_commands_other_than_init_refuse_a_missing_database(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "://" in db:
        db = db.rsplit("/", 1)[0] + "/d2_no_such_database"
    for command in (["serve"], ["rotate-key"], ["token", "create"], ["migrate"]):
        assert main([*command, "--db", db]) == 1
        err = capsys.readouterr().err
        assert "no database" in err if "://" not in db else "does not exist" in err
    assert "://" in db or not Path(db).exists()


def test_commands_refuse_a_schema_behind_naming_migrate_which_upgrades_it(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = open_engine(db)  # an empty database (a SQLite file with no tables)
    engine.dispose()
    for command in (["serve"], ["rotate-key"], ["token", "create"]):
        assert main([*command, "--db", db]) == 1
        assert "run `d2-server migrate`" in capsys.readouterr().err
    assert not _has_schema(db)  # refused, nothing created
    assert main(["migrate", "--db", db]) == 0
    assert f"revision {schema.head_revision()}" in capsys.readouterr().out
    assert main(["migrate", "--db", db]) == 0  # idempotent
    assert main(["token", "create", "--db", db]) == 1
    assert "run `d2-server init`" in capsys.readouterr().err  # now: no account yet


def test_commands_refuse_a_schema_ahead_naming_the_upgrade(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(db, capsys)
    engine = open_engine(db)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        engine.dispose()
    for command in (["serve"], ["migrate"], ["token", "create"], ["init"]):
        assert main([*command, "--db", db]) == 1
        assert "upgrade d2-server" in capsys.readouterr().err


def test_a_database_url_of_another_kind_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "--db", "mysql://d2:secret@127.0.0.1/d2"]) == 2
    err = capsys.readouterr().err
    assert "postgresql://" in err and "secret" not in err


def test_serve_and_rotate_refuse_an_uninitialized_database(
    databases: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    db = databases.location(migrated=True)  # schema, but no account and no key
    assert main(["serve", "--db", db]) == 1
    assert "not initialized" in capsys.readouterr().err
    assert main(["rotate-key", "--db", db]) == 1
    assert "run `d2-server init`" in capsys.readouterr().err


def test_an_unreachable_database_is_reported_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--db", str(tmp_path / "missing" / "d2.db")]) == 1
    assert "cannot open" in capsys.readouterr().err
    port = _closed_port()
    assert main(["init", "--db", f"postgresql://d2:s3cret@127.0.0.1:{port}/d2"]) == 1
    err = capsys.readouterr().err
    assert "cannot open postgresql://d2:***@127.0.0.1" in err and "s3cret" not in err


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_init_never_prints_the_database_password(
    postgres: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    db = postgres.new(migrated=False)
    try:
        out = _init(db.replace("://d2@", "://d2:s3cret@"), capsys)  # trust: any password
    finally:
        postgres.release(db, migrated=False)
    assert out["database"] == db.replace("://d2@", "://d2:***@")


def test_init_with_an_invalid_app_name_leaves_nothing_behind(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--db", db, "--app-name", "bad:name", "--alg", "RS256"]) == 1
    assert "invalid app name" in capsys.readouterr().err
    assert not _has_schema(db)  # refused before the database was created
    # so a corrected init starts from scratch, with the algorithm it asks for
    out = _init(db, capsys, "--app-name", "good", "--alg", "ES256")
    assert out["app_name"] == "good" and out["signing_key"].startswith("ES256 ")
    storage = SQLStorage(db)
    try:
        (account,) = storage.accounts()
        assert [a.name for a in storage.apps(account.id)] == ["good"]
        assert [k.alg for k in storage.published_signing_keys(0.0)] == ["ES256"]
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--events-retention", "0", "from 1 to 36500, got 0"),
        ("--events-retention", "-3", "from 1 to 36500, got -3"),
        ("--events-retention", "1.5", "whole number from 1 to 36500, got '1.5'"),
        ("--events-retention", "forever", "got 'forever'"),
        ("--events-max-per-app", "0", "from 1 to"),
        ("--events-max-bytes-per-app", "1000", "from 32768 to"),
        ("--events-prune-interval", "0", "number of seconds from 0.001 to 604800"),
        ("--events-prune-interval", "inf", "got inf"),
        ("--events-prune-interval", "nan", "got nan"),
    ],
)
def test_serve_refuses_a_bad_retention_setting_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    code = main(["serve", "--db", str(tmp_path / "d2.db"), option, value])
    assert code == 2  # a usage error, before anything is opened
    err = _plain(capsys.readouterr().err)
    assert f"Invalid value for '{option}': must be" in err and message in err
    assert not (tmp_path / "d2.db").exists()


def test_serve_hands_the_retention_settings_to_the_server(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    _init(db, capsys)
    seen: dict[str, object] = {}

    def run(app: object, **kwargs: object) -> None:
        seen.update(kwargs, config=app.state.plane.config)  # type: ignore[attr-defined]

    monkeypatch.setattr(uvicorn, "run", run)
    args = ["serve", "--db", db, "--events-retention", "7", "--events-max-per-app", "500"]
    args += ["--events-max-bytes-per-app", "65536", "--events-prune-interval", "90.5"]
    assert main(args) == 0
    config = seen["config"]
    assert isinstance(config, ServerConfig)
    assert (config.events_retention_days, config.events_max_per_app) == (7, 500)
    assert (config.events_max_bytes_per_app, config.events_prune_interval) == (65536, 90.5)
    assert seen["lifespan"] == "on"  # the lifespan runs the pruner
    path, defaults = parse_args(["serve"])
    assert path == ["serve"] and defaults["workers"] == 1
    assert (defaults["events_retention"], defaults["events_max_per_app"]) == (30, 1_000_000)
    assert defaults["events_max_bytes_per_app"] == 256 * 1024 * 1024
    assert defaults["events_prune_interval"] == 3600.0


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str)))
def test_the_retention_option_takes_exactly_whole_days_from_1_to_36500(text: str) -> None:
    try:
        expected: int | None = int(text.strip())
    except ValueError:
        expected = None
    try:
        _, args = parse_args(["serve", f"--events-retention={text}"])
    except typer.BadParameter as exc:
        assert exc.exit_code == 2
        assert exc.format_message().startswith(
            "Invalid value for '--events-retention': must be a whole number from 1 to 36500"
        )
        assert expected is None or not 1 <= expected <= 36500
    else:
        assert expected is not None and args["events_retention"] == expected
        assert 1 <= expected <= 36500


def test_version_prints_the_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    from d2.server import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"d2-server {__version__}"


def test_the_algorithm_choices_are_the_signing_algorithms() -> None:
    assert [a.value for a in Algorithm] == list(ALGORITHMS)
    with pytest.raises(typer.BadParameter):
        parse_args(["rotate-key", "--alg", "HS256"])  # never an HMAC


def test_app_is_the_hidden_old_spelling_of_app_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "d2.db"
    assert _init(db, capsys, "--app", "old-spelling")["app_name"] == "old-spelling"
    assert main(["token", "create", "--db", str(db), "--app", "second", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["app_name"] == "second"
    both = ["token", "create", "--db", str(db), "--app-name", "a", "--app", "b"]
    assert main(both) == 2  # a usage error: two different apps
    assert "--app is the old spelling of --app-name" in _plain(capsys.readouterr().err)
    for command in (["init"], ["token", "create"]):
        assert main([*command, "--help"]) == 0
        shown = capsys.readouterr().out
        assert "--app-name" in shown and not re.search(r"--app\b(?!-)", shown)


def test_a_refusal_with_json_is_also_a_json_document_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "--db", str(tmp_path / "none.db"), "--json"]) == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["ok"] is False and error["error"]["exit_code"] == 1
    assert "no database" in error["error"]["message"] and "no database" in captured.err


def test_an_out_of_range_setting_is_refused_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "d2.db"
    _init(db, capsys)
    assert main(["serve", "--db", str(db), "--poll-seconds", "0"]) == 1
    assert "poll_seconds must be a positive number" in capsys.readouterr().err
    assert main(["serve", "--db", str(db), "--workers", "0"]) == 2
    assert "--workers" in _plain(capsys.readouterr().err)


def test_serve_with_workers_hands_uvicorn_a_factory_and_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn.supervisors
    from d2.server import serving

    db = tmp_path / "d2.db"
    _init(db, capsys)
    monkeypatch.setenv(serving.SETTINGS_ENV, "")  # restored after the test
    seen: dict[str, object] = {}

    class Supervisor:  # uvicorn's multiprocess supervisor, run in this process
        def __init__(self, config: uvicorn.Config, sockets: list[object]) -> None:
            seen.update(config=config, sockets=sockets)
            self.processes: list[object] = []

        def run(self) -> None:
            from starlette.testclient import TestClient

            worker = serving.worker_app()  # what each worker process builds
            seen["server_config"] = worker.state.plane.config
            with TestClient(worker) as client:  # runs the worker's lifespan
                assert client.get("/healthz").json() == {"status": "ok"}
                seen["worker_prunes"] = hasattr(worker.state, "pruner")

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Supervisor)
    args = ["serve", "--db", str(db), "--workers", "3", "--poll-seconds", "9", "--port", "0"]
    assert main([*args, "--events-retention", "5", "--bundle-refresh", "60"]) == 0
    config = seen["config"]
    assert isinstance(config, uvicorn.Config)
    assert config.app == "d2.server.serving:worker_app" and config.factory is True
    assert config.workers == 3 and config.lifespan == "on"
    assert len(seen["sockets"]) == 1  # type: ignore[arg-type]
    server_config = seen["server_config"]
    assert isinstance(server_config, ServerConfig)
    assert (server_config.poll_seconds, server_config.events_retention_days) == (9, 5)
    assert server_config.bundle_refresh == 60
    assert seen["worker_prunes"] is False  # the supervising process prunes, once
    settings_env = serving.ServeSettings.from_env()
    assert settings_env.db == str(db)


def test_the_startup_failure_status_is_uvicorns() -> None:
    import uvicorn.config
    from d2.server import serving

    assert serving.STARTUP_FAILURE == uvicorn.config.STARTUP_FAILURE == 3


def test_a_worker_without_settings_says_how_it_is_started(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from d2.server import serving

    monkeypatch.delenv(serving.SETTINGS_ENV, raising=False)
    with pytest.raises(RuntimeError, match="d2-server serve --workers N"):
        serving.ServeSettings.from_env()
    with caplog.at_level(logging.ERROR, logger="d2.server"), pytest.raises(SystemExit) as exited:
        serving.worker_app()  # a status that stops uvicorn's supervisor, not a restart
    assert exited.value.code == serving.STARTUP_FAILURE
    assert "d2-server serve --workers N" in caplog.text
    for bad in ("{", "[]", '{"db": 3, "config": {}}', '{"db": "x"}'):
        with pytest.raises(RuntimeError, match="is not valid"):
            serving.ServeSettings.from_env({serving.SETTINGS_ENV: bad})
