"""Reading a method string strictly: `name(key=value, ...)` pieces and typed option readers.

Every value is read by the reader of its kind, and anything else is one `SpecError` line that
names the preset, the option and what to write instead::

    opts = Options("lora", parse_call("lora(r=8, alpha=16)")[1])
    r = opts.positive_int("r", 16)          # 8; 'r=8.7', 'r=abc', 'r=0' are refused
    alpha = opts.float("alpha", 2 * r, low=0.0, low_open=True)
    opts.done()                             # options the preset did not read are refused

A new preset reuses the readers: `integer`, `positive_int`, `float` (with a range), `bool`
(true / false only), `choice`, `text`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence


class SpecError(ValueError):
    """A Δh spec that makes no sense; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Raw:
    """One option value as written: its text (quotes removed) and whether it was quoted."""

    text: str
    quoted: bool = False

    def show(self) -> str:
        return repr(self.text) if self.quoted else self.text


_CALL = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)
_INT = re.compile(r"^[+-]?\d+$")


def split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_call(piece: str) -> tuple[str, dict[str, Raw]]:
    """'lora(r=8, at=ffn)' -> ('lora', {'r': Raw('8'), 'at': Raw('ffn')}); a key given twice,
    an argument without '=' or an unparsable piece is refused."""
    m = _CALL.match(piece)
    if not m:
        raise SpecError(f"cannot parse method {piece.strip()!r}; write name(key=value, ...)")
    name, args = m.group(1), m.group(2) or ""
    raw: dict[str, Raw] = {}
    for arg in filter(str.strip, split_top(args, ",")):
        if "=" not in arg:
            raise SpecError(f"argument {arg.strip()!r} of {name}() must be key=value")
        key, value = (s.strip() for s in arg.split("=", 1))
        if key in raw:
            raise SpecError(f"{name}() got {key}= twice; give each option once")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        raw[key] = Raw(value[1:-1] if quoted else value, quoted)
    return name, raw


class Options:
    """The options of one preset call, read by kind; `done()` refuses the ones not read."""

    def __init__(self, preset: str, raw: dict[str, Raw]):
        self.preset, self.raw, self.known = preset, dict(raw), []

    def _take(self, key: str) -> Optional[Raw]:
        self.known.append(key)
        return self.raw.pop(key, None)

    def _bad(self, key: str, value: Raw, what: str) -> SpecError:
        return SpecError(f"{self.preset}({key}={value.show()}): {key} must be {what}")

    def integer(self, key: str, default: Any, *, minimum: Optional[int] = None) -> Any:
        value = self._take(key)
        if value is None:
            return default
        need = "an integer" + ("" if minimum is None else f" >= {minimum}")
        if value.quoted or not _INT.match(value.text):
            raise self._bad(key, value, need)
        number = int(value.text)
        if minimum is not None and number < minimum:
            raise self._bad(key, value, need)
        return number

    def positive_int(self, key: str, default: Any) -> Any:
        return self.integer(key, default, minimum=1)

    def float(self, key: str, default: Any, *, low: Optional[float] = None,
              high: Optional[float] = None, low_open: bool = False,
              high_open: bool = False) -> Any:
        """A finite number in the range [low, high] (open ends with low_open / high_open)."""
        value = self._take(key)
        if value is None:
            return default
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        need = "a number" + (f" in {lo or '(-inf'}, {hi or 'inf)'}" if lo or hi else "")
        try:
            number = float(value.text)
        except ValueError:
            raise self._bad(key, value, need) from None
        if value.quoted or not math.isfinite(number):
            raise self._bad(key, value, need)
        if low is not None and (number < low or (low_open and number == low)):
            raise self._bad(key, value, need)
        if high is not None and (number > high or (high_open and number == high)):
            raise self._bad(key, value, need)
        return number

    def bool(self, key: str, default: Any) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if value.quoted or value.text.lower() not in ("true", "false"):
            raise self._bad(key, value, "true or false")
        return value.text.lower() == "true"

    def choice(self, key: str, default: Any, choices: Sequence[str]) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if value.text not in choices:
            raise self._bad(key, value, "one of " + ", ".join(choices))
        return value.text

    def text(self, key: str, default: Any) -> Any:
        value = self._take(key)
        return default if value is None else value.text

    def done(self) -> None:
        if self.raw:
            takes = ", ".join(dict.fromkeys(self.known)) or "no options"
            raise SpecError(f"{self.preset}() got unknown argument(s) {sorted(self.raw)}; "
                            f"it takes {takes}")
