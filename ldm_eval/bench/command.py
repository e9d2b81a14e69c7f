"""``bench-train``'s one dispatch: which benchmark its flags ask for, so the CLI stays a thin wrapper.

``--recipe``, ``--sampling MODEL`` and ``--speedups``/``--profile`` each replace the default table
(training speed and memory per factor); asking for two of them at once is refused, never resolved
by a silent precedence.
"""
from __future__ import annotations

from pathlib import Path

from ldm_eval.bench.recipe import run_recipe_benchmark
from ldm_eval.bench.speedups import run_speedups_and_profiles, sampling_against_stock
from ldm_eval.bench.train import run_train_benchmark
from pipelines.atomic import write_text_atomic
from pipelines.errors import InputError
from pipelines.pipeline import resolve_device


def run_bench_train(resolutions: list[int], factors: list[int], batch_size: int, steps: int, device: str,
                    out: Path | None, param_budget: int, recipe: bool = False, speedups: bool = False,
                    profile: bool = False, sampling: str = "") -> None:
    """The benchmark ``bench-train``'s flags name; its table is printed and, with ``out``, written there."""
    chosen = [name for name, asked in (("recipe", recipe), ("sampling", bool(sampling)), ("speedups", speedups),
                                       ("profile", profile)) if asked]
    if len(chosen) > 1 and chosen != ["speedups", "profile"]:  # the one pair that shares a run
        raise InputError(f"bench-train runs one benchmark at a time; got {' and '.join(chosen)}.", chosen[1])
    if recipe:
        table = run_recipe_benchmark(param_budget=param_budget, batch_size=batch_size, rounds=max(steps, 3))
        text = f"{table.attrs['header']}\n\n{table.to_markdown(index=False, floatfmt='.3g')}\n"
        print(text)
        if out is not None:
            write_text_atomic(Path(out) / "recipe_benchmark.md", text)
    elif sampling:
        sampling_against_stock(Path(sampling), batch_size, max(steps, 10), resolve_device(device),
                               out=None if out is None else Path(out) / f"sampling_{Path(sampling).name}.md")
    elif speedups or profile:
        run_speedups_and_profiles(resolutions, factors, batch_size, max(steps, 3), param_budget,
                                  resolve_device(device), out, speedups, profile)
    else:
        run_train_benchmark(resolutions=resolutions, factors=factors, batch_size=batch_size, steps=steps,
                            device=device, out=out)
