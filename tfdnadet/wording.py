"""Words for people: counts with the noun in the right number."""


def counted(count: int, noun: str, plural: str = "") -> str:
    """'1 epoch', '2 epochs', '0 epochs'; `plural` for nouns that do not take an s."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
