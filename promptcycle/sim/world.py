"""The simulated LLM world: seven simulated chat models that answer from the messages alone.

Everything produced here is simulated; no real model is called. A model reads the customer record
and the question in its messages (reading.py), decides what to state and how (answer.py), or plays
judge (judge.py) or prompt optimizer (optimizer.py). Replies are deterministic: the RNG is seeded
from sha256 of the model, the messages, the temperature, the max_tokens and (only when
temperature > 0) the seed.

    >>> reply = respond("sim-small", [{"role": "user", "content": "..."}])
    >>> reply.text, reply.output_tokens, reply.latency_s
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from collections.abc import Sequence
from functools import lru_cache

from promptcycle.sim.answer import compose_answer
from promptcycle.sim.drift import Drift, latency_factor, omission_by_spectrum, skill_after
from promptcycle.sim.judge import judge_answer
from promptcycle.sim.optimizer import is_optimizer_request, rewrite_prompt
from promptcycle.sim.reading import read_messages

__all__ = [
    "SimReply",
    "SimModelSpec",
    "UnknownSimModelError",
    "SIM_MODELS",
    "SPECTRUMS",
    "CHARS_PER_TOKEN",
    "respond",
    "estimate_tokens",
    "get_model",
]

CHARS_PER_TOKEN = 4  # token counts are estimated: ceil(characters / 4)
SPECTRUMS = ("customer_profile", "credit_analysis", "transaction_history", "call_center_operations",
             "entity_relationship", "geographic_analysis", "temporal_analysis")


@dataclass(frozen=True)
class SimReply:
    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float  # simulated service time; whoever serves the reply sleeps this long
    finish_reason: str = "stop"  # "length" when max_tokens cut the text


@dataclass(frozen=True)
class SimModelSpec:
    """One simulated model.

    `skills` per spectrum in [0, 1] drive recall, value errors and format compliance; `capacity`
    in [0, 1] is general strength (how much step structure helps, how much long prompts hurt).
    Latency = (base + per output token + per input token) x lognormal jitter with mean 1.
    Prices are simulated too (USD per million tokens), for cost reports.
    """

    name: str
    skills: dict[str, float]
    capacity: float
    base_latency_ms: float
    ms_per_output_token: float
    ms_per_input_token: float
    jitter_sigma: float
    latency_target_ms: float  # recommended target for the latency scorer (pipelines.yaml)
    reasoning_tokens: tuple[int, int] = (0, 0)  # hidden reasoning per answer: base + per stated field
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    description: str = ""


class UnknownSimModelError(LookupError):
    """The model name is not one of SIM_MODELS."""


def _skills(*values: float) -> dict[str, float]:
    return dict(zip(SPECTRUMS, values, strict=True))


#                      profile credit  txn  calls entity  geo  temporal
SIM_MODELS: dict[str, SimModelSpec] = {spec.name: spec for spec in (
    SimModelSpec("sim-nano", _skills(0.42, 0.30, 0.34, 0.36, 0.18, 0.38, 0.15), 0.10,
                 base_latency_ms=65, ms_per_output_token=0.4, ms_per_input_token=0.01, jitter_sigma=0.25,
                 latency_target_ms=160, input_cost_per_mtok=0.05, output_cost_per_mtok=0.2,
                 description="fastest and weakest; struggles with relationships and time"),
    SimModelSpec("sim-mini", _skills(0.52, 0.40, 0.44, 0.50, 0.28, 0.46, 0.24), 0.25,
                 base_latency_ms=70, ms_per_output_token=0.6, ms_per_input_token=0.015, jitter_sigma=0.25,
                 latency_target_ms=190, input_cost_per_mtok=0.15, output_cost_per_mtok=0.6,
                 description="fast; relatively good at call-center questions"),
    SimModelSpec("sim-small", _skills(0.62, 0.52, 0.62, 0.55, 0.38, 0.58, 0.34), 0.40,
                 base_latency_ms=110, ms_per_output_token=1.0, ms_per_input_token=0.02, jitter_sigma=0.28,
                 latency_target_ms=300, input_cost_per_mtok=0.4, output_cost_per_mtok=1.6,
                 description="small generalist; good at transactions"),
    SimModelSpec("sim-medium", _skills(0.72, 0.64, 0.66, 0.66, 0.52, 0.76, 0.48), 0.55,
                 base_latency_ms=170, ms_per_output_token=1.6, ms_per_input_token=0.03, jitter_sigma=0.28,
                 latency_target_ms=460, input_cost_per_mtok=1.0, output_cost_per_mtok=4.0,
                 description="balanced; strong on geography"),
    SimModelSpec("sim-large", _skills(0.80, 0.84, 0.76, 0.74, 0.66, 0.78, 0.62), 0.70,
                 base_latency_ms=260, ms_per_output_token=2.4, ms_per_input_token=0.04, jitter_sigma=0.3,
                 latency_target_ms=700, input_cost_per_mtok=2.5, output_cost_per_mtok=10.0,
                 description="strong on credit"),
    SimModelSpec("sim-xl", _skills(0.86, 0.84, 0.83, 0.82, 0.84, 0.83, 0.74), 0.85,
                 base_latency_ms=380, ms_per_output_token=3.4, ms_per_input_token=0.05, jitter_sigma=0.3,
                 latency_target_ms=1000, input_cost_per_mtok=5.0, output_cost_per_mtok=20.0,
                 description="strongest non-reasoning model; good at entity relationships"),
    SimModelSpec("sim-reasoner", _skills(0.90, 0.89, 0.88, 0.86, 0.87, 0.88, 0.91), 1.00,
                 base_latency_ms=420, ms_per_output_token=3.0, ms_per_input_token=0.05, jitter_sigma=0.3,
                 latency_target_ms=2600, reasoning_tokens=(150, 25),
                 input_cost_per_mtok=8.0, output_cost_per_mtok=32.0,
                 description="slow reasoning model (hidden reasoning tokens); best at time-based questions"),
)}


def get_model(name: str) -> SimModelSpec:
    """The spec of a simulated model; an unknown name raises UnknownSimModelError listing the known."""
    try:
        return SIM_MODELS[name]
    except KeyError:
        raise UnknownSimModelError(
            f"unknown simulated model {name!r}; known models: {', '.join(SIM_MODELS)}") from None


def estimate_tokens(text: str) -> int:
    """The simulator's token estimate: ceil(characters / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _rng(model: str, messages: list[dict[str, str]], temperature: float, seed: int | None) -> random.Random:
    # max_tokens is left out on purpose: a capped reply is the prefix of the uncapped one
    h = hashlib.sha256()
    h.update(f"{model}\x1f{temperature!r}\x1f{_varying_seed(temperature, seed)!r}".encode())
    for m in messages:
        h.update(b"\x1e")
        h.update(str(m.get("role", "user")).encode())
        h.update(b"\x1f")
        h.update(str(m.get("content") or "").encode())
    return random.Random(int.from_bytes(h.digest()[:16], "big"))


