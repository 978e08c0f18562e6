"""Data sources: formats, object stores on real emulators, content versions, secrets, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from newt.sources import (
    SourceError,
    file_sha256,
    literal_secrets,
    load_source,
    locate,
    redact,
    redact_url,
    resolve_storage_options,
    source_version,
)

try:  # tests/ imported as a package, or as the folder pytest puts on sys.path
    from tests import servers
except ImportError:
    import servers

# Fixtures are found by name in the test module's namespace.
AZURITE_KEY, Store, azurite_connection_string = (
    servers.AZURITE_KEY,
    servers.Store,
    servers.azurite_connection_string,
)
s3_server, s3_iam_server, gcs_server, azure_server = (
    servers.s3_server, servers.s3_iam_server, servers.gcs_server, servers.azure_server,
)  # fmt: skip

ROWS = [
    {"prompt": "2+2", "completion": "four"},
    {"prompt": "3+3", "completion": "six"},
]  # words: csv infers no numbers
JSONL = "".join(json.dumps(r) + "\n" for r in ROWS)


def spec(path: str, **kw) -> SimpleNamespace:
    """A dataset entry with the recipe's defaults (stands in for newt's DatasetSpec)."""
    fields = dict(path=path, type="completion", split="train", data_files=None, name=None, ds_type=None,
                  storage_options={})  # fmt: skip
    fields.update(kw)
    return SimpleNamespace(**fields)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWT_CACHE_DIR", str(tmp_path / "newt-cache"))


def load(s: SimpleNamespace, tmp_path: Path, **kw):
    return load_source(s, "datasets[0]", cache_dir=str(tmp_path / "hf"), **kw)


# --- local formats ---------------------------------------------------------------------------------


def write_format(folder: Path, fmt: str, stem: str = "train") -> Path:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    table = pa.Table.from_pylist(ROWS)
    path = folder / f"{stem}.{fmt}"
    if fmt == "jsonl":
        path.write_text(JSONL)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS, indent=1))
    elif fmt == "parquet":
        pyarrow.parquet.write_table(table, path)
    elif fmt == "csv":
        pyarrow.csv.write_csv(table, path)
    elif fmt == "arrow":
        with pa.ipc.new_stream(path, table.schema) as writer:  # the streaming format `datasets` saves
            writer.write_table(table)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "arrow"])
def test_each_local_format_loads_by_extension(fmt: str, tmp_path: Path) -> None:
    path = write_format(tmp_path, fmt)
    ds = load(spec(str(path)), tmp_path)
    assert ds.to_list() == ROWS


def test_ds_type_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text(JSONL)
    with pytest.raises(SourceError, match=r"ds_type.*\n  fix: set datasets\[0\]\.ds_type"):
        load(spec(str(path)), tmp_path)
    assert load(spec(str(path), ds_type="jsonl"), tmp_path).to_list() == ROWS


def test_folder_reads_every_data_file_sorted_and_skips_hidden(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (data / "sub" / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (data / ".hidden.jsonl").write_text("not json\n")
    (data / "notes.txt").write_text("ignored")
    version = source_version(spec(str(data)))
    assert [f["path"] for f in version["files"]] == ["b.jsonl", "sub/a.jsonl"]
    assert sorted(load(spec(str(data)), tmp_path).to_list(), key=str) == sorted(ROWS, key=str)


def test_data_files_select_within_a_folder(tmp_path: Path) -> None:
    write_format(tmp_path, "jsonl", "train")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    s = spec(str(tmp_path), data_files="train*.jsonl")
    assert [f["path"] for f in source_version(s)["files"]] == ["train.jsonl"]
    assert load(s, tmp_path).to_list() == ROWS
    with pytest.raises(SourceError, match=r"datasets\[0\]\.data_files: 'test.jsonl' matches no file under"):
        load(spec(str(tmp_path), data_files=["train.jsonl", "test.jsonl"]), tmp_path)


def test_split_slices_apply_to_files(tmp_path: Path) -> None:
    path = write_format(tmp_path, "jsonl")
    assert load(spec(str(path), split="train[:1]"), tmp_path).to_list() == ROWS[:1]


# --- content versions of local files ---------------------------------------------------------------


def test_local_version_is_sha256_of_the_bytes_and_changes_with_them(tmp_path: Path) -> None:
    import hashlib

    path = write_format(tmp_path, "jsonl")
    first = source_version(spec(str(path)))
    assert first["kind"] == "sha256"
    assert first["version"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first["files"] == [
        {"path": "train.jsonl", "size": len(JSONL), "version": first["version"], "kind": "sha256"}
    ]
    path.write_text(JSONL + json.dumps(ROWS[0]) + "\n")
    assert source_version(spec(str(path)))["version"] != first["version"]


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    path = write_format(tmp_path, "jsonl")
    digest = file_sha256(str(path))
    [entry] = (tmp_path / "newt-cache" / "sha256").iterdir()
    record = json.loads(entry.read_text())
    record["sha256"] = "from-the-cache"
    entry.write_text(json.dumps(record))
    assert file_sha256(str(path)) == "from-the-cache"  # same (path, size, mtime): not re-read
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert file_sha256(str(path)) == digest  # touched: hashed again


def test_folder_version_changes_when_a_file_is_added_or_renamed(tmp_path: Path) -> None:
    write_format(tmp_path, "jsonl", "a")
    v1 = source_version(spec(str(tmp_path)))["version"]
    (tmp_path / "a.jsonl").rename(tmp_path / "b.jsonl")
    v2 = source_version(spec(str(tmp_path)))["version"]
    write_format(tmp_path, "jsonl", "c")
    v3 = source_version(spec(str(tmp_path)))["version"]
    assert len({v1, v2, v3}) == 3


# --- storage_options: ${env:NAME} and redaction ----------------------------------------------------


def test_env_references_expand_without_touching_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWT_T_SECRET", "s3cr3t-value")
    options = {
        "secret": "${env:NEWT_T_SECRET}",
        "client_kwargs": {"x": "a-${env:NEWT_T_SECRET}"},
        "anon": False,
    }
    resolved = resolve_storage_options(options)
    assert resolved == {"secret": "s3cr3t-value", "client_kwargs": {"x": "a-s3cr3t-value"}, "anon": False}
    assert options["secret"] == "${env:NEWT_T_SECRET}"  # input not mutated


def test_unset_env_variable_names_the_variable_the_key_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWT_T_MISSING", raising=False)
    with pytest.raises(SourceError) as err:
        resolve_storage_options(
            {"client_kwargs": {"token": "${env:NEWT_T_MISSING}"}}, "datasets[2].storage_options"
        )
    message = str(err.value)
    assert "datasets[2].storage_options.client_kwargs.token" in message
    assert "NEWT_T_MISSING is not set" in message and "export NEWT_T_MISSING=" in message


def test_dagster_envvar_objects_are_references(monkeypatch: pytest.MonkeyPatch) -> None:
    class EnvVar(str):  # the shape of dagster.EnvVar, without importing dagster in newt's tests of newt
        @property
        def env_var_name(self) -> str:
            return str(self)

        def get_value(self, default=None):
            return os.environ.get(str(self), default)

    monkeypatch.setenv("NEWT_T_KEY", "k3y-value")
    options = {"key": EnvVar("NEWT_T_KEY")}
    assert resolve_storage_options(options) == {"key": "k3y-value"}
    assert redact(options) == {"key": "${env:NEWT_T_KEY}"}


def test_redact_keeps_references_and_hides_literal_secrets() -> None:
    options = {
        "key": "AKIALITERAL",
        "secret": "${env:AWS_SECRET}",
        "token": "anon",
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"aws_secret_access_key": "literal2"},
        "conn": f"AccountName=a;AccountKey={AZURITE_KEY};BlobEndpoint=http://x",
    }
    shown = redact(options)
    assert shown == {
        "key": "***",
        "secret": "${env:AWS_SECRET}",
        "token": "anon",
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"aws_secret_access_key": "***"},
        "conn": "AccountName=a;AccountKey=***;BlobEndpoint=http://x",
    }
    assert literal_secrets(options, "datasets[0].storage_options") == [
        "datasets[0].storage_options.key",
        "datasets[0].storage_options.client_kwargs.aws_secret_access_key",
        "datasets[0].storage_options.conn",
    ]


# --- hub names ---------------------------------------------------------------------------------------


def test_hub_names_are_told_apart_from_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert locate(spec("acme/tiny-chat")).kind == "hub"
    assert locate(spec("tiny_shakespeare")).kind == "hub"
    write_format(tmp_path, "jsonl", "local")
    assert locate(spec("local.jsonl")).kind == "local"
    with pytest.raises(SourceError, match="no file or folder at"):
        locate(spec("./missing/train.jsonl"))


HUB_CARD = """\
---
configs:
- config_name: easy
  data_files:
  - split: train
    path: easy/train.jsonl
  - split: test
    path: easy/test.jsonl
