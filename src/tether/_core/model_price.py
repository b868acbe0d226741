"""`tether.ModelPrice`: a value, and a leaf (it imports only errors), so the settings can
hold and check prices while `tether._spend.prices`, which reads the settings, prices calls."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's price in US dollars per million tokens.

    ```python
    llama = tether.ModelPrice(input_per_mtok=0.2, output_per_mtok=0.6)
    tether.configure(prices={"my-llama": llama, "vllm:qwen-72b": ...})
    ```

    Cached input tokens cost `cache_read_per_mtok` / `cache_write_per_mtok` when given, else
    the input price.
    """

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def __post_init__(self) -> None:
        for label in (
            "input_per_mtok",
            "output_per_mtok",
            "cache_read_per_mtok",
            "cache_write_per_mtok",
        ):
            value = getattr(self, label)
            if value is None and label.startswith("cache"):
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise UsageError(
                    f"{label} is dollars per million tokens, a number 0 or more, not {value!r}"
                )

    def cost(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """Dollars for this many tokens (`input_tokens` includes the cached ones)."""
        read = self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        write = (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )
        uncached = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
        return (
            uncached * self.input_per_mtok
            + cache_read_tokens * read
            + cache_write_tokens * write
            + output_tokens * self.output_per_mtok
        ) / 1_000_000
