"""How figures read in messages (pwlint.units): the unit and the precision change at
boundaries, and a figure on either side of one must still be the right number."""

from __future__ import annotations

import pytest

from pwlint.units import human, ratio


@pytest.mark.parametrize(
    "before, after, shown",
    [
        (949, 1000, "0.9x"),        # 0.949: below 1x (a "fix" that grows the layer) keeps its decimal
        (951, 1000, "1.0x"),        # 0.951
        (1, 1, "1.0x"),
        (11, 3, "3.7x"),            # 3.67: the figure the issue saw shown as 1.8x
        (9, 1, "9.0x"),
        (9949, 1000, "9.9x"),       # 9.949: the last one-decimal figure
        (9960, 1000, "10x"),        # 9.96 rounds to 10.0: written as the whole number it is
        (10, 1, "10x"),
        (994, 10, "99x"),           # 99.4
        (996, 10, "100x"),          # 99.6
        (102_764_544, 2_052_096, "50x"),  # VGG16's first classifier layer, 512x7x7 -> 4096, pooled
    ],
)
def test_ratio_reads_as_the_quotient_at_the_precision_shown(before, after, shown):
    assert ratio(before, after) == shown
    # and whatever the format, the number shown is the quotient to that precision
    number = float(shown.rstrip("x"))
    decimals = len(shown.rstrip("x").partition(".")[2])
    assert abs(number - before / after) <= 0.5 * 10 ** -decimals


@pytest.mark.parametrize("after", [0, -1])
def test_ratio_of_nothing_is_not_a_number(after):
    assert ratio(10, after) == "n/a"


@pytest.mark.parametrize(
    "count, shown",
    [
        (0, "0"),
        (0.5, "0.5"),
        (999, "999"),
        (1000, "1.0k"),
        (59_146, "59.1k"),
        (999_949, "999.9k"),        # still below 1000.0k
        (999_950, "1.0M"),          # would read 1000.0k: shown in the next unit
        (102_764_544, "102.8M"),    # VGG16's first classifier layer
        (999_950_000, "1.0G"),
        (2_000_000_000, "2.0G"),
        (5_000_000_000_000, "5000.0G"),  # no unit past G
        (-1500, "-1.5k"),
        (-999_950, "-1.0M"),
    ],
)
def test_human_picks_the_unit_where_the_count_reads_below_a_thousand(count, shown):
    assert human(count) == shown
