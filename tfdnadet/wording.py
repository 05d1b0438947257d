"""Words for people: counts with the noun in the right number."""


def counted(count: int, noun: str) -> str:
    """'1 epoch', '2 epochs', '0 epochs'."""
    return f"{count} {noun if count == 1 else noun + 's'}"
