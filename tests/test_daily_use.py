"""Daily use (issue 23): the settings file, weights fetched and imported, a misspelt model refused before torch,
and the smaller things a user met in an hour (the ingest rate, db info, help texts, models list/drop)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from imagedb import embed, provenance
from imagedb.cli import main
from imagedb.cli.tune import TUNE_MATTERS_FROM, info_lines
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, ModelUnavailable
from imagedb.store import Store

from helpers import fill_synthetic

DEAD_URL = "postgresql://nobody@127.0.0.1:1/nothing"  # nothing listens there: a command that connects fails
DEFAULT_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
DEFAULT_FILE = "open_clip_model.safetensors"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def run(home: Path) -> Callable[..., Result]:
    """`imagedb ...` in this process, with its own IMAGEDB_HOME and none of the shell's settings."""

    def invoke(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
        clean = {"IMAGEDB_HOME": str(home), "IMAGEDB_MODEL": None, "IMAGEDB_DATABASE_URL": None}
        clean["IMAGEDB_API_TOKEN"] = None
        return CliRunner().invoke(main, list(args), env={**clean, **(env or {})}, input=input)

    return invoke


# -- the settings file -----------------------------------------------------------------------------------------------


def test_settings_persist_with_precedence_flag_env_file_builtin(run: Callable[..., Result], home: Path) -> None:
    assert "serve.port = 8000    [built-in]" in run("config", "list").output
    secret_url = "postgresql://me:s3cret@db.example:5432/photos"
    done = run("config", "set", "database_url", secret_url)
    assert done.exit_code == 0, done.output
    path = home / "config.toml"
    assert f"stored in {path} (mode 0600" in done.output and "s3cret" not in done.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run("config", "set", "serve.port", "9123").exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # rewritten, still private

    listed = run("config", "list").output
    assert f"database_url = postgresql://me:****@db.example:5432/photos    [file ({path})]" in listed
    assert f"serve.port = 9123    [file ({path})]" in listed
    assert "s3cret" not in listed
    assert run("config", "get", "database_url").output.strip() == secret_url  # what commands here use, unmasked
    # The commands use it: a new shell (no environment) gets the file's database.
    assert run("db", "url").output.strip() == secret_url

    env_url = "postgresql://env@127.0.0.1:1/e"
    by_env = run("config", "list", env={"IMAGEDB_DATABASE_URL": env_url}).output
    assert f"database_url = {env_url}    [environment (IMAGEDB_DATABASE_URL)]" in by_env
    by_flag = run("--database-url", "postgresql://flag@h/f", "config", "list", env={"IMAGEDB_DATABASE_URL": env_url})
    assert "database_url = postgresql://flag@h/f    [flag]" in by_flag.output
    assert run("db", "url", env={"IMAGEDB_DATABASE_URL": env_url}).output.strip() == env_url

    assert run("config", "unset", "database_url").exit_code == 0
    assert "database_url = (unset)    [built-in]" in run("config", "list").output
    assert run("config", "get", "serve.port").output.strip() == "9123"


def test_bad_settings_are_refused_in_one_line_and_change_nothing(run: Callable[..., Result], home: Path) -> None:
    assert run("config", "set", "serve.port", "eighty").exit_code == 2
    assert not home.exists()  # nothing made for a refused value
    assert run("config", "set", "serve.port", "9000").exit_code == 0
    before = (home / "config.toml").read_bytes()
    for args, words in (
        (("set", "serve.prot", "1"), "did you mean serve.port"),
        (("set", "serve.port", "eighty"), "must be a whole number"),
        (("set", "model", "ViT-B-23"), "did you mean ViT-B-32"),
        (("get", "nothing"), "no setting 'nothing'"),
    ):
        done = run("config", *args)
        assert done.exit_code == 2 and words in done.output and "Traceback" not in done.output, done.output
    assert (home / "config.toml").read_bytes() == before
    (home / "config.toml").write_text("model = [unclosed\n")
    broken = run("config", "list")
    assert broken.exit_code == 2 and "is not valid TOML" in broken.output


def test_serve_takes_host_and_port_from_the_settings_file(run: Callable[..., Result]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run("config", "set", "serve.port", str(port)).exit_code == 0
        done = run("serve", env={"IMAGEDB_DATABASE_URL": DEAD_URL})
    assert done.exit_code != 0 and f"port {port} on 127.0.0.1 is in use" in done.output, done.output
    assert run("config", "set", "serve.host", "0.0.0.0").exit_code == 0
    exposed = run("serve", env={"IMAGEDB_DATABASE_URL": DEAD_URL})
    assert exposed.exit_code == 2 and "token" in exposed.output, exposed.output  # off loopback, a token is needed


@pytest.mark.slow
def test_a_new_shell_keeps_the_settings_model_and_database(
    run: Callable[..., Result], database_url: str, photos: Path, tiny_model: str, store: Store
) -> None:
    """The issue's case: IMAGEDB_MODEL lived in one shell, so a new shell's new collection fell back to the hub
    model. Set once in the file, a new collection in a shell without the variable gets it."""
    imported = run("models", "import", *tiny_model.split(":", 1))
    assert imported.exit_code == 0, imported.output
    spec = imported.output.split("use it with --model ")[1].split(",")[0]
    assert run("config", "set", "model", spec).exit_code == 0
    assert run("config", "set", "database_url", database_url).exit_code == 0
    done = run("ingest", str(photos), "-c", "kept")
    assert done.exit_code == 0, done.output
    collection = store.models.get_collection("kept")
    assert collection is not None and str(ModelSpec(collection.model_name, collection.pretrained)) == spec
    # The imported copy, with its SHA-256 recorded at import, is what the collection's model registered.
    record = store.models.model_record(collection.model_name, collection.pretrained)
    assert record.checkpoint_sha256 == hashlib.sha256(Path(spec.split(":", 1)[1]).read_bytes()).hexdigest()


# -- weights: import, fetch, the offline error ------------------------------------------------------------------------


def test_import_checks_the_file_against_the_architecture_and_records_it(
    run: Callable[..., Result], home: Path, tiny_model: str, tmp_path: Path
) -> None:
    name, checkpoint = tiny_model.split(":", 1)
    wrong = run("models", "import", "ViT-B-32", checkpoint)
    assert wrong.exit_code == 2 and "does not load into the architecture ViT-B-32" in wrong.output, wrong.output
    assert not (home / "models" / "weights.toml").exists()  # nothing kept
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    shutil.copy(Path(checkpoint).with_name(f"{name}.json"), tmp_path / f"{name}.json")
    assert run("models", "import", name, str(garbage)).exit_code == 2

    done = run("models", "import", name, checkpoint)
    assert done.exit_code == 0, done.output
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    kept = home / "models" / "imported" / digest[:16] / Path(checkpoint).name
    assert kept.read_bytes() == Path(checkpoint).read_bytes()
    assert kept.with_name(f"{name}.json").is_file()  # the custom architecture travels along
    assert f"sha256 {digest}" in done.output and f"use it with --model {name}:{kept}" in done.output
    recorded = (home / "models" / "weights.toml").read_text()
    assert digest in recorded and f"import:{checkpoint}" in recorded
    again = run("models", "import", name, checkpoint)
    assert again.exit_code == 0 and again.output.startswith("there already")


def test_fetch_offline_names_the_repository_the_file_and_the_import_route(run: Callable[..., Result]) -> None:
    # conftest sets HF_HUB_OFFLINE=1, as a user would on a machine without a network.
    done = run("models", "fetch")
    assert done.exit_code == 1, done.output
    error = [line for line in done.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in done.output
    for words in (
        DEFAULT_REPO,
        DEFAULT_FILE,
        "HF_HUB_OFFLINE",
        "imagedb models import ViT-B-32:laion2b_s34b_b79k FILE",
    ):
        assert words in error[0], error[0]


def test_fetch_finds_and_records_weights_in_the_home_folder(
    run: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights in $IMAGEDB_HOME/models/hub (where fetch downloads them) are found offline, by fetch, by the
    provenance check and by the model loader, and recorded with their SHA-256."""
    snapshot = home / "models" / "hub" / f"models--{DEFAULT_REPO.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    (snapshot / DEFAULT_FILE).write_bytes(b"weights stand-in")
    done = run("models", "fetch", "ViT-B-32:laion2b_s34b_b79k")
    assert done.exit_code == 0, done.output
    digest = hashlib.sha256(b"weights stand-in").hexdigest()
    assert "there already" in done.output and f"sha256 {digest}" in done.output
    assert digest in (home / "models" / "weights.toml").read_text()
    monkeypatch.setenv("IMAGEDB_HOME", str(home))
    found = provenance.weights_file(ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k"))
    assert found is not None and found.read_bytes() == b"weights stand-in"


def test_the_offline_ingest_error_names_the_repository_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEDB_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable) as info:
        embed.load(ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k"))
    message = str(info.value)
    assert DEFAULT_REPO in message and DEFAULT_FILE in message and "\n" not in message
    assert "imagedb models fetch ViT-B-32:laion2b_s34b_b79k" in message
    assert (
        "imagedb models import ViT-B-32:laion2b_s34b_b79k FILE" in message and "--model ViT-B-32:/path/to/" in message
    )


@pytest.mark.slow
def test_a_misspelt_model_fails_before_torch_is_imported(tmp_path: Path, photo_source: Path) -> None:
    """The issue's case: `ViT-B-23` surfaced after ~9 s of scanning and importing torch, with no suggestion."""
    program = (
        "import sys\n"
        "from imagedb.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], prog_name='imagedb')\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch imported:', 'torch' in sys.modules, 'open_clip imported:',"
        " 'open_clip' in sys.modules)\n"
    )
    env = {**os.environ, "IMAGEDB_HOME": str(tmp_path), "IMAGEDB_DATABASE_URL": DEAD_URL}
    env.pop("IMAGEDB_MODEL", None)
    for args in (
        ["ingest", str(photo_source), "--model", "ViT-B-23"],
        ["ingest", str(photo_source), "-m", "ViT-B-23:laion2b_s34b_b79k"],
        ["config", "set", "model", "ViT-B-23"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", program, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert "exit 2 torch imported: False open_clip imported: False" in done.stdout, (done.stdout, done.stderr)
        assert "did you mean ViT-B-32" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "config.toml").exists()
    # A checkpoint no longer where it was (`models move OLD NEW`, `models drop`) is still named by its old place.
    assert ModelSpec.parse(f"my-own-arch:{tmp_path}/moved/weights.pt").name == "my-own-arch"


# -- the smaller items -------------------------------------------------------------------------------------------------


def test_the_ingest_rate_counts_only_images_embedded(
    run: Callable[..., Result], database_url: str, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    env = {"IMAGEDB_DATABASE_URL": database_url}
    first = run("ingest", str(photos), "-m", tiny_model, env=env)
    assert first.exit_code == 0, first.output
    assert "added 12" in first.output and "images/s while embedding" in first.output
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(photos / "coffee.jpg", copy / "coffee.jpg")
    reused = run("ingest", str(copy), env=env)
    # One image whose vector was reused: no embedding happened, so no rate ("5.3 images/s" before).
    assert "reused 1" in reused.output and "images/s" not in reused.output, reused.output


def test_db_info_says_the_schema_is_current_and_suggests_tune_only_where_it_matters(
    run: Callable[..., Result], database_url: str, store: Store
) -> None:
    fill_synthetic(store, 25)
    info = run("db", "info", env={"IMAGEDB_DATABASE_URL": database_url}).output
    assert "schema: up to date (revision " in info, info
    assert "imagedb tune" not in info and "tuning matters from about 100,000 images" in info
    assert "imagedb tune -c synthetic" in info_lines(store, "synthetic", TUNE_MATTERS_FROM)[0]


def test_help_texts_end_their_sentences_and_promise_nothing_the_server_cannot_do(run: Callable[..., Result]) -> None:
    db_help = run("db", "--help").output
    assert 'such as -c "select 1" or --help)' in " ".join(db_help.split())
    listen_help = run("db", "listen", "--help").output
    assert "--cert" not in listen_help and "--key" not in listen_help
    assert "built without TLS" in listen_help and "SSH tunnel" in listen_help


def test_models_list_takes_a_collection(run: Callable[..., Result], database_url: str, store: Store) -> None:
    fill_synthetic(store, 3, name="one")
    fill_synthetic(store, 3, name="two")
    env = {"IMAGEDB_DATABASE_URL": database_url}
    listed = run("models", "list", "-c", "one", env=env)
    assert listed.exit_code == 0 and listed.output.startswith("one ") and "two " not in listed.output, listed.output
    assert "two " in run("models", "list", env=env).output
    missing = run("models", "list", "-c", "nope", env=env)
    assert missing.exit_code == 1 and "no collection named 'nope'" in missing.output


def test_models_drop_without_a_terminal_says_how_to_confirm(run: Callable[..., Result]) -> None:
    done = run("models", "drop", "ViT-B-32:laion2b_s34b_b79k", "-c", "photos", env={"IMAGEDB_DATABASE_URL": DEAD_URL})
    assert done.exit_code == 1, done.output
    assert "nothing dropped (no terminal to ask on): confirm with --yes" in done.output
    assert "imagedb models drop ViT-B-32:laion2b_s34b_b79k -c photos --yes" in done.output
    said_no = run("models", "drop", "ViT-B-32:laion2b_s34b_b79k", input="n\n", env={"IMAGEDB_DATABASE_URL": DEAD_URL})
    assert said_no.exit_code == 1 and "nothing dropped" in said_no.output


def test_settings_written_at_once_keep_each_others_values(home: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from imagedb import config

    def write(i: int) -> None:
        config.write_setting("serve.port" if i % 2 else "serve.host", str(9000 + i) if i % 2 else f"127.0.0.{i}", home)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    stored = config.read_settings(home)
    assert set(stored) == {"serve.port", "serve.host"}, stored


def test_a_bad_model_in_the_settings_file_says_where_it_was_set(
    run: Callable[..., Result], home: Path, database_url: str, photos: Path
) -> None:
    home.mkdir()
    (home / "config.toml").write_text('model = "ViT-B-23:laion2b_s34b_b79k"\n')  # edited by hand
    done = run("ingest", str(photos), env={"IMAGEDB_DATABASE_URL": database_url})
    assert done.exit_code == 2, done.output
    assert "did you mean ViT-B-32" in done.output and f"from file ({home / 'config.toml'})" in done.output


def test_home_option_picks_the_settings_file_for_that_command_only(run: Callable[..., Result], tmp_path: Path) -> None:
    from imagedb import config

    other = tmp_path / "other"
    assert run("--home", str(other), "config", "set", "serve.port", "1234").exit_code == 0
    assert (other / "config.toml").is_file()
    assert config.HOME_OPTION.get() is None  # reset when the command ends
    assert run("config", "get", "serve.port").output.strip() == "8000"
    assert run("--home", str(other), "config", "get", "serve.port").output.strip() == "1234"


@pytest.mark.slow
def test_fetch_downloads_into_the_home_with_progress_and_records_the_sha256(tmp_path: Path) -> None:
    """Against a stand-in of the hub on loopback, speaking the two requests the hub client makes for a file."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = os.urandom(300_000)
    digest = hashlib.sha256(body).hexdigest()
    wanted = f"/{DEFAULT_REPO}/resolve/main/{DEFAULT_FILE}"

    class Hub(BaseHTTPRequestHandler):
        def _head(self) -> bool:
            found = self.path.split("?")[0] == wanted
            self.send_response(200 if found else 404)
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("ETag", f'"{digest}"')
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            return found

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self._head()

        def do_GET(self) -> None:  # noqa: N802
            if self._head():
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "IMAGEDB_MODEL")}
    env.update(
        IMAGEDB_HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "imagedb", "models", "fetch"], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert "ViT-B-32:laion2b_s34b_b79k: downloaded" in done.stdout and f"sha256 {digest}" in done.stdout
    # stderr is no terminal here: the progress is plain lines, from the start to the whole file.
    assert f"{DEFAULT_FILE}: 0.0/0.3 MB" in done.stderr and f"{DEFAULT_FILE}: 0.3/0.3 MB" in done.stderr, done.stderr
    kept = list((tmp_path / "home" / "models" / "hub").rglob(DEFAULT_FILE))
    assert kept and kept[0].read_bytes() == body
    assert digest in (tmp_path / "home" / "models" / "weights.toml").read_text()
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").rglob(DEFAULT_FILE))  # not in ~/.cache


@pytest.mark.slow
def test_import_under_a_tag_loads_offline_by_the_tags_name(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline route for hub weights: the file brought over is imported under its tag and the model, still
    named by the tag, loads with HF_HUB_OFFLINE=1 from the copy. The tiny architecture gets a hub tag of its own in
    open_clip's table (as the real ones are declared), since a real model's weights are hundreds of MB."""
    import open_clip.pretrained

    from imagedb import weights

    name, checkpoint = tiny_model.split(":", 1)
    tags = {"tinytag": open_clip.pretrained._pcfg(hf_hub="imagedb-tests/tiny-clip/")}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, tags)
    monkeypatch.setenv("IMAGEDB_HOME", str(tmp_path / "home"))
    tagged = ModelSpec.parse(f"{name}:tinytag")
    with pytest.raises(ModelUnavailable, match=f"imagedb models import {name}:tinytag FILE"):
        embed.Embedder(tagged)  # not there yet: the error names the route

    kept = weights.import_checkpoint(f"{name}:tinytag", Path(checkpoint))
    assert kept.spec == f"{name}:tinytag" and kept.sha256 == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    assert kept.file.is_relative_to(tmp_path / "home" / "models" / "hub")
    loaded = embed.Embedder(tagged)
    assert loaded.dim == 32
    # The very weights of the file: the same vectors as the checkpoint loaded by its path.
    direct = embed.Embedder(ModelSpec.parse(tiny_model))
    assert (loaded.encode_texts(["a cat"]) == direct.encode_texts(["a cat"])).all()
    assert provenance.weights_file(tagged) == kept.file
    with pytest.raises(InvalidInput, match="downloads no weights"):
        weights.import_checkpoint("ViT-B-32:no_such_tag", Path(checkpoint))
