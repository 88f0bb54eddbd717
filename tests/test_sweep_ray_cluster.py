"""The ray backend against a real Ray cluster: ``robustfeat sweep --backend ray --address``
joins a head started with ``ray start --head`` (its own process group, its own temp dir),
gives the local backend's results from workers of that cluster, and, on a head with Ray's
token authentication, runs with the cluster's token and is refused, in one line, without it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from robustfeat.data.cache import cache_root  # noqa: E402
from robustfeat.sweep import sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")  # the CLI of the Ray this interpreter imports
GRID = {"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["linear", "lora"], "seeds": [0],
        "train": {"image_size": 32, "max_examples": 128, "max_eval_examples": 64, "checkpoint_every": 100},
        "evaluate": {"quick": True, "shifts": ["clean", "fog"]},
        "resources": {"cpus": 1, "threads": 1}}


def _tables(out: Path) -> dict[str, bytes]:
    return {p.parent.parent.name: p.read_bytes() for p in sorted(out.glob("trials/*/results/results.csv"))}


def _env(**extra: str) -> dict[str, str]:
    """This environment without Ray's address and authentication settings (a local
    ``ray.init`` earlier in this process sets RAY_AUTH_MODE), this checkout first on the
    path (Ray workers import what their raylet's environment names) and the data cache
    named, since some runs below get a HOME of their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["ROBUSTFEAT_CACHE"] = str(cache_root())
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """``ray start --head --block`` in a session (and process group) of its own; ``ready``
    waits until it is up, ``stop`` ends it and checks that nothing it started is left."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes
        self.temp = Path(tempfile.mkdtemp(prefix="rfh", dir="/tmp"))
        self.log = self.temp / "head.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                 "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={self.temp}"],
                env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}, cwd=self.temp, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def _exited(self) -> bool:
        """Whether the head exited, without reaping it: while it is a zombie its pid, and so
        its process group's id, cannot be taken by another process."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def ready(self) -> Head:
        deadline = time.time() + 90
        while "Ray runtime started" not in self.log.read_text():
            if self._exited() or time.time() > deadline:
                log = self.log.read_text()[-3000:]
                self.stop()
                pytest.fail(f"ray start --head did not come up:\n{log}")
            time.sleep(0.2)
        return self

    def descendants(self) -> list:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM to the head (it stops the processes it started), then SIGKILL to its
        process group for anything left; then every process it had started must be gone. Ray
        workers run in process groups of their own, so they are checked one by one."""
        started = self.descendants()
        if not self._exited():
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 20
            while not self._exited() and time.time() < deadline:
                time.sleep(0.1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        _, alive = psutil.wait_procs(started, timeout=15)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in alive:
            p.kill()
        shutil.rmtree(self.temp, ignore_errors=True)
        assert not alive, f"the Ray head left processes behind: {[p.pid for p in alive]}"


def _sweep(head: Head, cwd: Path, out: str, env: dict[str, str]) -> tuple[int, str, set[int]]:
    """``robustfeat sweep`` as a process of its own; returns its exit code, its stderr and
    the pids of every process seen under the head while it ran."""
    grid = cwd / "grid.yaml"
    if not grid.exists():
        grid.write_text(yaml.safe_dump(GRID))
    err = cwd / f"{out.replace('/', '_')}.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "robustfeat", "sweep", "grid.yaml", "--backend", "ray",
                                 "--address", head.address, "--out", out, "--no-progress", "--no-report"],
                                cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=f)
        seen: set[int] = set()
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            seen |= {p.pid for p in head.descendants()}
            time.sleep(0.2)
        seen |= {p.pid for p in head.descendants()}  # idle workers stay for a while
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, err.read_text(), seen - {proc.pid}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A plain head (RAY_AUTH_MODE=disabled said outright: ``ray start`` turns token
    authentication on by itself where it finds ~/.ray/auth_token), a head with token
    authentication (RAY_AUTH_MODE=token, its token in a file named by RAY_AUTH_TOKEN_PATH, a
    HOME of its own so that no ~/.ray/auth_token of this machine is involved) and, while
    they start, the local backend's results."""
    root = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(32)
    (root / "token").write_text(token)
    (root / "home").mkdir()
    heads = [Head(_env(RAY_AUTH_MODE="disabled")),
             Head(_env(HOME=str(root / "home"), RAY_AUTH_MODE="token",
                       RAY_AUTH_TOKEN_PATH=str(root / "token")))]
    try:
        (root / "grid.yaml").write_text(yaml.safe_dump(GRID))
        sweep(root / "grid.yaml", root / "local", backend="local", report=False, progress=False)
        local = _tables(root / "local")
        assert len(local) == 2
        yield SimpleNamespace(plain=heads[0].ready(), auth=heads[1].ready(), token=token, local=local)
    finally:
        left = []
        for h in heads:
            try:
                h.stop()
            except AssertionError as e:
                left.append(str(e))
        assert not left, left


def test_a_sweep_on_a_cluster_gives_the_local_results_from_its_workers(cluster, tmp_path):
    head = cluster.plain
    assert any("raylet" in " ".join(p.cmdline()) for p in head.descendants())
    # a relative --out: the workers run in the head's folder, not in the sweep's
    code, err, seen = _sweep(head, tmp_path, "cluster", _env(RAY_AUTH_MODE="disabled"))
    assert code == 0, err[-3000:]
    assert _tables(tmp_path / "cluster") == cluster.local
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "cluster").glob("trials/*/done.json")}
    assert len(pids) >= 1 and pids <= seen, (pids, seen)  # each trial ran in a worker under the head
    assert not (head.temp / "cluster").exists()


