"""Numbers as people read them in messages: 102.8M parameters, 1.2G MACs."""


def human(count: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= factor:
            return f"{count / factor:.1f}{suffix}"
    return f"{count:g}"


def ratio(before: float, after: float) -> str:
    if after <= 0:
        return "n/a"
    value = before / after
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"
