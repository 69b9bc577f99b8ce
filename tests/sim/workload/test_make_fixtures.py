"""The shipped fixtures are exactly what the generator script writes from seed 0."""

from __future__ import annotations

from sim.workload.make_fixtures import FIXTURES_DIR, main


def test_fixtures_regenerate_identically(tmp_path, capsys):
    main(["--seed", "0", "--out", str(tmp_path)])
    for name in ("tiny_trace.csv", "sharegpt_like_lengths.csv"):
        assert (tmp_path / name).read_bytes() == (FIXTURES_DIR / name).read_bytes(), name
    assert "tiny_trace.csv" in capsys.readouterr().out
