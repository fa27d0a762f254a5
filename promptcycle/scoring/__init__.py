"""Scoring: scorers turn a Sample (case, output, latency) into a Score in [0, 1] with an explanation.

Importing this package registers the built-in scorers: completeness, accuracy, format, latency and
judge (an LLM judge; async).
"""

from promptcycle.scoring.accuracy import AccuracyOptions, AccuracyScorer
from promptcycle.scoring.base import Sample, Score, Scorer, ScorerOptions, scorers
from promptcycle.scoring.completeness import CompletenessScorer
from promptcycle.scoring.facts import ParsedAnswer, Statement, parse_answer
from promptcycle.scoring.format import FormatOptions, FormatScorer
from promptcycle.scoring.judge import JudgeOptions, JudgeScorer
from promptcycle.scoring.latency import LatencyOptions, LatencyScorer
from promptcycle.scoring.overall import build_scorers, overall, weights_of

__all__ = [
    "Sample",
    "Score",
    "Scorer",
    "ScorerOptions",
    "scorers",
    "build_scorers",
    "overall",
    "weights_of",
    "parse_answer",
    "ParsedAnswer",
    "Statement",
    "CompletenessScorer",
    "AccuracyScorer",
    "AccuracyOptions",
    "FormatScorer",
    "FormatOptions",
    "LatencyScorer",
    "LatencyOptions",
    "JudgeScorer",
    "JudgeOptions",
]
