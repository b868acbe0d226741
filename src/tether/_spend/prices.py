"""What model calls cost: prices given with `configure(prices=...)`, else genai-prices.

genai-prices (which Pydantic AI uses for its own cost figures) knows the public prices of
the major providers. A price given in `configure(prices=...)` wins over it, so a model it
does not know (a self-hosted one, a fine-tune) or a negotiated rate can be priced too.
Pricing never fails a call: an unknown model costs None (unknown), never a silent 0.
"""

from __future__ import annotations

from typing import Any

from .._core.config import settings
from .._core.model_price import ModelPrice

__all__ = ["ModelPrice", "configured_price", "cost_of"]


def configured_price(model: str, provider: str | None) -> ModelPrice | None:
    """The price given for `model` (or `provider:model`) in `configure(prices=...)`."""
    prices = settings().prices
    if not prices:
        return None
    if provider:
        found = prices.get(f"{provider}:{model}")
        if found is not None:
            return found
    return prices.get(model)


def cost_of(
    model: str,
    provider: str | None,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    usage: Any = None,
    provider_url: str | None = None,
) -> float | None:
    """Dollars for a request, or None when the model's price is unknown.

    `usage` may be a richer usage object genai-prices understands (Pydantic AI's
    `RequestUsage`, with audio tokens and the like); otherwise the counts are used.
    """
    price = configured_price(model, provider)
    if price is not None:
        return price.cost(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
    try:
        import genai_prices
    except ImportError:  # the `ai` extra is not installed: only configured prices
        return None
    if usage is None:
        usage = genai_prices.Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens or None,
            cache_write_tokens=cache_write_tokens or None,
        )
    name = model.split(":", 1)[1] if provider is None and ":" in model else model
    if provider is None and ":" in model:
        provider = model.split(":", 1)[0]
    attempts: list[dict[str, Any]] = []
    if provider_url:
        attempts.append({"provider_api_url": provider_url})
    if provider:
        attempts.append({"provider_id": provider})
    attempts.append({})
    for where in attempts:
        try:
            return float(genai_prices.calc_price(usage, name, **where).total_price)
        except (LookupError, ValueError):
            continue
        except Exception:  # pricing data is best effort: never fail a call over it
            return None
    return None
