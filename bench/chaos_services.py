"""The processes one chaos scenario owns: a private redis-server, a private PostgreSQL cluster
(or a fresh database on the machine's server), a private RabbitMQ virtual host on the local
broker when RabbitMQ is the broker, fake providers, the API and Celery workers.

Every process is started here, from the main thread, in its own process group, and stopped by
its PID whatever happens; on Linux the kernel also kills it if the harness itself dies (even by
SIGKILL). Nothing this module did not start is ever signalled. A private PostgreSQL cluster is
daemonized by pg_ctl, so only the harness's cleanup (SIGTERM included) stops it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http

READY_TIMEOUT_S = 60


def _pdeathsig() -> Any:
    """A pre-exec hook that makes the kernel SIGKILL the child when this process dies, even by
    SIGKILL, so a killed harness leaves nothing running (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # looked up now: nothing to import after fork
    prctl, set_pdeathsig = libc.prctl, 1  # PR_SET_PDEATHSIG

    def hook() -> None:
        prctl(set_pdeathsig, signal.SIGKILL)

    return hook


_DIE_WITH_PARENT = _pdeathsig()


class Child(Proc):
    """`testkit.procs.Proc` (own process group, output to a log file) that also dies with us."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_DIE_WITH_PARENT)


def poll(cond: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """`cond()` until it is truthy (returned), or AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a process we started and all of its children (children first); their PIDs."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


# ------------------------------------------------------------------ redis


class RedisServer:
    """`redis-server` on a free port, without persistence: a restart comes back empty."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.proc = Child(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(self.log_dir)],
                         clean_env(), self.log_dir / f"redis-{self.starts}.log")
        poll(self.ping, 10, f"redis-server on port {self.port} answering")

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL (a crash) or SIGTERM (a clean stop), and wait until it is gone."""
        if self.proc is not None:
            self.proc.stop(sig, timeout=10)
            self.proc = None

    def close(self) -> None:
        self.kill()


# ------------------------------------------------------------------ postgresql


def pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"no {tool} under /usr/lib/postgresql/*/bin")
    return found[-1]


class PgCluster:
    """A private PostgreSQL cluster (initdb into a temp dir, trust auth, a free port, its unix
    socket in the temp dir) that a scenario may stop and start; removed at the end.

    initdb refuses to run as root, so the cluster runs as the `postgres` OS user."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {r.stdout}{r.stderr}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=300 -c synchronous_commit=off")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  timeout=90)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                kill_tree(pid)  # the postmaster this cluster started, and its backends
        shutil.rmtree(self.dir, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE on the server of `admin_url`, migrated to head; its URL."""
    import sqlalchemy as sa

    from masterplan.db.session import make_engine, upgrade

    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    from masterplan.db.session import make_engine

    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def server_database(admin_url: str, prefix: str = "mp_chaos") -> Iterator[str]:
    """A fresh, migrated database on the machine's PostgreSQL, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


# ------------------------------------------------------------------ rabbitmq


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"  # the local broker; rabbitmqctl manages its node


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    r = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed ({r.returncode}): "
                           f"{(r.stdout + r.stderr).strip()[:500]}")


def rabbitmq_unavailable() -> str | None:
    """Why the local RabbitMQ cannot host a scenario (no rabbitmqctl, node down), or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not on PATH"
    try:
        _rabbitmqctl("list_vhosts")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return str(exc)
    return None


@contextmanager
def rabbitmq_vhost(prefix: str = "chaos") -> Iterator[str]:
    """A virtual host of this scenario's own on the local RabbitMQ (as the `amqp_url` fixture of
    tests/conftest.py makes one), its broker URL; deleted afterwards, queues and all."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{RABBITMQ}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost, check=False)


# ------------------------------------------------------------------ our processes


class FakeProcess:
    """`python -m testkit.fake_provider ...` and its control API."""

    def __init__(self, name: str, log_dir: Path, *args: str) -> None:
        self.name = name
        self.proc = Child([str(BIN / "python"), "-m", "testkit.fake_provider",
                          "--port", "0", *args], clean_env(), log_dir / f"fake-{name}.log")
        line = poll(lambda: self._ready_line(), 30, f"fake provider {name} starting")
        self.url = line.split()[1]

    def _ready_line(self) -> str | None:
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"fake provider exited: {self.proc.output()[-2000:]}")
        return next((ln for ln in self.proc.output().splitlines() if ln.startswith("READY ")),
                    None)

    def stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/_fake/stats", timeout=5)
        r.raise_for_status()
        stats: dict[str, Any] = r.json()
        return stats

    def close(self) -> None:
        self.proc.stop(signal.SIGTERM, timeout=10)


class Worker:
    """`celery -A workers worker -P threads -c N -Q personas,pipeline`, named `name`."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, concurrency: int) -> None:
        self.name = name
        self.hostname = f"chaos-{name}-{uuid.uuid4().hex[:6]}@%h"
        self.proc = Child([str(BIN / "celery"), "-A", "workers", "worker", "-P", "threads",
                          "-c", str(concurrency), "-Q", "personas,pipeline", "-n", self.hostname,
                          "-l", "INFO", "--without-gossip", "--without-mingle"],
                         env, log_dir / f"worker-{name}.log")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        self.proc.wait_for_text(" ready.", timeout=READY_TIMEOUT_S)

    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    def last_words(self) -> str:
        """The worker's last CRITICAL line (why it stopped by itself), if any."""
        lines = [ln for ln in self.proc.output().splitlines() if "CRITICAL" in ln]
        return lines[-1].split("CRITICAL", 1)[1].strip()[:200] if lines else "no CRITICAL line"

    def local_ports(self) -> set[int]:
        """Local TCP ports of the worker's process tree (to match the fake's client ports)."""
        ports: set[int] = set()
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return ports
        for p in procs:
            try:
                ports.update(c.laddr.port for c in p.net_connections(kind="tcp") if c.laddr)
            except psutil.Error:
                pass
        return ports

    def close(self) -> None:
        # Cold shutdown: what is left in the queues goes with the scenario's Redis (or vhost).
        self.proc.stop(signal.SIGQUIT, timeout=10)


class Api:
    """`uvicorn api.main:app` on a free port."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = Child([str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port",
                          str(port), "--log-level", "warning"], env, log_dir / "api.log")
        wait_http(f"{self.base}/readyz", timeout=READY_TIMEOUT_S, proc=self.proc)

    def close(self) -> None:
        self.proc.stop(signal.SIGTERM, timeout=15)
