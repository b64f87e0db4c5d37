"""Real dependencies for the tests, started from nothing: a throwaway MariaDB, moto's S3
server, rclone's `serve s3`, and `imagesvc serve` itself. Each is a process on 127.0.0.1
that a test may stop and start again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
S3_ACCESS_KEY = "imagesvc-test"
S3_SECRET_KEY = "imagesvc-test-secret-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout}s")


def http_answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            httpx.get(url, timeout=0.5)
        except httpx.HTTPError:
            return False
        return True

    return check


class Process:
    """A child process with its own log file, restartable with the same command."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log_dir: Path,
        *,
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self.ready = ready
        self.env = env
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            return self.ready()

        wait_until(up, timeout=self.timeout, what=self.name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def start_moto(log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        "moto",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        log_dir,
        ready=http_answers(url),
    )
    process.start()
    return process, url


def start_rclone(log_dir: Path, data_dir: Path, bucket: str) -> tuple[Process, str]:
    # Buckets are the top-level directories of the served path.
    (data_dir / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        "rclone",
        [
            str(BIN / "rclone"),
            "serve",
            "s3",
            str(data_dir),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{S3_ACCESS_KEY},{S3_SECRET_KEY}",
            "--config",
            "/dev/null",
        ],
        log_dir,
        ready=http_answers(url),
    )
    process.start()
    return process, url


class MariaDB:
    """A throwaway MariaDB server in a temporary directory (isolated from the machine's
    own instance, and stoppable by fault-injection tests)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.datadir = base / "data"
        self.rundir = base / "run"
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/imagesvc"

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True)
        self.rundir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "mysql", "mysql")
            for path in (self.datadir, self.rundir):
                shutil.chown(path, "mysql", "mysql")
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                *(["--user=mysql"] if os.geteuid() == 0 else []),
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        if self.process is None:
            self.process = Process(
                "mariadb",
                [
                    "mariadbd",
                    "--no-defaults",
                    *(["--user=mysql"] if os.geteuid() == 0 else []),
                    f"--datadir={self.datadir}",
                    f"--socket={self.rundir / 'mysqld.sock'}",
                    f"--pid-file={self.rundir / 'mysqld.pid'}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=128M",
                    "--max-connections=500",
                ],
                self.base,
                ready=self._accepts,
            )
        self.process.start()

    def _accepts(self) -> bool:
        result = subprocess.run(
            ["mariadb", "-uroot", "-h127.0.0.1", f"-P{self.port}", "-e", "SELECT 1"],
            capture_output=True,
        )
        return result.returncode == 0

    def sql(self, statement: str) -> str:
        result = subprocess.run(
            ["mariadb", "-uroot", "-h127.0.0.1", f"-P{self.port}", "-N", "-e", statement],
            capture_output=True,
            check=True,
            text=True,
        )
        return result.stdout

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_mariadb(base: Path) -> MariaDB:
    server = MariaDB(base)
    server.install()
    server.start()
    server.sql("CREATE DATABASE imagesvc CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    return server


@contextmanager
def throwaway_mariadb() -> Iterator[MariaDB]:
    """A migrated MariaDB in a temporary directory, removed afterwards. Not under pytest's
    tmp dir: that is private to root, and mariadbd runs as `mysql`."""
    from alembic import command
    from imagesvc.cli import alembic_config

    base = Path(tempfile.mkdtemp(prefix="imagesvc-mariadb-"))
    base.chmod(0o755)
    server = start_mariadb(base / "server")
    try:
        command.upgrade(alembic_config(server.url), "head")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def redis_server_binary() -> str:
    """`redis-server`, installed from Debian's packages when the machine lacks it."""
    found = shutil.which("redis-server")
    if found is None:
        install = ["apt-get", "install", "-y", "-q", "redis-server"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(install, check=True, capture_output=True)
        found = shutil.which("redis-server") or "redis-server"
    return found


def tcp_accepts(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return check


def start_redis(log_dir: Path) -> tuple[Process, str]:
    """A throwaway redis-server on its own port: nothing saved, nothing shared."""
    port = free_port()
    process = Process(
        f"redis-{port}",
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        log_dir,
        ready=tcp_accepts(port),
    )
    process.start()
    return process, f"redis://127.0.0.1:{port}/0"


def s3_env(database_url: str, endpoint: str, bucket: str) -> dict[str, str]:
    """The environment of a server process on an S3 store (rclone or moto here): callers
    add their prefix, part size and limits."""
    return {
        "IMAGESVC_DATABASE_URL": database_url,
        "IMAGESVC_STORAGE_BACKEND": "s3",
        "IMAGESVC_S3_BUCKET": bucket,
        "IMAGESVC_S3_ENDPOINT_URL": endpoint,
        "IMAGESVC_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "IMAGESVC_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "IMAGESVC_S3_ADDRESSING_STYLE": "path",
    }


def start_imagesvc(
    log_dir: Path, env: Mapping[str, str], *, workers: int = 1
) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        f"imagesvc-{port}",
        [
            str(BIN / "imagesvc"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        log_dir,
        ready=http_answers(f"{url}/healthz"),
        env=env,
    )
    process.start()
    return process, url


def create_key(env: Mapping[str, str], owner: str) -> str:
    """`imagesvc keys create` as an operator runs it; the key is the last line."""
    result = subprocess.run(
        [str(BIN / "imagesvc"), "keys", "create", "--owner", owner],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip().splitlines()[-1]