def _varying_seed(temperature: float, seed: int | None) -> int | None:
    # temperature 0 is greedy decoding: the repeat index (seed) must not change the reply
    return seed if temperature > 0 else None


@lru_cache(maxsize=4096)
def _case_draws(case_key: bytes, temperature: float, seed: int | None, n: int) -> tuple[float, ...]:
    # shared by all models and prompts: a case that is hard is hard for every model (each with its skills)
    h = hashlib.sha256(case_key)
    h.update(f"\x1f{temperature!r}\x1f{_varying_seed(temperature, seed)!r}".encode())
    rng = random.Random(int.from_bytes(h.digest()[:16], "big"))
    return tuple(rng.random() for _ in range(n))


def respond(model: str, messages: list[dict[str, str]], *, temperature: float = 0.0,
            seed: int | None = None, max_tokens: int | None = None, drifts: Sequence[Drift] = ()) -> SimReply:
    """Reply to chat `messages` as the simulated `model` (deterministic; see the module docstring).

    `drifts` are the simulated drifts active for this call (`DriftSchedule.on_call`); the reply is a
    pure function of the arguments, drifts included."""
    spec = get_model(model)
    drifts = tuple(d for d in drifts if d.applies_to(model))
    reading = read_messages(messages)
    rng = _rng(model, messages, temperature, seed)
    if reading.judge:
        mean_skill = sum(spec.skills.values()) / len(spec.skills)
        text, stated, hidden = judge_answer(reading.user_text, mean_skill, rng), 0, 0
    elif is_optimizer_request(messages):
        text, stated, hidden = rewrite_prompt(reading.user_text), 0, 0
    else:
        latent = _case_draws(reading.case_key, temperature, seed, 2 * len(reading.fields) + 2)
        skills = dict(skill_after(spec.skills, drifts)) if drifts else spec.skills
        answer = compose_answer(reading, skills, spec.capacity, rng, temperature, latent,
                                omission_by_spectrum(drifts) if drifts else None)
        text, stated, hidden = answer.text, len(answer.stated), answer.reasoning_tokens
    if spec.reasoning_tokens != (0, 0):
        hidden += spec.reasoning_tokens[0] + spec.reasoning_tokens[1] * stated

    finish = "stop"
    if max_tokens is not None:
        hidden = min(hidden, max_tokens // 2)  # hidden reasoning and visible text share the budget
        room = (max_tokens - hidden) * CHARS_PER_TOKEN
        if len(text) > room:
            text, finish = text[:room], "length"
    output_tokens = estimate_tokens(text) + hidden
    input_tokens = -(-reading.input_chars // CHARS_PER_TOKEN)

    sigma = spec.jitter_sigma
    jitter = math.exp(rng.gauss(-sigma * sigma / 2, sigma))  # lognormal with mean 1
    latency_ms = (spec.base_latency_ms + spec.ms_per_output_token * output_tokens
                  + spec.ms_per_input_token * input_tokens) * jitter
    if drifts:
        latency_ms *= latency_factor(drifts)
    return SimReply(text, input_tokens, output_tokens, latency_ms / 1000.0, finish)
