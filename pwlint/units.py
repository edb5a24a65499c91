"""Numbers as people read them in messages: 102.8M parameters, 1.2G MACs, 3.7x fewer."""

SUFFIXES = ((1e3, "k"), (1e6, "M"), (1e9, "G"))


def human(count: float) -> str:
    """``102764544`` -> ``102.8M``; below a thousand as written (``999``, ``0.5``). A count
    is shown in the smallest unit where it reads below 1000.0: ``999_950`` is ``1.0M``,
    not ``1000.0k``."""
    if abs(count) < 1000:
        return f"{count:g}"
    for factor, suffix in SUFFIXES[:-1]:
        if abs(round(count / factor, 1)) < 1000:
            return f"{count / factor:.1f}{suffix}"
    factor, suffix = SUFFIXES[-1]
    return f"{count / factor:.1f}{suffix}"


def ratio(before: float, after: float) -> str:
    """How many times ``after`` fits in ``before``: one decimal below 10x (``3.7x``),
    whole numbers from 10x (``50x``); a value that rounds to 10.0 is ``10x``."""
    if after <= 0:
        return "n/a"
    value = before / after
    return f"{value:.0f}x" if round(value, 1) >= 10 else f"{value:.1f}x"


def percent_change(delta: float, base: float) -> str:
    """``delta`` as a percentage of ``base`` with one decimal: ``+12.5%``, ``-3.0%``. A change
    too small to show at that precision is ``+<0.1%`` or ``-<0.1%``, never a signed zero
    (``-0.0%`` reads as "no change" with a stray sign, and "no change" would be untrue);
    no change at all is ``0.0%``."""
    if delta == 0:
        return "0.0%"
    value = delta / base * 100
    shown = f"{abs(value):.1f}"
    sign = "+" if value > 0 else "-"
    return f"{sign}<0.1%" if float(shown) == 0 else f"{sign}{shown}%"
