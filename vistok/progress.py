"""One progress helper for every long loop in vistok (decoders, sampling CLIs, evaluations)."""

from __future__ import annotations

from collections.abc import Iterable


class _Silent:
    """Stands in for a tqdm bar when progress is off (``update``/``close``/``set_postfix`` do nothing)."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, *args, **kwargs) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...


def progress_bar(enabled: bool, *, total: int | None = None, desc: str = "", leave: bool = False,
                 unit: str = "it"):
    """A ``tqdm.auto`` bar of ``total`` steps when ``enabled``, else a silent stand-in with the same methods."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, unit=unit)


def track(items: Iterable, enabled: bool, *, total: int | None = None, desc: str = "", leave: bool = False,
          unit: str = "it"):
    """``items`` wrapped in a progress bar when ``enabled`` (``items`` itself otherwise)."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, leave=leave, unit=unit)
