"""Where sweep trials run (``robustfeat ls backends``): ``local`` runs them one after another
in this process; ``ray`` submits each as a Ray task with CPU/GPU requests and retries, on a
cluster given by ``--address`` or on a Ray instance started here."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robustfeat.errors import RobustfeatError
from robustfeat.registry import BACKENDS
from robustfeat.sweep.grid import TrialSpec
from robustfeat.sweep.run import finished, run_trial


class Backend:
    name = ""
    summary = ""

    def __init__(self, address: str | None = None) -> None:
        if address is not None and self.name != "ray":
            raise RobustfeatError(f"--address is for the ray backend; the {self.name} backend runs here")
        self.address = address

    def run(self, trials: list[TrialSpec], out: Path, resources: dict[str, Any], progress: bool) -> list[dict]:
        raise NotImplementedError


@BACKENDS.register("local")
class LocalBackend(Backend):
    name = "local"
    summary = "trials one after another in this process, or one per GPU in parallel where there are several"

    def run(self, trials, out, resources, progress):
        from tqdm.auto import tqdm

        gpus = gpu_count()
        with tqdm(total=len(trials), unit="trial", disable=not progress, dynamic_ncols=True) as bar:
            if gpus > 1 and len(trials) > 1:
                return _one_per_gpu(trials, out, resources, gpus, bar)
            records = []
            for spec in trials:
                bar.set_description_str(spec.name)
                records.append(run_trial(spec, out, resources.get("threads")))
                bar.update(1)
        return records


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _pin_gpu(queue) -> None:
    """Worker initialiser: this process sees one GPU only, its own."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _one_per_gpu(trials, out, resources, gpus: int, bar) -> list[dict]:
    """One worker process per GPU, each pinned to its GPU, trials handed out as they finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA state
    queue = ctx.Queue()
    for i in range(gpus):
        queue.put(i)
    records: dict[str, dict] = {}
    with ProcessPoolExecutor(gpus, mp_context=ctx, initializer=_pin_gpu, initargs=(queue,)) as pool:
        futures = {pool.submit(run_trial, spec, str(out), resources.get("threads")): spec for spec in trials}
        for fut in as_completed(futures):
            records[futures[fut].key] = fut.result()
            bar.update(1)
    return [records[spec.key] for spec in trials]


@BACKENDS.register("ray")
class RayBackend(Backend):
    name = "ray"
    summary = "each trial a Ray task (CPU/GPU requests, retries on worker failure); --address joins a cluster"

    def run(self, trials, out, resources, progress):
        try:
            import ray
        except ImportError:
            raise RobustfeatError("the ray backend needs Ray: pip install 'robustfeat[ray]'") from None
        from tqdm.auto import tqdm

        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
            # without --address a Ray instance of this process's own, never one found on the machine
            # (Ray would otherwise join RAY_ADDRESS or the last `ray start` here)
            address = self.address or "local"
            with _held_stderr(self.address is not None) as held:
                try:
                    ray.init(address=address, **kwargs)
                    error = None
                except Exception as e:  # noqa: BLE001 - any failure to start or join is one refusal
                    error = e
            if error is not None:
                raise RobustfeatError(_refusal(error, self.address)) from None
            sys.stderr.write(held.read())  # it joined: pass on what Ray said while connecting
            started = True
        try:
            task = ray.remote(run_trial).options(
                num_cpus=resources.get("cpus", 1), num_gpus=resources.get("gpus", 0),
                memory=int(resources["memory_gb"] * 2**30) if resources.get("memory_gb") else None,
                max_retries=int(resources.get("retries", 3)), retry_exceptions=False)
            refs = {task.remote(spec, str(out), resources.get("threads")): spec for spec in trials}
            records: dict[str, dict] = {}
            pending = list(refs)
            with tqdm(total=len(trials), unit="trial", disable=not progress, dynamic_ncols=True) as bar:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for ref in ready:
                        try:
                            records[refs[ref].key] = ray.get(ref)
                        except ray.exceptions.RayError as e:
                            raise RobustfeatError(f"sweep trial {refs[ref].name} failed on Ray: "
                                                  f"{str(e).strip().splitlines()[-1]}") from None
                        bar.update(1)
            return [records[spec.key] for spec in trials]
        finally:
            if started:
                ray.shutdown()


@contextmanager
def _held_stderr(hold: bool):
    """While joining a cluster Ray's C++ client logs every refused attempt to file descriptor
    2; hold all that in a file, to be passed on only if the connection is made. Yields a
    readable text stream of what was held (empty when ``hold`` is false)."""
    if not hold:
        yield io.StringIO()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        text = io.StringIO()
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            text.write(f.read().decode(errors="replace"))
            text.seek(0)


def _refusal(error: BaseException, address: str | None) -> str:
    """One line on why Ray could not be started (no ``address``) or joined."""
    if address is None:
        return f"cannot start Ray here: {_first_line(error)}"
    chain, e = [], error
    while e is not None and len(chain) < 5:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    where = f"Ray at {address}"
    tokens = "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"
    if type(error).__name__ == "AuthenticationError" and "no authentication token was found" in str(error):
        return (f"RAY_AUTH_MODE=token is set here but no Ray token was found to join {where}: put the "
                f"cluster's token in {tokens}")
    if any(mark in text for mark in ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")):
        if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
            return (f"{where} refused this sweep: the cluster uses token authentication; set "
                    f"RAY_AUTH_MODE=token and the cluster's token in {tokens}")
        return f"{where} refused this sweep: the token here is not the cluster's (from {tokens})"
    return f"cannot reach {where}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def get_backend(name: str, address: str | None = None) -> Backend:
    return BACKENDS.get(name)(address)


def pending(trials: list[TrialSpec], out: str | os.PathLike) -> list[TrialSpec]:
    return [c for c in trials if finished(out, c) is None]
