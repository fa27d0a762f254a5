"""The test case: one question about one record, with the facts a correct answer must state."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Case", "SPLITS", "cluster_of"]

SPLITS = ("train", "dev", "test")


class Case(BaseModel):
    """One test case of a spectrum.

    `inputs` fills the prompt template's variables (for the bundled dataset: `customer`, a record
    dict, and `question`). `facts` maps each required field to the value a correct answer states.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, description="Unique, stable case id.")
    spectrum: str = Field(min_length=1, description="The category of test case this belongs to.")
    inputs: dict[str, Any] = Field(description="Template variables for this case.")
    facts: dict[str, Any] = Field(description="Required facts: field name -> correct value.")
    reference: str = Field(default="", description="A reference answer stating the facts.")
    template: str | None = Field(default=None, description="The source the case was written from (e.g. its "
                                 "question template); cases of one template are not independent evidence, and "
                                 "`optimization.cluster_field: template` makes the gate treat them as one cluster.")


def cluster_of(case: Case, field: str | None) -> str | None:
    """The value of `field` ('template', 'spectrum' or 'inputs.<key>') for `case`: the cluster the optimization
    gate counts it in. None when `field` is None or the case has no value there."""
    if field is None:
        return None
    if field == "template":
        return case.template
    if field == "spectrum":
        return case.spectrum
    value = case.inputs.get(field.removeprefix("inputs."))
    return None if value is None or value == "" else str(value)