- config_name: hard
  data_files:
  - split: train
    path: hard/*.jsonl
---
# tiny stand-in for a hub dataset
"""


def hub_standin(root: Path) -> Path:
    """A folder laid out as `hf download --repo-type dataset NAME --local-dir DIR` leaves a hub dataset."""
    (root / "easy").mkdir(parents=True)
    (root / "hard").mkdir()
    (root / "README.md").write_text(HUB_CARD)
    (root / "easy" / "train.jsonl").write_text(JSONL)
    (root / "easy" / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (root / "hard" / "0.jsonl").write_text(json.dumps({"prompt": "d/dx x^2", "completion": "2x"}) + "\n")
    return root


def test_hub_layout_loads_config_and_split_like_the_hub(tmp_path: Path) -> None:
    repo = hub_standin(tmp_path / "acme--tiny")
    assert locate(spec(str(repo))).kind == "repo"
    assert load(spec(str(repo), name="easy", split="test"), tmp_path).to_list() == ROWS[:1]
    assert load(spec(str(repo), name="hard"), tmp_path)["completion"] == ["2x"]
    with pytest.raises(SourceError, match=r"datasets\[0\]\.name"):
        load(spec(str(repo), name="medium"), tmp_path)
    # The card is part of the version: it decides what is loaded.
    v1 = source_version(spec(str(repo), name="easy"))["version"]
    (repo / "README.md").write_text(HUB_CARD.replace("easy/test.jsonl", "easy/train.jsonl"))
    assert source_version(spec(str(repo), name="easy"))["version"] != v1


def run_offline(code: str, hub_cache: Path) -> subprocess.CompletedProcess:
    """Run `code` with the hub offline and its cache at `hub_cache` (both read when huggingface_hub imports)."""
    repo = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=hub_cache)  # fmt: skip


def test_hub_version_offline_uses_the_cached_commit_or_says_how_to_get_it(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "datasets--acme--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "README.md").write_text("# tiny\n")
    code = """
        from types import SimpleNamespace as S
        from newt.sources import SourceError, source_version
        s = dict(type="x", split="train", data_files=None, name=None, ds_type=None, storage_options={})
        print(source_version(S(path="acme/tiny", **s)))
        try:
            source_version(S(path="acme/absent", **s), "datasets[1]")
        except SourceError as e:
            print("ERROR", e)
    """
    done = run_offline(code, tmp_path)
    assert done.returncode == 0, done.stderr
    first, error = done.stdout.strip().split("\n", 1)
    assert first == str({"uri": "acme/tiny", "kind": "hub", "version": sha, "files": []})
    assert error.startswith("ERROR datasets[1].path: 'acme/absent' is not a local file or folder")
    assert "hf download --repo-type dataset acme/absent --local-dir DIR" in error


# --- bad input ---------------------------------------------------------------------------------------


def test_invalid_json_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(JSONL + '{"prompt": "5+5", "completion": ten}\n' + JSONL)
    with pytest.raises(SourceError) as err:
        load(spec(str(path)), tmp_path)
    message = str(err.value)
    assert f"{path} line 3 is not valid JSON" in message
    assert '"completion": ten}' in message and "fix: fix or delete that line" in message


def test_invalid_json_document_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}\n]\n')
    with pytest.raises(SourceError, match=rf"{path} line 3 is not valid JSON"):
        load(spec(str(path)), tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_dataset_is_an_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(
        SourceError, match=r"datasets\[0\]\.path: the dataset is empty: .*train\.jsonl holds no rows"
    ):
        load(spec(str(path)), tmp_path)


def test_missing_local_path_names_the_absolute_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(SourceError) as err:
        source_version(spec(str(missing)), "datasets[3]")
    assert str(err.value) == (
        f"datasets[3].path: no file or folder at {missing}\n"
        f"  fix: check datasets[3].path; relative paths are read from the current directory ({os.getcwd()})"
    )


def test_folder_without_data_files_and_unknown_ds_type(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no jsonl/json/parquet/csv/arrow data files"):
        source_version(spec(str(tmp_path)))
    with pytest.raises(SourceError, match=r"unknown format 'yaml'.*\n  fix: use one of arrow, csv, json"):
        source_version(spec(str(tmp_path), ds_type="yaml"))


# --- object stores on emulators ----------------------------------------------------------------------


@pytest.fixture(params=["s3", "gcs", "azure"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_server")


def test_store_jsonl_loads_and_version_follows_the_object(store: Store, tmp_path: Path) -> None:
    url = store.put(f"{store.unique_prefix()}/train.jsonl", JSONL)
    s = spec(url, storage_options=dict(store.storage_options))
    v1 = source_version(s, "datasets[0]")
    assert v1["uri"] == url and v1["kind"] in {"etag", "md5", "generation"} and len(v1["files"]) == 1
    assert source_version(s)["version"] == v1["version"]  # stable while the object is unchanged
    assert load(s, tmp_path).to_list() == ROWS
    assert s.storage_options == store.storage_options  # load_dataset's "hf" key did not leak in

    store.put(url, JSONL + json.dumps({"prompt": "4+4", "completion": "eight"}) + "\n")
    v2 = source_version(s)
    assert v2["version"] != v1["version"]
    assert load(s, tmp_path)["completion"] == ["four", "six", "eight"]  # new object, not a stale download


def test_recipe_dataset_entry_reads_from_each_store(store: Store, tmp_path: Path) -> None:
    """The same through the recipe schema's own `DatasetSpec`, as the `dataset` stage calls it."""
    from newt.config import DatasetSpec

    url = store.put(f"{store.unique_prefix()}/train.jsonl", JSONL)
    entry = DatasetSpec(path=url, storage_options=store.storage_options)
    version = source_version(entry, "datasets[0]")
    assert load_source(entry, "datasets[0]", cache_dir=str(tmp_path / "hf"), version=version).to_list() == ROWS
    assert entry.storage_options == store.storage_options  # still the ${env:...} references


def test_store_folder_lists_every_object_sorted(store: Store, tmp_path: Path) -> None:
    prefix = store.unique_prefix()
    store.put(f"{prefix}/part-1.jsonl", json.dumps(ROWS[1]) + "\n")
    store.put(f"{prefix}/part-0.jsonl", json.dumps(ROWS[0]) + "\n")
    s = spec(prefix, storage_options=dict(store.storage_options))
    assert [f["path"] for f in source_version(s)["files"]] == ["part-0.jsonl", "part-1.jsonl"]
    assert load(s, tmp_path).to_list() == ROWS


def test_store_missing_bucket_and_object_name_what_is_missing(store: Store) -> None:
    options = dict(store.storage_options)
    with pytest.raises(SourceError, match=r"bucket or container 'no-such-bucket-x' does not exist") as err:
        source_version(
            spec(f"{store.protocol}://no-such-bucket-x/train.jsonl", storage_options=options), "datasets[1]"
        )
    assert "datasets[1].path" in str(err.value) and "fix: create it, or fix the bucket name" in str(err.value)
    missing = f"{store.unique_prefix()}/absent.jsonl"
    with pytest.raises(SourceError, match=rf"no object or folder at {missing} \(bucket 'newt-test' exists\)"):
        source_version(spec(missing, storage_options=options))


def test_store_empty_object_and_bad_row(store: Store, tmp_path: Path) -> None:
    options = dict(store.storage_options)
    empty = store.put(f"{store.unique_prefix()}/train.jsonl", "")
    with pytest.raises(SourceError, match="the dataset is empty"):
        load(spec(empty, storage_options=options), tmp_path)
    bad = store.put(f"{store.unique_prefix()}/train.jsonl", JSONL + "{oops\n")
    with pytest.raises(SourceError, match=rf"{bad} line 3 is not valid JSON"):
        load(spec(bad, storage_options=options), tmp_path)


def test_store_parquet(store: Store, tmp_path: Path) -> None:
    path = write_format(tmp_path, "parquet")
    url = store.put(f"{store.unique_prefix()}/train.parquet", path.read_bytes())
    assert load(spec(url, storage_options=dict(store.storage_options)), tmp_path).to_list() == ROWS


def test_azure_bad_key_is_refused_without_showing_the_key(
    azure_server: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = azure_server.put(f"{azure_server.unique_prefix()}/train.jsonl", JSONL)
    wrong_key = AZURITE_KEY[:-8] + "AAAAAAA="
    monkeypatch.setenv("NEWT_T_AZ_BAD", azurite_connection_string(azure_server.endpoint, wrong_key))
    s = spec(url, storage_options={"connection_string": "${env:NEWT_T_AZ_BAD}"})
    for call in (source_version, load):
        with pytest.raises(SourceError) as err:
            call(s, "datasets[0]") if call is source_version else call(s, tmp_path)
        message = str(err.value)
        assert "access to" in message and "was refused" in message
        assert "check the credentials in datasets[0].storage_options" in message
        assert "${env:NEWT_T_AZ_BAD}" in message
        assert wrong_key not in message and AZURITE_KEY not in message


def test_store_secrets_stay_out_of_versions_and_errors(s3_server: Store, tmp_path: Path) -> None:
    url = s3_server.put(f"{s3_server.unique_prefix()}/train.jsonl", JSONL)
    secret = os.environ["NEWT_TEST_S3_SECRET"]
    s = spec(url, storage_options=dict(s3_server.storage_options))
    assert secret not in json.dumps(source_version(s))
    with pytest.raises(SourceError) as err:
        source_version(spec(url + ".missing", storage_options=dict(s3_server.storage_options)))
    assert secret not in str(err.value)
    assert secret not in json.dumps(redact(resolve_storage_options(s3_server.storage_options)))


def test_s3_wrong_secret_is_refused_without_showing_it(
    s3_iam_server: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3_iam_server.put(f"{s3_iam_server.unique_prefix()}/train.jsonl", JSONL)
    good = dict(s3_iam_server.storage_options)
    assert load(spec(url, storage_options=good), tmp_path).to_list() == ROWS  # the right key works
    wrong = "wrong-" + os.environ["NEWT_TEST_S3_IAM_SECRET"][6:]
    monkeypatch.setenv("NEWT_T_S3_WRONG", wrong)
    bad = spec(url, storage_options={**good, "secret": "${env:NEWT_T_S3_WRONG}"})
    with pytest.raises(SourceError) as err:
        source_version(bad, "datasets[0]")
    message = str(err.value)
    assert f"access to {url} was refused" in message and "check the credentials" in message
    assert "'secret': '${env:NEWT_T_S3_WRONG}'" in message and wrong not in message


@pytest.fixture
def http_folder(tmp_path: Path):
    """A plain HTTP server on 127.0.0.1 serving `tmp_path/www` (Python's, so no ETag header)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_url_loads_and_is_versioned_by_its_bytes_without_an_etag(http_folder, tmp_path: Path) -> None:
    import hashlib

    root, base = http_folder
    (root / "train.jsonl").write_text(JSONL)
    s = spec(f"{base}/train.jsonl")
    version = source_version(s)
    assert (version["kind"], version["version"]) == ("sha256", hashlib.sha256(JSONL.encode()).hexdigest())
    assert load(s, tmp_path).to_list() == ROWS
    (root / "train.jsonl").write_text(JSONL + json.dumps({"prompt": "4+4", "completion": "eight"}) + "\n")
    assert source_version(s)["version"] != version["version"]
    assert load(s, tmp_path)["completion"] == ["four", "six", "eight"]  # no ETag, still not stale
    with pytest.raises(
        SourceError, match=rf"no file at {base}/absent.jsonl \(the server answered Not Found\)"
    ):
        source_version(spec(f"{base}/absent.jsonl"))


def test_signed_url_credentials_stay_out_of_versions_and_errors(http_folder, tmp_path: Path) -> None:
    root, base = http_folder
    (root / "train.jsonl").write_text(JSONL)
    signed = f"{base}/train.jsonl?sv=2024-01-01&sig=SECRETSIG123&se=2030"
    assert redact_url(signed) == f"{base}/train.jsonl?sv=2024-01-01&sig=***&se=2030"
    assert "SECRETSIG123" not in json.dumps(source_version(spec(signed)))
    with pytest.raises(SourceError) as err:
        source_version(spec(f"{base}/absent.jsonl?X-Amz-Signature=SECRETSIG123"))
    assert "SECRETSIG123" not in str(err.value) and "X-Amz-Signature=***" in str(err.value)
