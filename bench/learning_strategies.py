"""`strategies: auto` against spending the candidate budget evenly, over simulated optimization cycles.

    python bench/learning_strategies.py [--reps 200] [--cycles 30] [--seed 1] [--json]

Everything here is simulated. The cycles are simulated at the domain level: no Prefect flow runs. What is real
is the product's learning code — `promptcycle.optimize.learning` (`StrategyOutcome`, the posteriors over the
memory, `allocate`: Thompson sampling with the exploration floor) — and the simulated world that decides what
each strategy is worth.

The simulation, stated
----------------------
Contexts. Six cells a degraded pipeline may send to optimization (model x spectrum, the current prompt, and a
simulated drift; see CONTEXTS). Each context's *true* effect of each strategy (points of quality over the
current prompt) is measured once, on the simulated world itself: `promptcycle.sim.calibration.measure` on the
30 bundled cases of that spectrum at temperature 0.7 x 2 repeats, with the context's drift active, for the
current prompt and for the current prompt plus the strategy's lever (the calibration prompts: per-topic
checklist, explicit format spec, one example, grounding, step by step). Which lever helps depends on model and
spectrum in the documented ways (docs/simulator.md, "Which lever helps where"); the table is printed.
Its failure kind (the learning context) comes from the same measurement: the largest of 1 - completeness,
1 - accuracy, 1 - JSON validity, 1 - latency score.

A cycle. A context is drawn uniformly. The policy picks the strategies of B candidate slots. A candidate's
realised effect is the strategy's true effect + N(0, 1.0) (wordings differ); screening on dev measures it with
N(0, 2.0) noise (about the paired SE of 63 dev cases) at 63 paid calls per candidate plus 63 for the current
prompt; the candidate best on dev, if above 0, is confirmed on test (2 arms x 63 cases x 3 repeats = 378 calls)
and measured with N(0, 1.2) noise; it is promoted when that is >= the minimum effect (1 point) and
>= 1.645 x 1.2 (one-sided 5%). The cycle's improvement is the promoted candidate's realised effect (0 if none).
Each screened candidate is recorded as a `StrategyOutcome` (dev effect; test effect when confirmed).

Policies, all over the same cycles (common random numbers per repetition):
- even:  one candidate per strategy (5 slots) every cycle — the fixed list, spent evenly;
- auto:  3 slots by `allocate` (the best guess first — the highest posterior mean of success x effect,
         at first the lever the diagnosis points at — then Thompson sampling on the learned posteriors,
         exploration 0.1, memory 100 cycles), learning from the cycles before;
- fixed mixes: every set of 3 strategies, the same every cycle; the best of them (by mean improvement) is
         "the best fixed mix" — chosen in hindsight, which no real policy can do.
Each strategy proposes one candidate per cycle (as the deterministic strategies do per scope), so a policy's
slots go to distinct strategies. A strategy whose lever is already in the current prompt proposes nothing,
as the product's strategies do (the checklist strategy on a prompt that already names every field), so no
policy pays for it there: a fixed mix screens only its members that propose.
Printed: mean improvement per cycle (points; also over the last third of the cycles, after learning) and paid
calls per point of improvement, each with its Monte Carlo standard error over the repetitions (calls per
point: ratio estimator, delta-method SE), and auto's shortfall against the best fixed mix with the SE of the
paired difference (the policies meet the same cycles).

Pass: over all the cycles and over the last third, auto's improvement is within 2 SE of the best fixed mix
in hindsight, and auto pays fewer calls per point than even by more than 2 SE.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from promptcycle.optimize.learning import LearningContext, StrategyOutcome, allocate  # noqa: E402
from promptcycle.prompts import PromptTemplate  # noqa: E402
from promptcycle.sim import calibration as cal  # noqa: E402
from promptcycle.sim.drift import Drift  # noqa: E402

STRATEGIES = ("checklist", "format_spec", "few_shot", "grounding", "step_structure")
DEV_CASES, CONFIRM_REPEATS = 63, 3
SCREEN_CALLS, CONFIRM_CALLS = DEV_CASES, 2 * DEV_CASES * CONFIRM_REPEATS
WORDING_SD, DEV_SD, TEST_SD, MIN_EFFECT = 1.0, 2.0, 1.2, 1.0
AUTO_SLOTS, EXPLORATION, MEMORY = 3, 0.1, 100

# (model, spectrum, current prompt, drift kind or None)
CONTEXTS = (
    ("sim-nano", "temporal_analysis", "checklist", None),
    ("sim-small", "entity_relationship", "checklist", None),
    ("sim-xl", "customer_profile", "checklist", None),
    ("sim-reasoner", "transaction_history", "checklist", None),
    ("sim-large", "credit_analysis", "default", "field_omission"),
    ("sim-medium", "geographic_analysis", "default", "field_omission"),
)


def _with_lever(prompt: PromptTemplate, strategy: str) -> PromptTemplate:
    system, template = prompt.system, prompt.template
    if strategy == "checklist" and cal.CHECKLIST not in system:
        system = f"{system}\n{cal.CHECKLIST}"
    elif strategy == "format_spec":
        template = template.replace("Reply with a JSON object.", cal.FORMAT_SPEC)
    elif strategy == "few_shot":
        system = f"{system}\n{cal.EXAMPLES}"
    elif strategy == "grounding":
        system = f"{system} {cal.GROUNDING}"
    elif strategy == "step_structure":
        system = f"{system} {cal.STEPS}"
    return PromptTemplate(template, system)


def _kind(rates: cal.Rates) -> str:
    gaps = {"missed_fields": 1 - rates.completeness, "wrong_values": 1 - rates.accuracy,
            "format": 1 - rates.json_valid, "latency": 1 - rates.latency}
    kind, gap = max(gaps.items(), key=lambda kv: kv[1])
    return kind if gap >= 0.05 else "none"


@dataclass(frozen=True)
class World:
    contexts: list[LearningContext]
    effects: list[dict[str, float]]  # per context: strategy -> true effect (points); only the strategies that propose
    labels: list[str]


def measure_world() -> World:
    cases = cal.load_bundled_cases()
    contexts, effects, labels = [], [], []
    for model, spectrum, current_name, drift in CONTEXTS:
        cs = [c for c in cases if c["spectrum"] == spectrum]
        drifts = (Drift(drift, 6.0, model, spectrum),) if drift else ()
        current = cal.LEVER_PROMPTS[current_name]
        base = cal.measure(model, current, cs, temperature=0.7, repeats=2, drifts=drifts)
        # a lever already in the prompt proposes nothing (as the product's strategies do), so nobody pays for it
        effects.append({s: cal.measure(model, _with_lever(current, s), cs, temperature=0.7, repeats=2,
                                       drifts=drifts).quality - base.quality
                        for s in STRATEGIES if _with_lever(current, s) != current})
        contexts.append(LearningContext("bench", model, spectrum, _kind(base)))
        labels.append(f"{model} {spectrum} ({current_name} prompt{', ' + drift + ' drift' if drift else ''})")
    return World(contexts, effects, labels)


def run_cycles(world: World, policy, cycles: int, rng_seed: int) -> tuple[float, int, float]:
    """Total improvement (points), paid calls, and the improvement of the last third of the cycles, of one
    repetition under `policy(history, ctx, rng) -> slots`."""
    draws = random.Random(rng_seed)  # common random numbers: the same contexts and noise for every policy
    pick_rng = random.Random(rng_seed + 7_919)
    history: list[StrategyOutcome] = []
    total, calls, late = 0.0, 0, 0.0
    for cycle in range(cycles):
        k = draws.randrange(len(world.contexts))
        ctx, effects = world.contexts[k], world.effects[k]
        # per strategy, up to 5 candidates' noise, drawn whatever the policy spends
        noise = {s: [(draws.gauss(0, WORDING_SD), draws.gauss(0, DEV_SD), draws.gauss(0, TEST_SD))
                     for _ in range(5)] for s in STRATEGIES}
        slots = [s for s in policy(history, ctx, pick_rng, tuple(effects)) if s in effects]
        used: dict[str, int] = {}
        screened = []
        for s in slots:
            i = used[s] = used.get(s, -1) + 1
            w, d, t = noise[s][i]
            realised = effects[s] + w
            screened.append((s, realised, realised + d, t, i))
        calls += SCREEN_CALLS * (len(screened) + 1)
        best = max(screened, key=lambda x: x[2], default=None)
        test_measured = None
        if best is not None and best[2] > 0:
            calls += CONFIRM_CALLS
            test_measured = best[1] + best[3]
            if test_measured >= MIN_EFFECT and test_measured >= 1.645 * TEST_SD:
                total += best[1]
                late += best[1] if cycle >= cycles - cycles // 3 else 0.0
        for s, _, dev, _, i in screened:
            test = test_measured if best is not None and (s, i) == (best[0], best[4]) else None
            history.append(StrategyOutcome(run_id=f"cycle-{cycle:03d}", candidate=f"{s}-{i}", strategy=s,
                                           context=ctx, dev_effect=dev, test_effect=test, min_effect=MIN_EFFECT,
                                           calls=SCREEN_CALLS, simulated=True))
    return total, calls, late


def auto_policy(history, ctx, rng, proposing):
    return allocate(proposing, ctx, history, budget=AUTO_SLOTS, exploration=EXPLORATION, memory=MEMORY, rng=rng,
                    capacity={s: 1 for s in proposing})


def even_policy(history, ctx, rng, proposing):
    return list(STRATEGIES)


def fixed_policy(mix):
    return lambda history, ctx, rng, proposing: list(mix)


def _summary(results: list[tuple[float, int, float]], cycles: int) -> dict:
    n = len(results)
    lates = [r[2] / (cycles // 3) for r in results]
    late_mean = sum(lates) / n
    late_se = math.sqrt(sum((x - late_mean) ** 2 for x in lates) / (n - 1) / n)
    imp = [r[0] / cycles for r in results]
    cal_ = [r[1] / cycles for r in results]
    mi, mc = sum(imp) / n, sum(cal_) / n
    se_i = math.sqrt(sum((x - mi) ** 2 for x in imp) / (n - 1) / n)
    se_c = math.sqrt(sum((x - mc) ** 2 for x in cal_) / (n - 1) / n)
    cov = sum((a - mi) * (b - mc) for a, b in zip(imp, cal_)) / (n - 1) / n
    ratio = mc / mi if mi > 0 else math.inf
    se_r = (abs(ratio) * math.sqrt(max(0.0, (se_c / mc) ** 2 + (se_i / mi) ** 2 - 2 * cov / (mc * mi)))
            if mi > 0 else math.inf)
    return {"improvement_per_cycle": mi, "improvement_se": se_i, "calls_per_cycle": mc, "calls_se": se_c,
            "calls_per_point": ratio, "calls_per_point_se": se_r, "last_third_improvement": late_mean,
            "last_third_se": late_se}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    world = measure_world()
    seeds = [args.seed * 1_000_003 + r for r in range(args.reps)]
    even = _summary([run_cycles(world, even_policy, args.cycles, s) for s in seeds], args.cycles)
    auto_runs = [run_cycles(world, auto_policy, args.cycles, s) for s in seeds]
    auto = _summary(auto_runs, args.cycles)
    mix_runs = {"+".join(m): [run_cycles(world, fixed_policy(m), args.cycles, s) for s in seeds]
                for m in itertools.combinations(STRATEGIES, AUTO_SLOTS)}
    mixes = {m: _summary(runs, args.cycles) for m, runs in mix_runs.items()}
    best_mix = max(mixes, key=lambda m: mixes[m]["improvement_per_cycle"])
    best, best_runs = mixes[best_mix], mix_runs[best_mix]
    reached = auto["improvement_per_cycle"] >= best["improvement_per_cycle"] - 2 * math.hypot(
        auto["improvement_se"], best["improvement_se"])
    reached_late = auto["last_third_improvement"] >= best["last_third_improvement"] - 2 * math.hypot(
        auto["last_third_se"], best["last_third_se"])
    cheaper = auto["calls_per_point"] + 2 * auto["calls_per_point_se"] < even["calls_per_point"]
    gaps = [(b[0] - a[0]) / args.cycles for a, b in zip(auto_runs, best_runs)]
    gap = sum(gaps) / len(gaps)
    gap_se = math.sqrt(sum((g - gap) ** 2 for g in gaps) / (len(gaps) - 1) / len(gaps))
    passed = reached and reached_late and cheaper
    if args.json:
        print(json.dumps({"simulated": True, "reps": args.reps, "cycles": args.cycles, "even": even, "auto": auto,
                          "best_fixed_mix": best_mix, "best_fixed": best, "reached_best_fixed": reached,
                          "reached_best_fixed_last_third": reached_late,
                          "shortfall_per_cycle": gap, "shortfall_paired_se": gap_se,
                          "cheaper_than_even": cheaper, "pass": passed,
                          "effects": dict(zip(world.labels, world.effects))}))
        return 0 if passed else 1
    print(f"Strategy learning over {args.cycles} simulated optimization cycles x {args.reps} repetitions "
          "(simulated world; domain-level cycles, the product's accumulator and allocation)\n")
    print("True effect of each strategy per context (points over the current prompt; simulator, temperature 0.7):")
    print(f"  {'context':<72}{'failure':<15}" + "".join(f"{s[:11]:>12}" for s in STRATEGIES))
    for label, ctx, eff in zip(world.labels, world.contexts, world.effects):
        print(f"  {label:<72}{ctx.failure_kind:<15}" + "".join(f"{eff[s]:12.1f}" if s in eff else f"{'—':>12}"
                                                                 for s in STRATEGIES))
    print()
    print(f"  {'policy':<60}{'improvement/cycle':>20}{'last third':>16}{'calls/cycle':>14}{'calls per point':>20}")
    for name, row in ((f"even (1 per strategy that proposes, 4-{len(STRATEGIES)} slots)", even),
                      (f"best fixed mix in hindsight ({best_mix})", best),
                      (f"auto ({AUTO_SLOTS} slots: best guess, Thompson, floor {EXPLORATION})", auto)):
        print(f"  {name:<60}{row['improvement_per_cycle']:>12.2f} ± {row['improvement_se']:.2f}"
              f"{row['last_third_improvement']:>9.2f} ± {row['last_third_se']:.2f}{row['calls_per_cycle']:>14.0f}{row['calls_per_point']:>13.1f} ± {row['calls_per_point_se']:.1f}")
    print(f"\n  (± is the Monte Carlo standard error over {args.reps} repetitions)")
    share = auto["improvement_per_cycle"] / best["improvement_per_cycle"]
    print(f"  auto reaches the best fixed mix's improvement over all {args.cycles} cycles (within 2 SE): "
          f"{'PASS' if reached else 'FAIL'} ({100 * share:.1f}% of it; shortfall {gap:.3f} ± {gap_se:.3f} points per "
          "cycle, paired)")
    print(f"  ... over the last third, after learning (within 2 SE): {'PASS' if reached_late else 'FAIL'}")
    print(f"  auto pays fewer calls per point than even (by more than 2 SE): {'PASS' if cheaper else 'FAIL'}"
          f"   [{time.perf_counter() - started:.0f} s]")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
