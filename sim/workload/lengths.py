"""Length distributions: ``(prompt_tokens, output_tokens)`` for ``num_requests`` requests.

Every distribution has the signature ``f(num_requests, rng, **params) -> (prompt, output)``,
two (n,) int64 arrays of tokens >= 1. :func:`load_length_table` reads the tables that
:func:`empirical` resamples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sim.workload._columns import CsvTable
from sim.workload.arrivals import check_count

LengthDistribution = Callable[..., tuple[np.ndarray, np.ndarray]]

LENGTH_COLUMNS = (
    ("prompt_tokens", "output_tokens"),
    ("num_prefill_tokens", "num_decode_tokens"),
)
"""Accepted (prompt, output) header pairs: Baton/DistServe and Sarathi/Vidur naming."""


def fixed(num_requests: int, rng: np.random.Generator, *, prompt_tokens: int,
          output_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Every request has the same lengths (``rng`` is unused; kept for the common signature).

    Args:
        num_requests: number of requests n.
        rng: unused.
        prompt_tokens: prompt length, tokens, >= 1.
        output_tokens: output length, tokens, >= 1.

    Returns:
        ``(prompt_tokens, output_tokens)``, each (n,) int64.
    """
    n = check_count(num_requests)
    for name, value in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
        if int(value) != value or value < 1:
            raise ValueError(f"fixed length {name} must be an integer >= 1, got {value}")
    return (np.full(n, int(prompt_tokens), dtype=np.int64),
            np.full(n, int(output_tokens), dtype=np.int64))


def _lognormal_tokens(rng: np.random.Generator, n: int, mean: float, cv: float, lo: int,
                      hi: int, name: str) -> np.ndarray:
    """(n,) int64 draws of a lognormal with the given mean and CV, rounded, clipped to [lo, hi]."""
    if not (np.isfinite(mean) and mean > 0):
        raise ValueError(f"lognormal {name}_mean must be finite and > 0 tokens, got {mean}")
    if not (np.isfinite(cv) and cv >= 0):
        raise ValueError(f"lognormal {name}_cv must be finite and >= 0, got {cv}")
    sigma2 = np.log1p(cv**2)
    mu = np.log(mean) - sigma2 / 2.0
    draws = rng.lognormal(mu, np.sqrt(sigma2), n)
    return np.clip(np.rint(draws), lo, hi).astype(np.int64)


def lognormal(num_requests: int, rng: np.random.Generator, *, prompt_mean: float,
              prompt_cv: float, output_mean: float, output_cv: float, min_tokens: int = 1,
              max_prompt_tokens: int = 8192,
              max_output_tokens: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Independent lognormal prompt and output lengths, given by mean and coefficient of variation.

    ``sigma**2 = ln(1 + cv**2)`` and ``mu = ln(mean) - sigma**2 / 2``, so *before* clipping the
    draws have exactly the given mean and CV. Draws are rounded to integers and then clipped:
    prompts to ``[min_tokens, max_prompt_tokens]``, outputs to ``[min_tokens,
    max_output_tokens]``. Clipping moves the realised mean below ``*_mean`` when the upper bound
    cuts a noticeable tail (e.g. mean 2340, CV 0.91, max 8192 loses about 2 % of the mean).

    Args:
        num_requests: number of requests n.
        rng: the only source of randomness.
        prompt_mean: mean prompt length before clipping, tokens.
        prompt_cv: std / mean of the prompt length before clipping (0 = constant).
        output_mean: mean output length before clipping, tokens.
        output_cv: std / mean of the output length before clipping.
        min_tokens: lower clip for both lengths, tokens, >= 1.
        max_prompt_tokens: upper clip for prompts, tokens.
        max_output_tokens: upper clip for outputs, tokens.

    Returns:
        ``(prompt_tokens, output_tokens)``, each (n,) int64.
    """
    n = check_count(num_requests)
    if min_tokens < 1 or min_tokens > min(max_prompt_tokens, max_output_tokens):
        raise ValueError(f"min_tokens = {min_tokens} must be >= 1 and <= max_prompt_tokens "
                         f"({max_prompt_tokens}) and max_output_tokens ({max_output_tokens})")
    prompt = _lognormal_tokens(rng, n, prompt_mean, prompt_cv, min_tokens, max_prompt_tokens,
                               "prompt")
    output = _lognormal_tokens(rng, n, output_mean, output_cv, min_tokens, max_output_tokens,
                               "output")
    return prompt, output


def empirical(num_requests: int, rng: np.random.Generator, *,
              table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample whole rows of a length table with replacement (keeps prompt/output correlation).

    Args:
        num_requests: number of requests n.
        rng: the only source of randomness.
        table: (k, 2) int64 rows ``(prompt_tokens, output_tokens)``, all >= 1, k >= 1.

    Returns:
        ``(prompt_tokens, output_tokens)``, each (n,) int64; row i of the output is one table row.
    """
    n = check_count(num_requests)
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] == 0:
        raise ValueError(f"empirical table must have shape (k >= 1, 2), got {table.shape}; "
                         "load one with load_length_table")
    if np.any(table < 1):
        raise ValueError("empirical table holds lengths < 1 token; drop those rows")
    rows = table[rng.integers(0, table.shape[0], n)].astype(np.int64)
    return rows[:, 0].copy(), rows[:, 1].copy()


def load_length_table(path: str | Path) -> np.ndarray:
    """Read a (prompt, output) length table from CSV.

    Accepts a header with ``prompt_tokens,output_tokens`` (DistServe's ``sharegpt_lengths.csv``)
    or ``num_prefill_tokens,num_decode_tokens`` (Sarathi/Vidur ``length_distributions/*.csv``);
    other columns are ignored.

    Args:
        path: CSV file.

    Returns:
        (k, 2) int64 rows ``(prompt_tokens, output_tokens)``.

    Raises:
        ValueError: no known header, no rows, or a value that is not an integer >= 1 (the
            message names the file, the 1-based data row and the column).
    """
    table = CsvTable(path)
    names = next((pair for pair in LENGTH_COLUMNS if set(pair) <= set(table.header)), None)
    if names is None:
        raise ValueError(f"{table.path}: header {','.join(table.header)} has none of the column "
                         f"pairs {' or '.join(','.join(p) for p in LENGTH_COLUMNS)}")
    table.require(names)
    return np.stack([table.numbers(name, integer=True, minimum=1) for name in names], axis=1)


LENGTH_DISTRIBUTIONS: dict[str, LengthDistribution] = {
    "fixed": fixed,
    "lognormal": lognormal,
    "empirical": empirical,
}
"""Length distribution name -> function ``f(num_requests, rng, **params)``."""