# --- a cluster with token authentication --------------------------------------------------------
def test_with_token_auth_the_clusters_token_runs_and_none_or_a_wrong_one_is_refused(cluster, tmp_path):
    head = cluster.auth
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**GRID, "methods": ["linear"]}))  # one trial is enough
    # Refused: Ray retries a refused connection once a second, 20 times by default; 2 are
    # enough here. These run while the sweep with the right token runs.
    quick = {"HOME": str(home), "RAY_NUM_REDIS_GET_RETRIES": "2"}
    cases = {"no-auth": (_env(**quick), "RAY_AUTH_MODE=token"),
             "wrong-token": (_env(**quick, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),
                             "is not the cluster's"),
             "no-token": (_env(**quick, RAY_AUTH_MODE="token"), "no Ray token was found")}
    refused = {}
    for name, (env, _) in cases.items():
        with open(tmp_path / f"{name}.err", "w") as f:
            refused[name] = subprocess.Popen(
                [sys.executable, "-m", "robustfeat", "sweep", "grid.yaml", "--backend", "ray", "--address",
                 head.address, "--out", f"{name}/a/sweep", "--no-progress", "--no-report"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=f)
    try:
        code, err, seen = _sweep(head, tmp_path, "cluster", _env(HOME=str(home), RAY_AUTH_MODE="token",
                                                                RAY_AUTH_TOKEN=cluster.token))
        assert code == 0, err[-3000:]
        tables = _tables(tmp_path / "cluster")
        assert len(tables) == 1 and tables == {k: cluster.local[k] for k in tables}
        pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "cluster").glob("trials/*/done.json")}
        assert pids and pids <= seen, (pids, seen)
        for name, (_, match) in cases.items():
            code = refused[name].wait(180)
            err = (tmp_path / f"{name}.err").read_text().strip().splitlines()
            assert code == 2 and len(err) == 1, (name, code, err[-20:])
            assert err[0].startswith("robustfeat: error: ") and head.address in err[0], (name, err)
            assert match in err[0], (name, err)
            assert not (tmp_path / name).exists(), name  # the output folder and its parents are gone again
    finally:
        for p in refused.values():
            if p.poll() is None:
                p.kill()
                p.wait()
