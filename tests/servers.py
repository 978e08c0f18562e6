"""Object-store emulators on 127.0.0.1 for tests: moto (S3), gcp-storage-emulator (GCS), Azurite (Azure).

Each fixture starts the real server as a subprocess on a free port, waits until it answers, yields a
`Store`, and stops the process by its PID. Secrets reach the recipe only as `${env:NAME}`: the fixture
puts the credentials in the environment and `Store.storage_options` refers to them, as a user would.

A missing server binary skips the test with a loud reason, except under CI=true, where it fails:
`.ci/deps.sh` (Azurite) and the `test` extra (moto, gcp-storage-emulator) install them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# gcsfs reads this when it is imported; with experimental zonal/HNS support on, every bucket operation
# against the emulator waits 60 s for a metadata call the emulator does not implement.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
# Azurite's published development account (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_START_TIMEOUT_S = 30.0


@dataclass
class Store:
    """A running emulator: where it is, the recipe-style storage_options, and helpers to put data there."""

    name: str  # "s3" | "gcs" | "azure"
    protocol: str  # URL scheme: s3, gs, az
    endpoint: str
    storage_options: dict[str, Any]  # secrets as ${env:NAME}, as a recipe would hold them
    env: dict[str, str] = field(
        repr=False
    )  # hidden from reprs; the variables the options refer to (set in os.environ while the server runs)
    pid: int
    bucket: str = "newt-test"
    _fs: Any = field(default=None, repr=False)

    @property
    def url_prefix(self) -> str:
        """`s3://newt-test`, `gs://newt-test`, `az://newt-test`: a bucket that exists."""
        return f"{self.protocol}://{self.bucket}"

    def fs(self):
        """An fsspec filesystem on the emulator (options resolved), with listings never cached."""
        if self._fs is None:
            from newt.sources import open_store_fs

            self._fs, _ = open_store_fs(self.url_prefix, self.storage_options)
        self._fs.invalidate_cache()
        return self._fs

    def new_bucket(self) -> str:
        """Create a fresh bucket/container and return its URL (`s3://b-1a2b…`)."""
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return f"{self.protocol}://{name}"

    def unique_prefix(self) -> str:
        """A URL under the default bucket that no other test uses."""
        return f"{self.url_prefix}/{uuid.uuid4().hex[:12]}"

    def put(self, url: str, data: bytes | str) -> str:
        """Write `data` to `url` (replacing any object there) and return the URL."""
        fs = self.fs()
        with fs.open(url, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        fs.invalidate_cache()
        return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(what: str, how: str) -> None:
    message = f"{what} is not installed: {how}. Object-store tests did NOT run."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(f"!!! {message}")


def _venv_bin(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _wait_ready(proc: subprocess.Popen, port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} at start; its log:\n{log.read_text()[-3000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(
        f"{name} did not listen on 127.0.0.1:{port} within {_START_TIMEOUT_S} s; log:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started, by its PID only."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _start(
    name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    _wait_ready(proc, port, log, name)
    return proc


class _Env:
    """Set variables for the fixture's lifetime and put back what was there (session scope has no monkeypatch)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved = {k: os.environ.get(k) for k in values}

    def __enter__(self) -> None:
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """moto's S3 server. Credentials are arbitrary (moto accepts any) but travel as ${env:...}."""
    binary = _venv_bin("moto_server")
    if binary is None:
        _missing("moto_server", "pip install 'moto[server]==5.2.5' (the project's `test` extra)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("moto")
    env = {
        "NEWT_TEST_S3_KEY": "testing-key-id",
        "NEWT_TEST_S3_SECRET": "testing-secret-" + uuid.uuid4().hex,
        # The region must come from the environment: s3fs's client_kwargs region makes moto reject bucket creation.
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = _start("moto_server", [binary, "-H", "127.0.0.1", "-p", str(port)], port, workdir)
    endpoint = f"http://127.0.0.1:{port}"
    store = Store(
        name="s3", protocol="s3", endpoint=endpoint, env=env, pid=proc.pid,
        storage_options={
            "key": "${env:NEWT_TEST_S3_KEY}", "secret": "${env:NEWT_TEST_S3_SECRET}", "endpoint_url": endpoint,
        },
    )  # fmt: skip
    try:
        with _Env(env):
            store.fs().mkdir(store.bucket)
            yield store
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_iam_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """moto's S3 server checking signatures against its IAM users, so wrong credentials are refused.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unsigned: those create the IAM
    user, its access key and its policy; every later request must be signed with that key.
    """
    binary = _venv_bin("moto_server")
    if binary is None:
        _missing("moto_server", "pip install 'moto[server]==5.2.5' (the project's `test` extra)")
    import boto3

    port = _free_port()
    workdir = tmp_path_factory.mktemp("moto-iam")
    argv = [binary, "-H", "127.0.0.1", "-p", str(port)]
    proc = _start("moto_server", argv, port, workdir, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )  # fmt: skip
        iam.create_user(UserName="newt")
        key = iam.create_access_key(UserName="newt")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="newt", PolicyName="s3", PolicyDocument=json.dumps(policy))
        env = {
            "NEWT_TEST_S3_IAM_KEY": key["AccessKeyId"],
            "NEWT_TEST_S3_IAM_SECRET": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        store = Store(
            name="s3", protocol="s3", endpoint=endpoint, env=env, pid=proc.pid,
            storage_options={
                "key": "${env:NEWT_TEST_S3_IAM_KEY}", "secret": "${env:NEWT_TEST_S3_IAM_SECRET}",
                "endpoint_url": endpoint,
            },
        )  # fmt: skip
        with _Env(env):
            store.fs().mkdir(store.bucket)
            yield store
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """gcp-storage-emulator, in memory. It does not check credentials: `token: anon`."""
    binary = _venv_bin("gcp-storage-emulator")
    if binary is None:
        _missing("gcp-storage-emulator", "pip install gcp-storage-emulator==2026.7.19 (the `test` extra)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("gcs")
    argv = [binary, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    proc = _start("gcp-storage-emulator", argv, port, workdir)
    endpoint = f"http://127.0.0.1:{port}"
    store = Store(
        name="gcs", protocol="gs", endpoint=endpoint, env={}, pid=proc.pid,
        storage_options={"endpoint_url": endpoint, "token": "anon", "project": "newt-test"},
    )  # fmt: skip
    try:
        store.fs().mkdir(store.bucket)
        yield store
    finally:
        _stop(proc)


def azurite_binary() -> str | None:
    local = REPO / ".ci" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Azurite's blob service (npm azurite@3.35.0). It checks shared-key signatures, so bad keys fail."""
    binary = azurite_binary()
    if binary is None:
        _missing("azurite-blob", "run .ci/deps.sh (npm azurite@3.35.0 into .ci/node_modules; needs node 20)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    argv = [
        binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir / "data"),
        "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
    ]  # fmt: skip
    proc = _start("azurite-blob", argv, port, workdir)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"NEWT_TEST_AZURE_CONNECTION_STRING": azurite_connection_string(endpoint)}
    store = Store(
        name="azure", protocol="az", endpoint=endpoint, env=env, pid=proc.pid,
        storage_options={"connection_string": "${env:NEWT_TEST_AZURE_CONNECTION_STRING}"},
    )  # fmt: skip
    try:
        with _Env(env):
            store.fs().mkdir(store.bucket)
            yield store
    finally:
        _stop(proc)
