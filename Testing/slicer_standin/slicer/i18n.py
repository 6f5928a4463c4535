"""Stand-in for ``slicer.i18n``: translation functions that return the source text."""


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text
