"""How long the web demo takes to answer its first request, against the bare imports it cannot avoid.

``python -m ldm_eval bench-startup`` starts ``app.py`` in a fresh process and times it until
its first HTTP 200, and times ``python -c "import torch, diffusers, gradio"`` the same way,
alternating the two so a busy machine slows both alike. The ratio of the medians is the
figure: how much the demo adds on top of the libraries it stands on (goal: at most 1.5x).
The demo is run as a program, never imported, so the harness stays independent of it.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

BARE_IMPORT = "import torch, diffusers, gradio"
GOAL_RATIO = 1.5


class StartupError(RuntimeError):
    """The app exited or did not answer in time."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def bare_import_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_IMPORT], check=True, env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def first_200_seconds(app: Path, timeout: float = 300.0, extra_args: tuple[str, ...] = ()) -> float:
    """Seconds from starting ``app`` until its page answers HTTP 200 (the process is stopped afterwards)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(app), "--port", str(port), *extra_args], cwd=app.parent,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise StartupError(f"{app} exited with {proc.returncode} before answering: "
                                   f"{proc.stderr.read().decode(errors='replace')[-500:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - start > timeout:
                raise StartupError(f"{app} did not answer on {url} within {timeout:.0f} s.")
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_startup_benchmark(app: Path, rounds: int = 3) -> tuple[pd.DataFrame, str]:
    """Interleaved rounds of both timings; the table (one row per round) and a summary sentence."""
    rows = []
    for i in range(rounds):
        rows.append({"round": i + 1, "bare_import_s": bare_import_seconds(), "demo_first_200_s": first_200_seconds(app)})
    table = pd.DataFrame(rows)
    bare, demo = statistics.median(table["bare_import_s"]), statistics.median(table["demo_first_200_s"])
    ratio = demo / bare
    summary = (f"Demo start-up: first HTTP 200 after {demo:.1f} s; `python -c \"{BARE_IMPORT}\"` takes {bare:.1f} s "
               f"(medians of {rounds} interleaved rounds, {os.cpu_count()} CPUs): ratio {ratio:.2f} "
               f"({'within' if ratio <= GOAL_RATIO else 'over'} the goal of {GOAL_RATIO}).")
    return table, summary
