"""Regenerate the small synthetic fixtures in ``sim/workload/fixtures/`` from a seed.

Run ``python -m sim.workload.make_fixtures [--seed 0] [--out DIR]``. The files are generated,
never copied from real data:

* ``tiny_trace.csv``: 200 requests in the generic CSV format, Poisson at 2 requests/s,
  lognormal lengths; 30 % of the requests share a 256-token system prompt (group ``sys_a``),
  20 % a 1,000-token one (``sys_b``).
* ``sharegpt_like_lengths.csv``: 2,000 (prompt_tokens, output_tokens) rows drawn from
  independent lognormals whose mean and median (before clipping) match ShareGPT in the traces
  README (prompt 2,340 / 1,730, output 439 / 415 tokens); prompts are clipped to 8,192 tokens and
  outputs to 1,024, like the 8k-filtered ShareGPT table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sim.workload.arrivals import poisson
from sim.workload.lengths import lognormal

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
"""Where the shipped fixtures live."""
TINY_TRACE_GROUPS = (("sys_a", 256, 0.3), ("sys_b", 1000, 0.2))
"""(prefix_group, prefix_tokens, share of requests) of the tiny trace."""


def make_tiny_trace(rng: np.random.Generator, num_requests: int = 200) -> list[str]:
    """Lines (header first) of the tiny generic-CSV trace."""
    arrival_s = poisson(num_requests, rng, rate_per_s=2.0)
    suffix, output = lognormal(num_requests, rng, prompt_mean=600.0, prompt_cv=1.0,
                               output_mean=128.0, output_cv=1.0, max_prompt_tokens=4096,
                               max_output_tokens=512)
    shares = np.array([share for _, _, share in TINY_TRACE_GROUPS])
    choice = rng.choice(len(shares) + 1, num_requests, p=[*shares, 1.0 - shares.sum()])
    lines = ["arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens"]
    for i in range(num_requests):
        group, prefix = ("", 0)
        if choice[i] < len(TINY_TRACE_GROUPS):
            group, prefix = TINY_TRACE_GROUPS[choice[i]][:2]
        prompt = prefix + int(suffix[i])
        lines.append(f"{arrival_s[i]:.6f},{prompt},{int(output[i])},{group},{prefix}")
    return lines


def make_sharegpt_like(rng: np.random.Generator, num_rows: int = 2000) -> list[str]:
    """Lines (header first) of the ShareGPT-like length table."""
    prompt, output = lognormal(num_rows, rng, prompt_mean=2340.0, prompt_cv=0.91,
                               output_mean=439.0, output_cv=0.35, max_prompt_tokens=8192,
                               max_output_tokens=1024)
    return ["prompt_tokens,output_tokens"] + [f"{p},{o}" for p, o in
                                              zip(prompt.tolist(), output.tolist(), strict=True)]


def write_fixtures(out_dir: Path, seed: int = 0) -> list[Path]:
    """Write every fixture into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_rng, lengths_rng = np.random.default_rng(seed).spawn(2)
    files = {
        "tiny_trace.csv": make_tiny_trace(trace_rng),
        "sharegpt_like_lengths.csv": make_sharegpt_like(lengths_rng),
    }
    written = []
    for name, lines in files.items():
        path = out_dir / name
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--seed`` (default 0) and ``--out`` (default the package fixtures dir)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR)
    args = parser.parse_args(argv)
    for path in write_fixtures(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
