"""Drift in the simulated world: scheduled changes that start at a given time or call count.

Everything here is simulated. A `Drift` says what changes (its `kind`), for which simulated model and
spectrum, by how much (`size`), and from when (`start_after_calls` and/or `start_at`). A
`DriftSchedule` holds the drifts of one simulated world (one server, one in-process provider, one
bench) with an injectable clock and its own call counter, so tests and benches can run hours of
scheduled operation in seconds:

    schedule = DriftSchedule([Drift("skill_loss", model="sim-small", spectrum="credit_analysis", size=5,
                                    start_after_calls=1000)], clock=lambda: fake_now)
    active = schedule.on_call("sim-small")     # counts the call, returns the drifts active for it
    reply = respond("sim-small", messages, drifts=active)

Kinds and what `size` means (docs/simulator.md, "Drift"):

- ``skill_loss``      the model loses skill on `spectrum`: quality there drops by about `size` points.
- ``field_omission``  the model starts omitting the spectrum's fields unless the instructions name them
                      (a checklist repairs it): quality there drops by about `size` points.
- ``question_mix``    traffic shifts towards `spectrum`: its weight in the question mix is multiplied by
                      `size` (read through `spectrum_weights`; the models are unchanged).
- ``latency``         the model's latency is multiplied by 1 + `size` (0.5: 50% slower).
- ``error_rate``      a share `size` of the model's requests is answered with a simulated 5xx.

The reply stays a pure function of (model, messages, temperature, seed, max_tokens, active drifts):
the same seed gives the same answers, before and after a drift starts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["DRIFT_KINDS", "QUALITY_KINDS", "SKILL_POINTS", "OMISSION_POINTS", "Drift", "DriftSchedule",
           "parse_drift", "skill_after", "omission_by_spectrum", "latency_factor", "error_rate"]

DRIFT_KINDS = ("skill_loss", "field_omission", "question_mix", "latency", "error_rate")
QUALITY_KINDS = ("skill_loss", "field_omission")  # kinds whose size is in quality points on model x spectrum

# Quality points per unit of skill on one spectrum, default prompt (promptcycle.sim.calibration across the
# seven models: about 45 points from skill 0.3 to 0.9). A skill_loss of `size` points removes size / 45 skill.
SKILL_POINTS = 45.0
# An unnamed on-topic field omitted with probability p costs about 40 x p x completeness points (~30 p on
# the default prompt): a field_omission of `size` points omits with probability min(1, size / 30).
OMISSION_POINTS = 30.0


@dataclass(frozen=True)
class Drift:
    """One simulated drift. `model`/`spectrum` None: every model / spectrum. It is active once
    `start_after_calls` calls were served (the counter of its schedule) and `start_at` has passed;
    without either, from the start."""

    kind: str
    size: float
    model: str | None = None
    spectrum: str | None = None
    start_after_calls: int | None = None
    start_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; known: {', '.join(DRIFT_KINDS)}")
        if self.kind in QUALITY_KINDS and self.spectrum is None:
            raise ValueError(f"a {self.kind} drift needs a spectrum")
        if self.kind == "question_mix" and (self.spectrum is None or self.size <= 0):
            raise ValueError("a question_mix drift needs a spectrum and a size > 0 (the weight multiplier)")
        if self.kind == "error_rate" and not 0 <= self.size <= 1:
            raise ValueError("an error_rate drift's size is a share of requests in [0, 1]")
        if self.kind != "question_mix" and self.size < 0:
            raise ValueError(f"a {self.kind} drift's size must be >= 0")
        if self.start_after_calls is not None and self.start_after_calls < 0:
            raise ValueError("start_after_calls must be >= 0")
        if self.start_at is not None and self.start_at.tzinfo is None:
            object.__setattr__(self, "start_at", self.start_at.replace(tzinfo=timezone.utc))

    def applies_to(self, model: str) -> bool:
        return self.model is None or self.model == model

    def started(self, calls: int, now: datetime) -> bool:
        return ((self.start_after_calls is None or calls >= self.start_after_calls)
                and (self.start_at is None or now >= self.start_at))

    def label(self) -> str:
        where = f"{self.model or '*'}:{self.spectrum or '*'}"
        when = [f"@{self.start_after_calls}"] if self.start_after_calls is not None else []
        when += [f"@{self.start_at.isoformat()}"] if self.start_at is not None else []
        return f"{self.kind}:{where}:{self.size:g}{''.join(when)} (simulated)"


_FLAG = re.compile(r"^(?P<kind>[a-z_]+):(?P<model>[^:@]*):(?P<spectrum>[^:@]*):(?P<size>[-+0-9.eE]+)"
                   r"(?:@(?P<when>.+))?$")


def parse_drift(text: str) -> Drift:
    """`kind:model:spectrum:size[@calls|@ISO-time]` (the `--drift` flag), model/spectrum empty or `*` for all.

    >>> parse_drift("skill_loss:sim-small:credit_analysis:5@1000")
    """
    m = _FLAG.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a drift: expected kind:model:spectrum:size[@calls|@time], e.g. "
                         "skill_loss:sim-small:credit_analysis:5@1000")
    when, calls, at = m["when"], None, None
    if when is not None:
        if when.isdigit():
            calls = int(when)
        else:
            try:
                at = datetime.fromisoformat(when)
            except ValueError:
                raise ValueError(f"{text!r}: the start {when!r} is neither a call count nor an ISO time") from None
    return Drift(kind=m["kind"], size=float(m["size"]), model=m["model"] if m["model"] not in ("", "*") else None,
                 spectrum=m["spectrum"] if m["spectrum"] not in ("", "*") else None,
                 start_after_calls=calls, start_at=at)


class DriftSchedule:
    """The drifts of one simulated world, their clock and their call counter (thread-safe)."""

    def __init__(self, drifts: Iterable[Drift] = (), *, clock: Callable[[], datetime] | None = None,
                 calls: int = 0):
        self.drifts = tuple(drifts)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.calls = calls
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.drifts)

    def active(self, model: str | None = None, *, calls: int | None = None) -> tuple[Drift, ...]:
        """The drifts started at this moment (for `model`, when given), without counting a call."""
        now = self.clock()
        n = self.calls if calls is None else calls
        return tuple(d for d in self.drifts if (model is None or d.applies_to(model)) and d.started(n, now))

    def on_call(self, model: str) -> tuple[Drift, ...]:
        """Count one served call and return the drifts active for it (a drift starting after N calls
        applies from call N + 1 on)."""
        with self._lock:
            before = self.calls
            self.calls += 1
        return self.active(model, calls=before)

    def spectrum_weights(self, spectrums: Sequence[str], base: Mapping[str, float] | None = None) -> dict[str, float]:
        """The question mix now: each spectrum's weight (`base`, default 1) times its active
        question_mix drifts, normalised to sum to 1."""
        weights = {s: float((base or {}).get(s, 1.0)) for s in spectrums}
        for d in self.active():
            if d.kind == "question_mix" and d.spectrum in weights:
                weights[d.spectrum] *= d.size
        total = sum(weights.values()) or 1.0
        return {s: w / total for s, w in weights.items()}


def skill_after(skills: Mapping[str, float], drifts: Sequence[Drift]) -> Mapping[str, float]:
    """Skills after the active skill_loss drifts (never below 0.02)."""
    losses = [d for d in drifts if d.kind == "skill_loss"]
    if not losses:
        return skills
    out = dict(skills)
    for d in losses:
        for s in ([d.spectrum] if d.spectrum else list(out)):
            if s in out:
                out[s] = max(0.02, out[s] - d.size / SKILL_POINTS)
    return out


def omission_by_spectrum(drifts: Sequence[Drift]) -> dict[str, float]:
    """spectrum -> probability that an on-topic field the instructions do not name is left out."""
    out: dict[str, float] = {}
    for d in drifts:
        if d.kind == "field_omission" and d.spectrum:
            p = min(1.0, d.size / OMISSION_POINTS)
            out[d.spectrum] = 1 - (1 - out.get(d.spectrum, 0.0)) * (1 - p)
    return out


def latency_factor(drifts: Sequence[Drift]) -> float:
    factor = 1.0
    for d in drifts:
        if d.kind == "latency":
            factor *= 1.0 + d.size
    return factor


def error_rate(drifts: Sequence[Drift]) -> float:
    """Share of requests a simulated 5xx answers (active error_rate drifts combined)."""
    ok = 1.0
    for d in drifts:
        if d.kind == "error_rate":
            ok *= 1.0 - d.size
    return 1.0 - ok
