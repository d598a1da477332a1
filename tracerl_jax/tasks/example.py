"""The one record type every task generator and data set reader yields."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Example:
    """One verifiable problem.

    Attributes:
      question: the problem text shown to the model, without any chat template
        (the tokenizer's ``chat_prompt`` adds that).
      answer: the reference final answer, as it should appear inside
        ``\\boxed{...}``.
      solution: a worked solution ending in ``\\boxed{answer}``; used as the SFT
        target. May be empty for data sets that ship none.
      meta: JSON-serialisable details. Always has ``task`` (the task or data set
        name) and ``kind`` (the prompt kind: ``"math"``, ``"code_function"`` or
        ``"code_stdio"``); generators add ``split`` and what their verifier
        needs, readers add ``index`` and the record's other fields.
    """

    question: str
    answer: str
    solution: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """Serialises the example to one JSON line.

        Returns:
          A compact JSON object with the four fields; keys sorted so the text is
          deterministic.
        """
        return json.dumps(dataclasses.asdict(self) | {"meta": dict(self.meta)},
                          sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Example":
        """Parses what ``to_json`` wrote.

        Args:
          text: one JSON object with ``question``, ``answer``, ``solution`` and
            ``meta``.

        Returns:
          The example.

        Raises:
          ValueError: if the text is not such an object.
        """
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Example.from_json: malformed JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ValueError("Example.from_json: expected a JSON object")
        missing = {"question", "answer", "solution"} - obj.keys()
        if missing:
            raise ValueError(f"Example.from_json: missing fields {sorted(missing)}")
        return cls(question=obj["question"], answer=obj["answer"],
                   solution=obj["solution"], meta=obj.get("meta") or {})
