"""The test case: one question about one record, with the facts a correct answer must state."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Case", "SPLITS"]

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
